from pathlib import Path

import pytest

from reid.config import ConfigError, load_cfg
from reid.errors import ReidError


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yml"
    path.write_text(text)
    return path


def test_yaml_then_command_line_overrides_then_frozen(tmp_path: Path) -> None:
    path = _yaml(
        tmp_path, "SOLVER:\n  BASE_LR: 0.001\n  MAX_EPOCHS: 5\nINPUT:\n  SIZE_TRAIN: [128, 64]\n"
    )
    cfg = load_cfg(path, ["SOLVER.MAX_EPOCHS", "7", "MODEL.BNNECK", "false"])
    assert cfg.SOLVER.BASE_LR == 0.001
    assert cfg.SOLVER.MAX_EPOCHS == 7
    assert cfg.INPUT.SIZE_TRAIN == [128, 64]
    assert cfg.MODEL.BNNECK is False
    assert cfg.is_frozen()
    with pytest.raises(AttributeError):
        cfg.SOLVER.BASE_LR = 1.0


def test_public_key_names_exist() -> None:
    cfg = load_cfg()
    for key in [
        "OUTPUT_DIR",
        "DATASETS.NAME",
        "DATASETS.ROOT",
        "INPUT.SIZE_TRAIN",
        "INPUT.SIZE_TEST",
        "DATALOADER.NUM_WORKERS",
        "DATALOADER.NUM_INSTANCES",
        "SOLVER.IMS_PER_BATCH",
        "SOLVER.MAX_EPOCHS",
        "SOLVER.BASE_LR",
        "MODEL.BACKBONE",
        "MODEL.PRETRAINED",
        "MODEL.PRETRAIN_PATH",
        "MODEL.LAST_STRIDE",
        "MODEL.DEVICE",
        "TEST.WEIGHT",
        "TEST.EVAL_PERIOD",
    ]:
        node = cfg
        for part in key.split("."):
            node = node[part]


def test_integer_accepted_for_a_float_key() -> None:
    cfg = load_cfg(opts=["SOLVER.BASE_LR", "1"])
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (
            ["SOLVER.BASE_LRR", "0.1"],
            r"unknown config key SOLVER.BASE_LRR .*did you mean SOLVER.BASE_LR",
        ),
        (["MODEL.BNNECK", "yes please"], r"MODEL.BNNECK .* must be a boolean"),
        (["MODEL.BNNECK", "'yes'"], r"MODEL.BNNECK .* must be a boolean"),
        (["SOLVER.MAX_EPOCHS", "1.5"], r"SOLVER.MAX_EPOCHS .* must be an integer"),
        (["MODEL.DEVICE", "tpu"], r"MODEL.DEVICE must be one of auto, cpu, cuda"),
        (["MODEL.BACKBONE", "rn50"], r"MODEL.BACKBONE must be one of .*resnet50"),
        (["DATASETS.NAME", "market"], r"DATASETS.NAME must be one of .*market1501"),
        (["INPUT.SIZE_TRAIN", "[256]"], r"INPUT.SIZE_TRAIN must be \[H, W\]"),
        (["SOLVER.IMS_PER_BATCH", "30"], r"multiple of DATALOADER.NUM_INSTANCES"),
        (["SOLVER.MAX_EPOCHS"], r"KEY VALUE pairs"),
    ],
)
def test_bad_overrides_are_one_line_errors(opts: list[str], message: str) -> None:
    with pytest.raises(ReidError, match=message) as info:
        load_cfg(opts=opts)
    assert "\n" not in str(info.value)


def test_unknown_key_in_yaml_names_file_and_key(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "MODEL:\n  LAST_STRIDES: 1\n")
    with pytest.raises(ReidError, match=r"MODEL.LAST_STRIDES \(.*cfg.yml\).*MODEL.LAST_STRIDE"):
        load_cfg(path)


def test_missing_file_and_yaml_syntax_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_cfg(tmp_path / "nope.yml")
    path = _yaml(tmp_path, "SOLVER:\n  BASE_LR: [0.1\n")
    with pytest.raises(ConfigError, match=r"invalid YAML in .*cfg.yml at line \d+"):
        load_cfg(path)


def test_repository_configs_load() -> None:
    configs = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yml"))
    assert configs
    for path in configs:
        load_cfg(path)
