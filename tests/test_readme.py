"""The README's commands and code examples stay true."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


@pytest.mark.slow
def test_readme_plugins_train_and_test_through_the_tools(tmp_path: Path) -> None:
    """The README's backbone and dataset examples, as a user's own module next to their
    data, used by the unmodified tools through IMPORTS."""
    examples = _blocks("python")
    backbone = next(b for b in examples if "@BACKBONES.register" in b)
    dataset = next(b for b in examples if "@DATASETS.register" in b)
    (tmp_path / "my_plugins.py").write_text(backbone + "\n\n" + dataset)
    cams = tmp_path / "cams"
    cams.mkdir()
    rng = np.random.default_rng(0)
    splits = {
        "train": [(pid, index % 2) for pid in range(6) for index in range(4)],
        "query": [(pid, 0) for pid in range(10, 13)],
        "gallery": [(pid, 1) for pid in range(10, 16)],
    }
    for split, items in splits.items():
        lines = []
        for i, (pid, cam) in enumerate(items):
            name = f"{split}_{i}.png"
            Image.fromarray(rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)).save(cams / name)
            lines.append(f"{name},{pid},{cam}")
        (cams / f"{split}.csv").write_text("\n".join(lines) + "\n")
    opts = ["IMPORTS", "[my_plugins]", "MODEL.BACKBONE", "my_mobilenet",
            "DATASETS.NAMES", "[my_cameras]", "DATASETS.ROOT", str(cams),
            "OUTPUT_DIR", str(tmp_path / "run"), "SOLVER.MAX_EPOCHS", "1",
            "SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_INSTANCES", "2",
            "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "1"]  # fmt: skip
    config = str(ROOT / "configs" / "demo.yml")
    for tool, extra in (("train.py", []), ("test.py", ["TEST.WEIGHT", "run/best.pth"])):
        command = [sys.executable, str(ROOT / "tools" / tool), "--config", config, *opts, *extra]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "mAP" in result.stdout
    assert "my_plugins" in (tmp_path / "run" / "config.yaml").read_text()
