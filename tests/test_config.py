import sys
from pathlib import Path

import pytest
from conftest import marker_plugin

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
        "DATASETS.NAMES",
        "DATASETS.TESTS",
        "DATASETS.COMBINEALL",
        "DATASETS.VEHICLEID_TEST_SIZE",
        "DATASETS.ROOT",
        "TEST.BEST_METRIC",
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


def test_scientific_notation_for_float_keys(tmp_path: Path) -> None:
    """YAML 1.1 reads 1e-3 (no dot) as a string; float keys take it as the number."""
    cfg = load_cfg(opts=["SOLVER.BASE_LR", "1e-3", "INPUT.PIXEL_MEAN", "[5e-1, 0.5, 1E-1]"])
    assert cfg.SOLVER.BASE_LR == 0.001 and cfg.INPUT.PIXEL_MEAN == [0.5, 0.5, 0.1]
    cfg = load_cfg(_yaml(tmp_path, "SOLVER:\n  BASE_LR: 3.5e-4\n  WEIGHT_DECAY: 5e-4\n"))
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY) == (0.00035, 0.0005)


def test_yaml_key_without_value_and_empty_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"SOLVER.BASE_LR \(.*cfg.yml\) has no value; expected"):
        load_cfg(_yaml(tmp_path, "SOLVER:\n  BASE_LR:\n"))
    assert load_cfg(_yaml(tmp_path, "SOLVER:\n")).SOLVER.BASE_LR == 3.5e-4  # empty: no change


def test_unreadable_config_files_are_one_line(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.yml"
    latin1.write_bytes("OUTPUT_DIR: r\xe9sultats\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yml is not UTF-8 text"):
        load_cfg(latin1)
    with pytest.raises(ConfigError, match="config file not found"):
        load_cfg(tmp_path)  # a folder


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
        (["INPUT.SIZE_TRAIN", "[256]"], r"INPUT.SIZE_TRAIN must be \[H, W\]"),
        (["SOLVER.IMS_PER_BATCH", "30"], r"multiple of DATALOADER.NUM_INSTANCES"),
        (["SOLVER.MAX_EPOCHS"], r"no value given for SOLVER.MAX_EPOCHS"),
        (["SOLVER.MAX_EPOCHS", "SOLVER.BASE_LR", "0.1"], r"no value given for SOLVER.MAX_EPOCHS"),
        (["SOLVER.BASE_LR", "nan"], r"SOLVER.BASE_LR .* must be a finite number"),
        (["SOLVER.BASE_LR", "0"], r"SOLVER.BASE_LR must be > 0; got 0.0"),
        (["SOLVER.BASE_LR", "fast"], r"SOLVER.BASE_LR .* must be a finite number.*got 'fast'"),
        (["SOLVER.WARMUP_EPOCHS", "-1"], r"SOLVER.WARMUP_EPOCHS must be >= 0; got -1"),
        (["INPUT.PADDING", "-4"], r"INPUT.PADDING must be >= 0; got -4"),
        (["INPUT.PIXEL_STD", "[0.2, 0, 0.2]"], r"INPUT.PIXEL_STD must be positive"),
        (["SEED", "-1"], r"SEED must be in \[0, 2\*\*32\)"),
        (["SOLVER.MOMENTUM", "1"], r"SOLVER.MOMENTUM must be in \[0, 1\)"),
        (["SOLVER.STEPS", "[70, 40]"], r"SOLVER.STEPS must be epochs >= 0 in increasing order"),
        (["SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_INSTANCES", "4"], r"P >= 2 identities"),
        (["DATALOADER.NUM_INSTANCES", "1"], r"triplet loss no positive pairs: expected K >= 2"),
        (["LOSS.CE_WEIGHT", "0", "LOSS.TRIPLET_WEIGHT", "0"], r"at least one > 0"),
        (
            ["LOSS.WEIGHTS", "[1.0]"],
            r"LOSS.NAMES .* and LOSS.WEIGHTS \[1.0\] must be lists of the same",
        ),
        (["LOSS.NAMES", "[triplet, triplet]"], r"with distinct names"),
        (["SOLVER.OPTIMIZER", "adamx"], r"SOLVER.OPTIMIZER must be one of adam, adamw, sgd"),
        (["IMPORTS", "[my_missing_plugin]"], r"IMPORTS: no module named 'my_missing_plugin'"),
        (["IMPORTS", "[plugins/mine.py]"], r"IMPORTS must list module names .*'plugins/mine.py'"),
        (["LOSS.LABEL_SMOOTH", "1"], r"LOSS.LABEL_SMOOTH must be in \[0, 1\)"),
        (["TEST.RERANK_LAMBDA", "1.5"], r"TEST.RERANK_LAMBDA must be in \[0, 1\]"),
        (["TEST.RERANK_K1", "0"], r"TEST.RERANK_K1 must be >= 1"),
        (["DATASETS.SYNTHETIC.NUM_CAMERAS", "12"], r"NUM_CAMERAS must be in \[2, 9\]"),
        (["OUTPUT_DIR", "''"], r"OUTPUT_DIR is empty"),
        (["SOLVER", "3"], r"SOLVER \(command line\) is a section; set its keys"),
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


def test_registry_names_are_checked_where_they_are_used() -> None:
    """IMPORTS may register more names, so load_cfg accepts any; the build_* functions
    name the miss and the registered names."""
    from reid.data import build_dataset
    from reid.models import build_model

    cfg = load_cfg(opts=["MODEL.BACKBONE", "rn50", "DATASETS.NAMES", "[market]"])
    with pytest.raises(ReidError, match=r"unknown backbone 'rn50'; available: .*resnet50"):
        build_model(cfg, num_classes=3)
    with pytest.raises(ReidError, match=r"unknown dataset 'market'; available: .*market1501"):
        build_dataset(cfg, "market")


def test_config_does_not_import_data_or_models() -> None:
    import subprocess
    import sys

    code = "import sys, reid.config; print(sorted(m for m in sys.modules if m.startswith('reid.')))"
    modules = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "reid.data" not in modules and "reid.models" not in modules, modules


def test_a_plugin_failing_to_import_is_one_line_naming_its_line(tmp_path, monkeypatch) -> None:
    (tmp_path / "broken_plugin.py").write_text("x = 1\nraise RuntimeError('boom')\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"importing broken_plugin failed .*broken_plugin.py:2\)"):
        load_cfg(opts=["IMPORTS", "[broken_plugin]"])


def test_a_received_files_imports_run_only_when_given_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run folder's config.yaml names code: importing it runs the code, so it is
    refused with one line saying how to allow it, unless the user lists it."""
    name = marker_plugin(tmp_path, monkeypatch)
    path = _yaml(tmp_path, f"IMPORTS: [{name}]\n")
    with pytest.raises(ConfigError) as info:
        load_cfg(path, trust_file_imports=False)
    message = str(info.value)
    assert "\n" not in message
    assert f"cfg.yml lists IMPORTS [{name}]" in message
    assert f'pass IMPORTS "[{name}]" on the command line' in message
    assert not (tmp_path / f"{name}.ran").exists() and name not in sys.modules

    cfg = load_cfg(path, ["IMPORTS", f"[{name}]"], trust_file_imports=False)
    assert (tmp_path / f"{name}.ran").exists() and list(cfg.IMPORTS) == [name]


def test_your_own_config_file_imports_its_plugins(tmp_path, monkeypatch) -> None:
    """Training from your own config (the default) is unchanged."""
    name = marker_plugin(tmp_path, monkeypatch)
    load_cfg(_yaml(tmp_path, f"IMPORTS: [{name}]\n"))
    assert (tmp_path / f"{name}.ran").exists() and name in sys.modules


def test_a_plugin_taking_a_built_in_name_is_one_line_naming_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shadow = (
        "from reid.models.backbones import BACKBONES\n"
        "BACKBONES.register('resnet50')(lambda last_stride=1: None)\n"
    )
    name = marker_plugin(tmp_path, monkeypatch, shadow)
    with pytest.raises(ConfigError) as info:
        load_cfg(opts=["IMPORTS", f"[{name}]"])
    # The plugin's line (4: after the two marker lines and the import), not the registry's.
    expected = f"importing {name} failed ({tmp_path / name}.py:4): ReidError: backbone 'resnet50' "
    assert str(info.value) == (
        f"IMPORTS: {expected}is already registered; register yours under another name"
    )
