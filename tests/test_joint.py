"""Several datasets at once: DATASETS.NAMES trained together, DATASETS.TESTS evaluated
each on its own, DATASETS.COMBINEALL, and configs of the single DATASETS.NAME days."""

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny_run import TINY, run_tool

from reid.config import ConfigError, load_cfg, resume_conflicts
from reid.data import Record, ReidDataset, build_run_data, combine_train
from reid.data.synthetic import generate_synthetic
from reid.protocol import NO_CAMERA


def records(*labels: tuple[int, int]) -> list[Record]:
    return [Record(f"img{i}", pid, camid) for i, (pid, camid) in enumerate(labels)]


def test_combined_identities_and_cameras_stay_apart() -> None:
    """Two sets numbering people and cameras alike: pid 1 / camera 0 of each are others."""
    a = ReidDataset("a", records((1, 0), (1, 1), (5, 0)), records((1, 0)), records((1, 1)))
    b = ReidDataset("b", records((1, 0), (3, 2), (3, 0)), records((1, 0)), records((1, 1)))
    combined = combine_train([a, b])
    # a: pids 1, 5 -> 0, 1; cameras 0-1 -> 0-1. b: pids 1, 3 -> 2, 3; cameras 0-2 -> 2-4.
    assert [(r.pid, r.camid) for r in combined] == [(0, 0), (0, 1), (1, 0), (2, 2), (3, 4), (3, 2)]
    assert [r.path for r in combined] == ["img0", "img1", "img2"] * 2
    assert combine_train([a]) == a.train  # one set: its records unchanged


def test_combineall_adds_test_identities_as_new_classes() -> None:
    """Test pid 1 is not train pid 1 (MSMT17 numbers both from 0); query and gallery of
    one test identity are one class; distractors (0) and junk (-1) are left out."""
    train = records((1, 0), (2, 1))
    query = records((1, 0), (7, 1))
    gallery = records((1, 1), (7, 0), (0, 1), (9, 0))
    combined = combine_train([ReidDataset("a", train, query, gallery)], combine_all=True)
    assert [(r.pid, r.camid) for r in combined] == [
        (0, 0), (1, 1),  # train
        (2, 0), (3, 1),  # query: test pids 1, 7, 9 -> 2, 3, 4
        (2, 1), (3, 0), (4, 0),  # gallery, the distractor left out
    ]  # fmt: skip
    # A dataset with a real identity 0 (a query has it) keeps it.
    vehicles = ReidDataset("v", records((5, 0)), records((0, 0)), records((0, 1), (3, 1)))
    assert len({r.pid for r in combine_train([vehicles], combine_all=True)}) == 3
    no_cameras = records((1, NO_CAMERA), (2, NO_CAMERA))
    other = ReidDataset("b", no_cameras, no_cameras[:1], no_cameras[1:])
    both = combine_train([ReidDataset("a", train, query, gallery), other])
    assert [(r.pid, r.camid) for r in both][-2:] == [(2, NO_CAMERA), (3, NO_CAMERA)]


def test_the_single_name_of_earlier_versions_is_read_as_a_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = tmp_path / "old.yml"
    old.write_text("DATASETS:\n  NAME: dukemtmc\n")
    with caplog.at_level(logging.WARNING):
        assert load_cfg(old).DATASETS.NAMES == ["dukemtmc"]
    assert "DATASETS.NAME dukemtmc is read as DATASETS.NAMES [dukemtmc]" in caplog.text
    assert load_cfg(opts=["DATASETS.NAME", "msmt17"]).DATASETS.NAMES == ["msmt17"]
    # A file's NAME gives way to the command line's NAMES, as any key does.
    assert load_cfg(old, ["DATASETS.NAMES", "[a, b]"]).DATASETS.NAMES == ["a", "b"]
    both = tmp_path / "both.yml"
    both.write_text("DATASETS:\n  NAME: dukemtmc\n  NAMES: [market1501]\n")
    with pytest.raises(ConfigError, match="DATASETS.NAME .* cannot be mixed with DATASETS.NAMES"):
        load_cfg(both)


def test_a_checkpoint_of_earlier_versions_resumes() -> None:
    """Its config names DATASETS.NAME and lacks the keys added since."""
    cfg = load_cfg(opts=["DATASETS.NAMES", "[dukemtmc]"])
    saved = yaml.safe_load(cfg.dump())
    del saved["DATASETS"]["NAMES"], saved["DATASETS"]["TESTS"], saved["TEST"]["BEST_METRIC"]
    saved["DATASETS"]["NAME"] = "dukemtmc"
    assert resume_conflicts(yaml.safe_dump(saved), cfg) == []
    saved["DATASETS"]["NAME"] = "market1501"
    assert resume_conflicts(yaml.safe_dump(saved), cfg) == [
        "DATASETS.NAMES: ['market1501'] -> ['dukemtmc']"
    ]
    changed = load_cfg(opts=["DATASETS.NAMES", "[dukemtmc]", "TEST.BEST_METRIC", "rank1"])
    assert resume_conflicts(cfg.dump(), changed) == ["TEST.BEST_METRIC: 'mAP' -> 'rank1'"]


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (["DATASETS.NAMES", "[]"], "DATASETS.NAMES is empty"),
        (["DATASETS.NAMES", "[market1501, market1501]"], "DATASETS.NAMES must list distinct"),
        (["DATASETS.TESTS", "[dukemtmc, 3]"], "DATASETS.TESTS must list distinct dataset names"),
        (["DATASETS.VEHICLEID_TEST_SIZE", "900"], "VEHICLEID_TEST_SIZE must be 800, 1600 or 2400"),
        (["TEST.BEST_METRIC", "map"], "TEST.BEST_METRIC must be one of rank1, .*mAP"),
    ],
)
def test_bad_dataset_lists_are_one_line_errors(opts: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_cfg(opts=opts)


@pytest.fixture(scope="module")
def two_domains(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two synthetic sets of different seeds under their usual names in one root."""
    root = tmp_path_factory.mktemp("domains")
    generate_synthetic(root / "Market-1501-v15.09.15", num_identities=12, num_cameras=3, seed=1)
    generate_synthetic(root / "DukeMTMC-reID", num_identities=12, num_cameras=3, seed=2)
    return root


def test_each_set_is_parsed_once_and_tests_default_to_the_training_sets(
    two_domains: Path,
) -> None:
    root = ["DATASETS.ROOT", str(two_domains)]
    data = build_run_data(load_cfg(opts=[*root, "DATASETS.NAMES", "[market1501, dukemtmc]"]))
    assert list(data.tests) == ["market1501", "dukemtmc"]
    assert data.num_classes == 6 + 6
    cross = load_cfg(opts=[*root, "DATASETS.NAMES", "[market1501]", "DATASETS.TESTS", "[dukemtmc]"])
    data = build_run_data(cross)
    assert list(data.tests) == ["dukemtmc"] and data.num_classes == 6
    assert all("Market-1501" in r.path for r in data.train)
    combined = [*root, "DATASETS.NAMES", "[market1501]", "DATASETS.COMBINEALL", "true"]
    everything = build_run_data(load_cfg(opts=combined))
    assert everything.num_classes == 12  # 6 train + 6 test identities


def tool_opts(root: Path, out: Path, *pairs: str) -> list[str]:
    """The tiny run's overrides (its synthetic set replaced by ``pairs``) on ``root``."""
    return [*TINY, "DATASETS.ROOT", str(root), "OUTPUT_DIR", str(out), *pairs]


@pytest.mark.slow
def test_two_domains_train_together_and_report_each(two_domains: Path, tmp_path: Path) -> None:
    out = tmp_path / "joint"
    sets = ["DATASETS.NAMES", "[market1501, dukemtmc]"]
    schedule = ["SOLVER.MAX_EPOCHS", "2", "TEST.EVAL_PERIOD", "1"]
    trained = run_tool(
        "train.py", "--config", "configs/demo.yml", *tool_opts(two_domains, out, *sets, *schedule)
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "market1501\n  rank1 |" in trained.stdout and "dukemtmc\n  rank1 |" in trained.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"market1501", "dukemtmc"}
    assert all(set(m) == {"rank1", "rank5", "rank10", "mAP", "mINP"} for m in metrics.values())
    assert metrics["market1501"] != metrics["dukemtmc"]
    best = torch.load(out / "best.pth", weights_only=True)
    assert best["model"]["head.classifier.weight"].shape[0] == 12  # 6 + 6 identities
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    for name in ("market1501", "dukemtmc"):
        assert [e.step for e in events.Scalars(f"eval/{name}/mAP")] == [1, 2]

    # tools/test.py reports the same sets under the checkpoint the training's metrics
    # came from, and a set's entry is the metrics of that set tested alone.
    weight = ["TEST.WEIGHT", str(out / "best.pth")]
    tested = run_tool("test.py", "--config", str(out / "config.yaml"), *weight)
    assert tested.returncode == 0, tested.stderr[-2000:]
    both = json.loads((out / "test" / "metrics.json").read_text())
    for key, value in best["metrics"]["market1501"].items():
        assert both["market1501"][key] == pytest.approx(value, abs=1e-6)
    alone = run_tool(
        "test.py", "--config", str(out / "config.yaml"), *weight,
        "DATASETS.TESTS", "[dukemtmc]", "OUTPUT_DIR", str(tmp_path / "alone"),
    )  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-2000:]
    flat = json.loads((tmp_path / "alone" / "test" / "metrics.json").read_text())
    assert both["dukemtmc"] == flat
    for key, value in best["metrics"]["dukemtmc"].items():
        assert flat[key] == pytest.approx(value, abs=1e-6)


@pytest.mark.slow
def test_train_on_one_domain_and_test_on_another(two_domains: Path, tmp_path: Path) -> None:
    out = tmp_path / "cross"
    # The recipe's TESTS [dukemtmc]; its NAMES again, over the tiny run's synthetic set.
    pairs = [
        "DATASETS.NAMES",
        "[market1501]",
        "MODEL.PRETRAINED",
        "false",
        "SOLVER.MAX_EPOCHS",
        "1",
    ]
    result = run_tool(
        "train.py", "--config", "configs/market_to_duke.yml", *tool_opts(two_domains, out, *pairs)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"rank1", "rank5", "rank10", "mAP", "mINP"}  # one set: flat
    log = (out / "log.txt").read_text()
    assert "dataset dukemtmc" in log and "epoch 1 evaluation: rank1" in log
    best = torch.load(out / "best.pth", weights_only=True)
    assert best["model"]["head.classifier.weight"].shape[0] == 6
