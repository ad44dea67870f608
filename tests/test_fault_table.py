"""The fault table in CI: every row of scripts/fault_table.py is clean or skipped.

One pytest case per row, so that a failure names its row. The tool runs (``cli``) are
left to the script itself, to keep the suite short. Rows that fail because of a known
bug are strict xfails naming the file to fix: fixing it makes the xfail fail, and the
mark is then removed.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "fault_table.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("fault_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


fault_table = _load_script()

# Row name -> the file whose fix it waits for, and what that fix is (none at present).
KNOWN_FAILURES: dict[str, str] = {}


def _param(case):
    marks = [pytest.mark.slow]  # about 12 s together: the suite's, not the quick subset's
    if case.name in KNOWN_FAILURES:
        marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[case.name]))
    return pytest.param(case, id=case.name, marks=marks)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory):
    workspace = fault_table.Workspace(tmp_path_factory.mktemp("faults"))
    yield workspace
    workspace.close()


# The tool rows (``cli``: each trains or exports in a subprocess, about 2 minutes in
# all) are left to ``python scripts/fault_table.py``; the rest run here.
@pytest.mark.parametrize("case", [_param(case) for case in fault_table.CASES if not case.cli])
def test_row_is_clean_or_skipped(case, workspace) -> None:
    row = fault_table.run_case(case, workspace)
    assert row.clean or row.skipped, f"{row.outcome}: {row.message} {row.lost}"


def test_known_failures_name_real_rows() -> None:
    names = {case.name for case in fault_table.CASES}
    assert set(KNOWN_FAILURES) <= names


# The classifier itself, on hand-made cases: a one-line error that does not mention what
# the case names is a failure, not a pass.
def _refuse(message: str):
    def action(workspace) -> None:
        raise fault_table.ReidError(message)

    return action


@pytest.mark.parametrize(
    ("message", "mentions", "outcome"),
    [
        ("SOLVER.BASE_LR must be > 0; got 0.0", ("SOLVER.BASE_LR", "> 0"), "one line"),
        ("solver.base_lr must be > 0", ("SOLVER.BASE_LR",), "one line"),  # case-insensitive
        ("something went wrong", ("SOLVER.BASE_LR",), "WRONG LINE"),
        ("SOLVER.BASE_LR\nmust be > 0", ("SOLVER.BASE_LR",), "NOT ONE LINE"),
        ("cannot read {tmp}/x.pth", ("{tmp}/x.pth",), "one line"),
    ],
)
def test_a_line_must_mention_what_its_case_names(message, mentions, outcome, tmp_path) -> None:
    workspace = fault_table.Workspace(tmp_path)
    message = message.replace("{tmp}", str(tmp_path))
    case = fault_table.Case("c", _refuse(message), mentions)
    assert fault_table.run_case(case, workspace).outcome == outcome


def test_outcomes_that_are_failures(tmp_path) -> None:
    workspace = fault_table.Workspace(tmp_path)

    def run(action, **options):
        return fault_table.run_case(fault_table.Case("c", action, ("x",), **options), workspace)

    assert run(lambda ws: None).outcome == "WRONGLY ACCEPTED"
    assert run(_refuse("x"), accept=True).outcome == "WRONGLY REFUSED"
    assert run(lambda ws: 1 / 0).outcome == "TRACEBACK"
    assert run(lambda ws: sys.exit(3)).outcome == "TRACEBACK"
    assert run(_refuse("x"), kept=lambda ws: False).lost == "LOST"
    skipped = run(lambda ws: fault_table._skip("needs root"))
    assert skipped.skipped and skipped.message == "needs root" and not skipped.clean
    with pytest.raises(ValueError, match="must name"):
        fault_table.Case("refused without mentions", lambda ws: None)


def test_a_traceback_in_a_tool_is_not_one_line() -> None:
    stderr = "Traceback (most recent call last):\n  ...\nerror: boom\n"
    with pytest.raises(RuntimeError):
        fault_table.tool_outcome(2, "", stderr)
    with pytest.raises(fault_table.ReidError, match="boom"):
        fault_table.tool_outcome(2, "", "INFO starting\nerror: boom\n")


@pytest.mark.slow  # a subprocess
def test_script_exits_non_zero_on_a_failure(tmp_path) -> None:
    """The counts line ends the output; a failing row makes the exit code 1."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('fault_table', {str(SCRIPT)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['fault_table'] = m\n"
        "spec.loader.exec_module(m)\n"
        "m.CASES[:] = [m.Case('ok', lambda ws: None, accept=True),\n"
        "    m.Case('skip', lambda ws: m._skip('no root'), ('x',)),\n"
        "    m.Case('bad', lambda ws: None, ('x',))]\n"
        "sys.argv = ['fault_table.py']\n"
        "sys.exit(m.main())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "rows 3, clean 1, skipped 1, failed 1"
    assert "| 2 | skip | skipped | no root |" in result.stdout
