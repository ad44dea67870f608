"""The float-input profile for trackers (``tools/export.py --input float``): the graph's
contract, the conversion of other pixel statistics, BoxMOT's sidecar, and parity."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_run import run_tool

from reid import FeatureExtractor
from reid.config import load_cfg
from reid.deploy import (
    DeployModel,
    ExportMetadata,
    FloatInputDeployModel,
    boxmot_sidecar_path,
    export_onnx,
    tracker_input,
)
from reid.evaluation.evaluator import embed
from reid.models import build_model
from reid.models.backbones import IMAGENET_STATS
from reid.tools import export as export_tool

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

HEIGHT, WIDTH = 32, 16
OPTS = ["MODEL.BACKBONE", "resnet18", "INPUT.SIZE_TEST", f"[{HEIGHT}, {WIDTH}]"]
HALF = ["INPUT.PIXEL_MEAN", "[0.5, 0.5, 0.5]", "INPUT.PIXEL_STD", "[0.5, 0.5, 0.5]"]


def _metadata(cfg, feat_dim: int, profile: str) -> ExportMetadata:
    return ExportMetadata(
        input_size=(HEIGHT, WIDTH),
        pixel_mean=list(cfg.INPUT.PIXEL_MEAN),
        pixel_std=list(cfg.INPUT.PIXEL_STD),
        feat_dim=feat_dim,
        feat_norm=cfg.TEST.FEAT_NORM,
        flip=True,
        metric=cfg.TEST.METRIC,
        source_checkpoint="best.pth",
        source_sha256="0" * 64,
        backbone=cfg.MODEL.BACKBONE,
        input_profile=profile,
    )


def _export(folder: Path, extra: list[str], profiles: tuple[str, ...]) -> tuple:
    """An untrained tiny model exported in-process (flip on): (model, cfg, {profile: path})."""
    torch.manual_seed(0)
    cfg = load_cfg(opts=[*OPTS, *extra])
    model = build_model(cfg, num_classes=3, load_pretrained_weights=False).eval()
    # Random BN statistics, so that the features depend on the input's scale and shift.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    mean, std = cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD
    modules = {
        "float": FloatInputDeployModel(model, mean, std, True),
        "uint8": DeployModel(model, mean, std, True),
    }
    paths = {}
    for profile in profiles:
        paths[profile] = folder / f"{profile}.onnx"
        meta = _metadata(cfg, model.feat_dim, profile)
        export_onnx(modules[profile], meta, paths[profile], 17 if profile == "float" else None)
    return model, cfg, paths


@pytest.fixture(scope="module")
def half_graph(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A model of a 0.5 / 0.5 run (a ViT's statistics) exported with --input float."""
    return _export(tmp_path_factory.mktemp("half"), HALF, ("float",))


@pytest.fixture(scope="module")
def imagenet_graphs(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A model of an ImageNet-statistics run exported with both profiles."""
    return _export(tmp_path_factory.mktemp("imagenet"), [], ("float", "uint8"))


def _pixels(count: int = 6) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, 3, HEIGHT, WIDTH), dtype=np.uint8)


def _run(path: Path, images: np.ndarray) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": images})[0])


def test_the_float_graph_has_the_trackers_contract(half_graph) -> None:
    model, _, paths = half_graph
    graph = onnx.load(str(paths["float"]))
    (images,) = graph.graph.input
    tensor = images.type.tensor_type
    assert images.name == "images" and tensor.elem_type == onnx.TensorProto.FLOAT
    batch, *rest = tensor.shape.dim
    assert batch.dim_param == "batch" and [d.dim_value for d in rest] == [3, HEIGHT, WIDTH]
    (output,) = graph.graph.output  # exactly one output: the (N, D) feature
    out_batch, out_dim = output.type.tensor_type.shape.dim
    assert out_batch.dim_param == "batch" and out_dim.dim_value == model.feat_dim
    opset = next(e.version for e in graph.opset_import if e.domain in ("", "ai.onnx"))
    assert opset == 17
    props = {entry.key: json.loads(entry.value) for entry in graph.metadata_props}
    assert props["input_profile"] == "float" and props["input"].startswith("float32 RGB")
    # Any batch size runs.
    assert _run(paths["float"], tracker_input(_pixels(5))).shape == (5, model.feat_dim)


def test_the_float_graph_converts_other_pixel_statistics(half_graph) -> None:
    """A 0.5 / 0.5 model fed ImageNet-normalised input gives the features of PyTorch fed
    its own normalisation: the graph converts, the caller never needs to know."""
    model, cfg, paths = half_graph
    pixels = _pixels()
    got = _run(paths["float"], tracker_input(pixels))
    with torch.inference_mode():
        own = DeployModel(model, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, True)
        expected = own(torch.from_numpy(pixels))
        unconverted = embed(model, torch.from_numpy(tracker_input(pixels)), True)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # Without the conversion the features would differ: the check above has teeth.
    assert (unconverted - expected).abs().max() > 1e-2


def test_imagenet_statistics_pass_through_untouched() -> None:
    cfg = load_cfg(opts=OPTS)
    assert list(cfg.INPUT.PIXEL_MEAN) == list(IMAGENET_STATS[0])
    model = build_model(cfg, num_classes=3, load_pretrained_weights=False)
    assert not FloatInputDeployModel(model, *IMAGENET_STATS, flip=False).convert
    assert FloatInputDeployModel(model, [0.5] * 3, [0.5] * 3, flip=False).convert


@pytest.mark.slow
def test_the_extractor_gives_the_same_features_from_both_profiles(imagenet_graphs) -> None:
    _, _, paths = imagenet_graphs
    images = list(_pixels(4).transpose(0, 2, 3, 1))  # uint8 (H, W, 3) arrays
    uint8 = FeatureExtractor(paths["uint8"], device="cpu")(images)
    floating = FeatureExtractor(paths["float"], device="cpu")
    assert floating.backend.metadata.input_profile == "float"
    torch.testing.assert_close(floating(images), uint8, atol=1e-4, rtol=0)
    # The uint8 graph still takes uint8 and says so.
    session = onnxruntime.InferenceSession(str(paths["uint8"]))
    assert session.get_inputs()[0].type == "tensor(uint8)"
    assert json.loads(session.get_modelmeta().custom_metadata_map["input_profile"]) == "uint8"


def test_metadata_without_a_profile_reads_as_uint8() -> None:
    """Graphs exported before profiles existed have no input_profile entry."""
    cfg = load_cfg(opts=OPTS)
    props = _metadata(cfg, 512, "uint8").to_props()
    del props["input_profile"]
    assert ExportMetadata.from_props(props, "old.onnx").input_profile == "uint8"


def test_the_boxmot_sidecar_names_the_crop_size() -> None:
    sidecar = _metadata(load_cfg(opts=OPTS), 512, "float").boxmot_sidecar(num_classes=3)
    assert sidecar["schema_version"] == 1 and sidecar["model_name"] == "resnet18"
    assert sidecar["model_kwargs"] == {"img_size": [HEIGHT, WIDTH]}
    assert sidecar["img_size"] == [HEIGHT, WIDTH] and sidecar["num_classes"] == 3
    assert boxmot_sidecar_path("a/model.onnx") == Path("a/model.onnx.metadata.json")
    # BoxMOT normalises with 0.5 / 0.5 for names containing "clip"; ours expect ImageNet.
    clip = ExportMetadata(**{**_metadata(load_cfg(opts=OPTS), 512, "float").__dict__,
                           "backbone": "clip_vit_b16"})  # fmt: skip
    assert "clip" not in clip.boxmot_sidecar(None)["model_name"]


def test_a_bad_input_profile_is_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["export.py", "--run", "x", "--input", "fp16"])
    assert export_tool.cli() == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ") and "--input" in lines[-1], lines
    assert "'fp16'" in lines[-1] and "uint8" in lines[-1] and "float" in lines[-1]


@pytest.mark.slow
def test_float_export_of_a_run_passes_parity_and_writes_the_sidecar(trained: Path) -> None:
    out = trained.parent / "model_float.onnx"
    result = run_tool("export.py", "--run", str(trained), "--out", str(out), "--input", "float")
    assert result.returncode == 0, result.stderr[-3000:]
    figures = re.search(
        r"max \|diff\| (\S+) .* min cosine (\S+) .* identical top-10 rankings (\d+)/(\d+)",
        result.stdout,
    )
    assert figures, result.stdout
    assert float(figures[1]) <= 1e-4 and float(figures[2]) >= 0.99999
    assert figures[3] == figures[4] and int(figures[4]) > 0
    sidecar = json.loads(boxmot_sidecar_path(out).read_text())
    cfg = load_cfg(trained / "config.yaml")
    size = list(cfg.INPUT.SIZE_TEST)
    assert sidecar["schema_version"] == 1 and sidecar["model_name"] == cfg.MODEL.BACKBONE
    assert sidecar["model_kwargs"] == {"img_size": size} and sidecar["img_size"] == size
    assert sidecar["source"].endswith("best.pth") and len(sidecar["source_sha256"]) == 64
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, nothing left over
    session = onnxruntime.InferenceSession(str(out))
    (images,) = session.get_inputs()
    assert images.type == "tensor(float)" and images.shape == ["batch", 3, *size]
    # The same run's uint8 export is unchanged: uint8 in, the PyTorch features out.
    plain = trained.parent / "model_uint8.onnx"
    result = run_tool("export.py", "--run", str(trained), "--out", str(plain))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not boxmot_sidecar_path(plain).exists()
    assert onnxruntime.InferenceSession(str(plain)).get_inputs()[0].type == "tensor(uint8)"
    crops = sorted((trained.parent / "data").glob("*/query/*.jpg"))[:6]
    pytorch = FeatureExtractor(trained, device="cpu")(crops)
    from_uint8 = FeatureExtractor(plain)(crops)
    torch.testing.assert_close(from_uint8, pytorch, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(FeatureExtractor(out)(crops), from_uint8, atol=1e-4, rtol=0)
