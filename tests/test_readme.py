"""The README's commands and code examples stay true."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_test_command() -> None:
    test_command = _blocks("bash")[1].strip()
    assert "pytest" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_main_command_uses_a_shipped_config() -> None:
    main_command = _blocks("bash")[0]
    config = re.search(r"--config (\S+)", main_command)[1]
    assert (ROOT / config).is_file()


def test_readme_python_examples_run(tmp_path: Path) -> None:
    """Each Python example registers an extension; building with it must work."""
    examples = _blocks("python")
    backbone_example = next(b for b in examples if "@BACKBONES.register" in b)
    dataset_example = next(b for b in examples if "@DATASETS.register" in b)
    script = f"""
{backbone_example}
{dataset_example}
import torch
net = BACKBONES.get("mobilenet_v3_large")()
assert net(torch.zeros(1, 3, 64, 32)).shape[1] == net.out_channels
root = Path({str(tmp_path)!r})
for split, pid in (("train", 1), ("query", 2), ("gallery", 2)):
    (root / f"{{split}}.csv").write_text(f"img_{{split}}.jpg,{{pid}},0\\n")
dataset = DATASETS.get("my_cameras")(root)
assert dataset.num_train_pids == 1
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)
