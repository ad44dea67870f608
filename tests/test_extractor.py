"""FeatureExtractor on a tiny untrained resnet18 run directory written on the fly."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RESNET18_AS_PLUGIN, marker_plugin
from PIL import Image

from reid import FeatureExtractor
from reid.config import load_cfg
from reid.data.transforms import build_test_transform
from reid.errors import ReidError
from reid.evaluation.evaluator import embed
from reid.models import build_model

NUM_CLASSES = 5
OPTS = ["MODEL.BACKBONE", "resnet18", "INPUT.SIZE_TEST", "[32, 16]", "MODEL.DEVICE", "cpu"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny batches gain nothing from threads, and spinning ones stall on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory as tools/train.py leaves it: config.yaml and best.pth."""
    run = tmp_path_factory.mktemp("run")
    cfg = load_cfg(opts=OPTS)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=NUM_CLASSES, load_pretrained_weights=False)
    # Non-trivial BatchNorm statistics, so eval mode differs from a fresh model.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    (run / "config.yaml").write_text(cfg.dump())
    torch.save({"model": model.state_dict(), "config": cfg.dump(), "epoch": 1}, run / "best.pth")
    return run


@pytest.fixture(scope="module")
def extractor(run_dir: Path) -> FeatureExtractor:
    return FeatureExtractor(run_dir, device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three random-noise PNGs of different sizes (PNG: lossless, so reads are exact)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (height, width) in enumerate([(40, 20), (64, 32), (30, 30)]):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _manual_features(run_dir: Path, paths: list[Path]) -> torch.Tensor:
    """The model run by hand on the test transform of each image."""
    cfg = load_cfg(run_dir / "config.yaml")
    model = build_model(cfg, num_classes=NUM_CLASSES, load_pretrained_weights=False)
    model.load_state_dict(torch.load(run_dir / "best.pth")["model"])
    transform = build_test_transform(cfg.INPUT.SIZE_TEST, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return model.eval()(batch)


def test_paths_pil_numpy_and_tensor_inputs_agree(extractor, pictures) -> None:
    from_paths = extractor(pictures)
    assert from_paths.shape == (3, extractor.feat_dim) == (3, 512)
    assert from_paths.dtype == torch.float32 and from_paths.device.type == "cpu"
    pils = [Image.open(p).convert("RGB") for p in pictures]
    arrays = [np.array(image) for image in pils]
    tensors = [torch.from_numpy(a).permute(2, 0, 1) for a in arrays]
    for other in (pils, arrays, tensors, [str(p) for p in pictures]):
        assert torch.equal(extractor(other), from_paths)
    # Single items and a 4-D batch: other batch compositions, so float rounding may differ.
    torch.testing.assert_close(extractor(pictures[1]), from_paths[1:2])
    torch.testing.assert_close(extractor(arrays[0]), from_paths[:1])
    torch.testing.assert_close(extractor(np.stack([arrays[0]] * 2)), from_paths[[0, 0]])
    assert extractor([]).shape == (0, 512)


def test_features_match_the_model_run_by_hand(extractor, run_dir, pictures) -> None:
    expected = _manual_features(run_dir, pictures)
    features = extractor(pictures)
    torch.testing.assert_close(features, expected)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(3))
    features += 1  # an ordinary tensor, not an inference-mode one


def test_config_file_and_cfg_node_with_explicit_weights(extractor, run_dir, pictures) -> None:
    expected = extractor(pictures)
    weights = run_dir / "best.pth"
    from_file = FeatureExtractor(run_dir / "config.yaml", weights=weights, device="cpu")
    from_cfg = FeatureExtractor(load_cfg(opts=OPTS), weights=weights, device="cpu")
    torch.testing.assert_close(from_file(pictures), expected)
    torch.testing.assert_close(from_cfg(pictures), expected)


def test_flip_gives_the_features_evaluation_uses(extractor, run_dir, pictures) -> None:
    cfg = load_cfg(run_dir / "config.yaml", opts=["TEST.FLIP", "true"])
    flip_extractor = FeatureExtractor(cfg, weights=run_dir / "best.pth", device="cpu")
    flipped = flip_extractor(pictures)
    assert not torch.allclose(flipped, extractor(pictures))
    torch.testing.assert_close(flipped.norm(dim=1), torch.ones(3))
    # Flip-averaged features of an image and of its mirror coincide up to resampling.
    mirrored = [
        Image.open(p).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT) for p in pictures
    ]
    torch.testing.assert_close(flipped, flip_extractor(mirrored), atol=1e-3, rtol=1e-3)

    # The evaluation pipeline (test transform, then embed) gives the very same features.
    transform = build_test_transform(cfg.INPUT.SIZE_TEST, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in pictures])
    torch.testing.assert_close(flipped, embed(flip_extractor.backend.model, batch, flip=True))


def test_run_dir_falls_back_to_last_pth(run_dir, tmp_path, pictures) -> None:
    (tmp_path / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    (tmp_path / "last.pth").write_bytes((run_dir / "best.pth").read_bytes())
    extractor = FeatureExtractor(tmp_path, device="cpu")
    assert extractor.source == tmp_path / "last.pth"
    (tmp_path / "last.pth").unlink()
    with pytest.raises(ReidError, match="no best.pth or last.pth"):
        FeatureExtractor(tmp_path, device="cpu")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weights": "missing.pth"}, "checkpoint not found"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size must be an integer"),
        ({"device": "gpu"}, "unknown device 'gpu'"),
        ({"device": "cuda:7"}, "cuda:7"),
    ],
)
def test_bad_construction_is_a_reid_error(run_dir, kwargs, message) -> None:
    with pytest.raises(ReidError, match=message):
        FeatureExtractor(run_dir, **{"device": "cpu", **kwargs})


def test_missing_config_is_a_reid_error(tmp_path) -> None:
    with pytest.raises(ReidError, match="not found"):
        FeatureExtractor(tmp_path / "nowhere")
    with pytest.raises(ReidError, match="got int"):
        FeatureExtractor(3)
    with pytest.raises(ReidError, match="no weights"):
        FeatureExtractor(load_cfg(opts=OPTS))


@pytest.mark.parametrize(
    "bad, message",
    [
        ("missing.jpg", "image 1: file not found"),
        (42, "image 1: expected an image path.*got int"),
        (np.zeros((8, 4, 3), dtype=np.float32), r"image 1: .*uint8 array.*float32"),
        (np.zeros((8, 4), dtype=np.uint8), r"image 1: .*\(H, W, 3\).*\(8, 4\)"),
        (torch.zeros(8, 4, 3, dtype=torch.uint8), r"image 1: .*\(3, H, W\)"),
    ],
)
def test_bad_inputs_name_the_item(extractor, pictures, bad, message) -> None:
    with pytest.raises(ReidError, match=message):
        extractor([pictures[0], bad])


def test_unreadable_file_names_the_item(extractor, pictures, tmp_path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ReidError, match="image 2: cannot read image"):
        extractor([pictures[0], pictures[1], broken])
    with pytest.raises(ReidError, match="got dict"):
        extractor({"a": 1})


def test_a_run_folders_plugins_are_imported_only_when_named(
    extractor, run_dir, pictures, tmp_path, monkeypatch
) -> None:
    """A shared run folder whose config.yaml lists a plugin: importing it would run its
    code, so the extractor refuses until the user names the module in ``imports``."""
    name = marker_plugin(tmp_path, monkeypatch, RESNET18_AS_PLUGIN)
    cfg = load_cfg(opts=OPTS).clone()
    cfg.defrost()
    cfg.IMPORTS, cfg.MODEL.BACKBONE = [name], name
    shared = tmp_path / "shared_run"
    shared.mkdir()
    (shared / "config.yaml").write_text(cfg.dump())
    (shared / "best.pth").write_bytes((run_dir / "best.pth").read_bytes())

    for source in (shared, shared / "config.yaml"):
        with pytest.raises(ReidError) as info:
            FeatureExtractor(source, weights=shared / "best.pth", device="cpu")
        assert str(info.value) == (
            f"{shared / 'config.yaml'} lists IMPORTS [{name}]: plugin code named in a file is "
            f"not run unless you allow it; to run it, pass imports=['{name}'] "
            f"(FeatureExtractor) or --imports {name} (export, search)"
        )
    assert not (tmp_path / f"{name}.ran").exists() and name not in sys.modules
    with pytest.raises(ReidError, match=r"imports must be a list of module names .*got 'plug"):
        FeatureExtractor(shared, imports=name)

    allowed = FeatureExtractor(shared, device="cpu", imports=[name])
    assert (tmp_path / f"{name}.ran").exists()
    # The plugin's backbone is resnet18 under another name: the same weights, features.
    torch.testing.assert_close(allowed(pictures), extractor(pictures))
