"""timm/<name> backbones: timm's tiny test models (test_resnet, test_convnext,
test_efficientnet, test_vit, test_vit2), random weights, CPU."""

import ast
import json
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_run import run_tool, tiny

from reid import FeatureExtractor
from reid.config import get_default_cfg, load_cfg
from reid.errors import ReidError, UnknownNameError
from reid.models import BACKBONES, build_model
from reid.models.backbones import pixel_stats, timm_zoo
from reid.models.pretrained import load_pretrained

timm = pytest.importorskip("timm")

# (name, channels, map at 256x128 with last stride 2, with last stride 1)
CNNS = [
    ("test_resnet", 96, (8, 4), (16, 8)),  # ResNet-D: its shortcut downsamples by pooling
    ("test_efficientnet", 256, (8, 4), (16, 8)),
    ("test_convnext", 64, (8, 4), (15, 7)),  # a 2x2 conv at stride 1 trims one pixel
]


def _vit(**options) -> torch.nn.Module:
    return BACKBONES.get("timm/test_vit")(img_size=(256, 128), **options).eval()


def _grid(pos_embed: torch.Tensor, prefix: int, size: tuple[int, int]) -> torch.Tensor:
    """The position rows of a ``(1, prefix + h*w, C)`` embedding as ``(1, C, h, w)``."""
    return pos_embed[:, prefix:].reshape(1, *size, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize(("name", "channels", "strided", "unstrided"), CNNS)
def test_cnn_map_at_256x128_and_last_stride_1_doubles_it(name, channels, strided, unstrided):
    images = torch.randn(2, 3, 256, 128)
    for last_stride, size in ((2, strided), (1, unstrided)):
        backbone = BACKBONES.get(f"timm/{name}")(last_stride=last_stride)
        assert backbone.training and not backbone.pooled
        fmap = backbone(images)  # training mode
        assert fmap.shape == (2, channels, *size) and backbone.out_channels == channels
    # All parameters are used (DDP needs every one to get a gradient): no classifier left.
    fmap.mean().backward()
    assert all(p.grad is not None for p in backbone.parameters())


def test_vit_features_are_the_class_token_or_the_patch_mean_after_the_norm():
    images = torch.randn(2, 3, 256, 128)
    token = _vit(vit_pool="token")
    mean = _vit(vit_pool="mean")
    mean.load_state_dict(token.state_dict())
    assert token.pooled and token.out_channels == 64 and token.grid_size == (16, 8)
    with torch.no_grad():
        tokens = token.model.forward_features(images)  # (2, 1 + 16*8, 64), after the norm
        assert tokens.shape == (2, 129, 64)
        assert torch.equal(token(images), tokens[:, 0, :, None, None])
        assert torch.allclose(mean(images), tokens[:, 1:].mean(1)[:, :, None, None], atol=1e-6)
    # test_vit2: no class token, one register token, the final norm after the pooling.
    vit2 = BACKBONES.get("timm/test_vit2")(img_size=(256, 128), vit_pool="mean").eval()
    with torch.no_grad():
        tokens = vit2.model.forward_features(images)
        expected = vit2.model.fc_norm(tokens[:, 1:].mean(1))  # the register token left out
        assert torch.allclose(vit2(images).flatten(1), expected, atol=1e-6)
    with pytest.raises(ReidError, match="test_vit2 has no class token; use MODEL.VIT_POOL mean"):
        BACKBONES.get("timm/test_vit2")(vit_pool="token")
    with pytest.raises(ReidError, match=r"built for 256x128 images .* INPUT.SIZE_TEST"):
        token(torch.randn(1, 3, 128, 64))


def test_position_embedding_is_resampled_from_the_trained_grid(tmp_path, caplog):
    """Weights of a ViT built for 224x224 (14x14 patches) loaded into one built for 256x128
    (16x8): the class token and its position row unchanged, the patch positions
    interpolated bicubically (antialiased, as timm does), and the model computing what
    timm's own loader builds at that size."""
    source = timm.create_model("test_vit", img_size=224, num_classes=10)  # with a classifier
    path = tmp_path / "test_vit_224.pth"
    torch.save(source.state_dict(), path)
    backbone = _vit()
    load_pretrained(backbone, path, name="timm/test_vit")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # nothing left out

    loaded = backbone.model.pos_embed.detach()
    original = source.pos_embed.detach()
    assert loaded.shape == (1, 1 + 16 * 8, 64)
    assert torch.equal(loaded[:, 0], original[:, 0])
    expected = F.interpolate(
        _grid(original, 1, (14, 14)), size=(16, 8), mode="bicubic", antialias=True
    )
    assert torch.allclose(_grid(loaded, 1, (16, 8)), expected, atol=1e-6)
    for key, tensor in source.state_dict().items():
        if key != "pos_embed" and not key.startswith("head."):
            assert torch.equal(backbone.state_dict()[f"model.{key}"], tensor), key

    reference = timm.create_model(
        "test_vit", img_size=(256, 128), num_classes=0, pretrained=True,
        pretrained_cfg_overlay={"file": str(path), "num_classes": 10},
    ).eval()  # fmt: skip
    images = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        assert torch.allclose(backbone(images).flatten(1), reference(images), atol=1e-5)


def test_vit_stride_gives_overlapping_patches_on_a_resampled_grid():
    torch.manual_seed(0)
    plain = _vit()
    torch.manual_seed(0)
    overlapping = _vit(vit_stride=12)  # the same initial weights, then the stride
    # (256 - 16) // 12 + 1 = 21 rows, (128 - 16) // 12 + 1 = 10 columns (TransReID's grid).
    assert overlapping.grid_size == (21, 10) and overlapping.model.patch_embed.num_patches == 210
    assert overlapping.model.patch_embed.proj.stride == (12, 12)
    pos, before = overlapping.model.pos_embed.detach(), plain.model.pos_embed.detach()
    assert pos.shape == (1, 1 + 210, 64) and torch.equal(pos[:, 0], before[:, 0])
    expected = F.interpolate(_grid(before, 1, (16, 8)), size=(21, 10), mode="bicubic",
                             antialias=True)  # fmt: skip
    assert torch.allclose(_grid(pos, 1, (21, 10)), expected, atol=1e-6)
    images = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        assert overlapping.model.patch_embed(images).shape[1:3] == (21, 10)  # (B, h, w, C)
        assert overlapping(images).shape == (2, 64, 1, 1)
    # Weights trained without overlap (224x224: 14x14 patches) resample to this grid too.
    trained = torch.randn(1, 1 + 14 * 14, 64)
    adapted = overlapping.adapt_state_dict({"pos_embed": trained})["model.pos_embed"]
    expected = F.interpolate(_grid(trained, 1, (14, 14)), size=(21, 10), mode="bicubic",
                             antialias=True)  # fmt: skip
    assert torch.allclose(_grid(adapted, 1, (21, 10)), expected, atol=1e-6)
    for stride in (17, -1):
        with pytest.raises(ReidError, match=r"MODEL.VIT_STRIDE must be in \[1, 16\]"):
            _vit(vit_stride=stride)


def test_drop_path_reaches_timm():
    vit = _vit(drop_path=0.1)
    rates = [getattr(block.drop_path1, "drop_prob", 0.0) for block in vit.model.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)  # timm's linear rule
    assert _vit().model.blocks[-1].drop_path1.__class__.__name__ == "Identity"  # default 0
    resnet = BACKBONES.get("timm/test_resnet")(drop_path=0.2)
    assert any(getattr(m, "drop_prob", 0) > 0 for m in resnet.modules())
    with pytest.raises(ReidError, match=r"drop_path must be in \[0, 1\)"):
        _vit(drop_path=1.0)


def test_pixel_stats_come_from_timm_pretrained_cfg_without_building(monkeypatch):
    def no_building(*args, **kwargs):
        raise AssertionError("pixel_stats built a model")

    monkeypatch.setattr(timm, "create_model", no_building)
    clip = timm.data.OPENAI_CLIP_MEAN, timm.data.OPENAI_CLIP_STD
    assert pixel_stats("timm/vit_base_patch16_clip_224.openai") == clip
    assert pixel_stats("timm/test_vit") == ((0.5,) * 3, (0.5,) * 3)
    assert pixel_stats("timm/resnet50") == (
        timm.data.IMAGENET_DEFAULT_MEAN,
        timm.data.IMAGENET_DEFAULT_STD,
    )
    cfg = load_cfg(opts=["MODEL.BACKBONE", "timm/vit_base_patch16_clip_224.openai"])
    assert tuple(cfg.INPUT.PIXEL_MEAN) == pytest.approx(clip[0])
    assert tuple(cfg.INPUT.PIXEL_STD) == pytest.approx(clip[1])


def test_unknown_names_and_wrong_options_are_one_line():
    with pytest.raises(UnknownNameError) as caught:
        BACKBONES.get("timm/resnet5x")
    message = str(caught.value)
    assert message.startswith("unknown backbone 'timm/resnet5x': timm has no model 'resnet5x'")
    assert "did you mean timm/resnet50" in message and "\n" not in message and len(message) < 200
    with pytest.raises(UnknownNameError) as caught:
        BACKBONES.get("timm/resnet50.bogus")
    message = str(caught.value)
    assert "no such pretrained tag (available: timm/resnet50.a1_in1k" in message
    assert "more: timm.list_pretrained('resnet50')" in message and len(message) < 400
    with pytest.raises(ReidError, match="MODEL.VIT_POOL mean applies to vision transformers"):
        BACKBONES.get("timm/test_resnet")(vit_pool="mean")
    with pytest.raises(ReidError, match="MODEL.VIT_STRIDE 12 applies to vision transformers"):
        BACKBONES.get("timm/test_resnet")(vit_stride=12)


def test_token_backbones_take_only_the_identity_pooling():
    cfg = get_default_cfg()
    cfg.MODEL.BACKBONE = "timm/test_vit"
    cfg.INPUT.SIZE_TRAIN = [32, 16]
    for pooling in ("gem", "max"):
        cfg.MODEL.POOLING = pooling
        with pytest.raises(ReidError, match=f"MODEL.POOLING must be avg .* got {pooling}"):
            build_model(cfg, num_classes=5)
    cfg.MODEL.POOLING = "avg"
    model = build_model(cfg, num_classes=5).eval()
    with torch.no_grad():
        feat, _ = model.head.embed(model.backbone(torch.randn(3, 3, 32, 16)))
    assert feat.shape == (3, 64) and (feat < 0).any()  # signed, untouched by the pooling


def test_missing_timm_is_one_line_and_reid_imports_without_it(monkeypatch):
    source = Path(timm_zoo.__file__).read_text()
    top_level = [n for n in ast.parse(source).body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = [a.name for n in top_level for a in n.names] + [n.module for n in top_level if
             isinstance(n, ast.ImportFrom)]  # fmt: skip
    assert not [n for n in names if n and n.split(".")[0] == "timm"]
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm fails
    with pytest.raises(ReidError, match=r'^the timm/<name> backbones need PyTorch Image Models: '
                       r'pip install "reidkit\[timm\]"$'):  # fmt: skip
        BACKBONES.get("timm/test_vit")


def test_library_weights_offline_and_uncached_is_one_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    backbone = BACKBONES.get("timm/test_vit")(img_size=(32, 16))
    with pytest.raises(ReidError) as caught:
        backbone.load_library_weights()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("no pretrained weights for timm/test_vit: model.safetensors of "
                              "the Hugging Face repo timm/test_vit.r160_in1k is not in the "
                              f"cache {tmp_path / 'hub'}")  # fmt: skip
    assert message.endswith("or set MODEL.PRETRAIN_PATH to a local state dict of this timm model")


def test_library_weights_load_through_timm_resampled(tmp_path, monkeypatch):
    """timm's Hugging Face loading, with the hub's download standing in for the network:
    weights for 160x160 (10x10 patches) land in a backbone for 256x128."""
    from safetensors.torch import save_file

    trained = timm.create_model("test_vit")
    path = tmp_path / "model.safetensors"
    save_file(trained.state_dict(), str(path))
    requested = []

    def download(repo_id, filename, **kwargs):
        requested.append((repo_id, filename))
        return str(path)

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", download)
    backbone = _vit()
    backbone.load_library_weights()
    assert requested == [("timm/test_vit.r160_in1k", "model.safetensors")]
    expected = backbone.adapt_state_dict(trained.state_dict())
    assert expected["model.pos_embed"].shape == (1, 129, 64)
    for key, tensor in backbone.state_dict().items():
        assert torch.equal(tensor, expected[key]), key


@pytest.fixture(scope="module")
def timm_runs(tmp_path_factory) -> dict[str, Path]:
    """One-epoch tiny runs of a timm CNN and a timm ViT (mean pooling, drop path)."""
    tmp = tmp_path_factory.mktemp("timm")
    runs = {}
    for name, extra in (
        ("test_resnet", []),
        ("test_vit", ["MODEL.VIT_POOL", "mean", "MODEL.DROP_PATH", "0.1"]),
    ):
        out = tmp / name
        result = run_tool(
            "train.py", "--config", "configs/demo.yml", *tiny(tmp, out),
            "MODEL.BACKBONE", f"timm/{name}", *extra,
            "SOLVER.MAX_EPOCHS", "1", "TEST.EVAL_PERIOD", "1",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        runs[name] = out
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_timm_backbone_trains_tests_exports_and_extracts(timm_runs, name):
    run = timm_runs[name]
    assert "mAP" in json.loads((run / "metrics.json").read_text())
    config = (run / "config.yaml").read_text()
    assert f"BACKBONE: timm/{name}" in config
    assert re.search(r"PIXEL_MEAN:\n  - 0.5\n  - 0.5\n  - 0.5", config)  # test models' stats

    weights = ["TEST.WEIGHT", str(run / "best.pth")]
    result = run_tool("test.py", "--config", str(run / "config.yaml"), *weights,
                      "OUTPUT_DIR", str(run))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    tested = json.loads((run / "test" / "metrics.json").read_text())
    at_training = torch.load(run / "best.pth", weights_only=False)["metrics"]
    assert tested["mAP"] == pytest.approx(at_training["mAP"], abs=1e-6)

    onnx = run / "model.onnx"
    result = run_tool("export.py", "--run", str(run), "--out", str(onnx))
    assert result.returncode == 0, result.stderr[-3000:]
    figures = re.search(r"max \|diff\| (\S+) .* min cosine (\S+) .* rankings (\d+)/(\d+)",
                        result.stdout)  # fmt: skip
    assert figures and float(figures[1]) <= 1e-4 and figures[3] == figures[4], result.stdout

    images = sorted((run.parent / "data").glob("*/query/*.jpg"))[:4]
    feats = FeatureExtractor(run, device="cpu")(images)
    exported = FeatureExtractor(onnx)(images)
    dim = 96 if name == "test_resnet" else 64
    assert feats.shape == (4, dim) and torch.allclose(feats, exported, atol=1e-4)
