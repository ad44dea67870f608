"""Backbones (every registered one), BNNeck head, model builder, pretrained loading."""

import logging
import urllib.error

import pytest
import torch
import torchvision
from torch import nn
from yacs.config import CfgNode

from reid.config import get_default_cfg
from reid.errors import ReidError, UnknownNameError
from reid.models import BACKBONES, BNNeckHead, ReidModel, build_model, load_pretrained
from reid.models.backbones.osnet import paper_parameter_count
from reid.models.heads import POOLINGS, GeneralizedMeanPooling

# Small images keep the 101/152-layer nets cheap on CPU.
HEIGHT, WIDTH = 64, 32


def _cfg(**model) -> CfgNode:
    """The default config with a small backbone and the given MODEL keys."""
    cfg = get_default_cfg()
    cfg.MODEL.update({"BACKBONE": "resnet18", **model})
    return cfg


# The torchvision models the registry-wide tests cover, built as torchvision/<name>.
TORCHVISION = [
    "resnet50",
    "convnext_tiny",
    "efficientnet_b0",
    "mobilenet_v3_large",
    "regnet_y_800mf",
]


def _map_size(name: str, last_stride: int, height: int, width: int) -> tuple[int, int]:
    backbone = BACKBONES.get(name)(last_stride=last_stride).eval()
    assert isinstance(backbone.out_channels, int)
    with torch.no_grad():
        fmap = backbone(torch.randn(2, 3, height, width))
    assert fmap.dim() == 4 and fmap.shape[:2] == (2, backbone.out_channels)
    return tuple(fmap.shape[2:])


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_output_shape(name):
    """Last stride 2 halves the map once more than last stride 1."""
    strided, unstrided = _map_size(name, 2, HEIGHT, WIDTH), _map_size(name, 1, HEIGHT, WIDTH)
    reduction = 32 if name.startswith("resnet") else 16  # OSNet keeps H/16 by design
    assert strided == (HEIGHT // reduction, WIDTH // reduction)
    assert unstrided == (2 * strided[0], 2 * strided[1])


@pytest.mark.slow  # model building: in the full suite, kept out of the quick loop
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_backbones_at_256x128(name):
    backbone = BACKBONES.get(f"torchvision/{name}")(last_stride=1).train()
    fmap = backbone(torch.randn(2, 3, 256, 128))  # training mode has its own graph
    assert fmap.shape[:2] == (2, backbone.out_channels)
    strided = _map_size(f"torchvision/{name}", 2, 256, 128)
    assert strided == (8, 4)
    unstrided = _map_size(f"torchvision/{name}", 1, 256, 128)
    # ConvNeXt downsamples with a 2x2 conv, which with stride 1 trims one pixel.
    assert unstrided in ((16, 8), (15, 7))


def test_torchvision_backbones_refuse_what_they_cannot_do():
    with pytest.raises(ReidError, match="vit_b_16 has no global pooling of a feature map"):
        BACKBONES.get("torchvision/vit_b_16")()
    with pytest.raises(ReidError, match="swin_t has no strided convolution .*LAST_STRIDE 2"):
        BACKBONES.get("torchvision/swin_t")(last_stride=1)
    with pytest.raises(UnknownNameError, match="did you mean torchvision/convnext_tiny"):
        BACKBONES.get("torchvision/convnext_tiy")


def test_torchvision_backbones_keep_torchvision_parameter_names():
    import torchvision

    reference = torchvision.models.efficientnet_b0(weights=None).state_dict()
    backbone = BACKBONES.get("torchvision/efficientnet_b0")(last_stride=2).state_dict()
    assert set(backbone) == {key for key in reference if not key.startswith("classifier.")}


@pytest.mark.parametrize(
    ("name", "paper"),
    [("osnet_x1_0", 2.2), ("osnet_x0_75", 1.3), ("osnet_x0_5", 0.6), ("osnet_x0_25", 0.2)],
)
def test_osnet_parameter_counts_match_the_paper(name, paper):
    """Table of the paper, in millions rounded to 0.1: the network and its 512-d
    embedding (reid.models.backbones.osnet.paper_parameter_count), no classifier."""
    assert round(paper_parameter_count(BACKBONES.get(name)()) / 1e6, 1) == paper


def test_osnet_ibn_has_instance_norm_early_only():
    """As Torchreid's osnet_ibn_x1_0, whose ImageNet weights it loads: conv1 and conv2."""
    net = BACKBONES.get("osnet_ibn_x1_0")()
    early, late = [net.conv1, net.conv2], [net.conv3, net.conv4, net.conv5]
    assert all(any(isinstance(m, nn.InstanceNorm2d) for m in stage.modules()) for stage in early)
    assert not any(isinstance(m, nn.InstanceNorm2d) for stage in late for m in stage.modules())


def test_bad_last_stride():
    with pytest.raises(ReidError, match="last_stride"):
        BACKBONES.get("resnet18")(last_stride=3)


def test_unknown_backbone_lists_names():
    with pytest.raises(UnknownNameError, match="available: .*resnet50"):
        build_model(_cfg(BACKBONE="rn50"), num_classes=3)


def test_ibn_a_layout_and_keys():
    backbone = BACKBONES.get("resnet50_ibn_a")()
    for stage in (backbone.layer1, backbone.layer2, backbone.layer3):
        for block in stage:
            assert isinstance(block.bn1.IN, nn.InstanceNorm2d) and block.bn1.IN.affine
            assert isinstance(block.bn1.BN, nn.BatchNorm2d)
            half = block.conv1.out_channels // 2
            assert block.bn1.IN.num_features == half
            assert block.bn1.BN.num_features == block.conv1.out_channels - half
    for block in backbone.layer4:
        assert type(block.bn1) is nn.BatchNorm2d
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in backbone.layer4.modules())

    ibn_keys = set(backbone.state_dict())
    tv_keys = {k for k in torchvision.models.resnet50().state_dict() if not k.startswith("fc.")}
    replaced = {k for k in tv_keys if k not in ibn_keys}
    assert replaced and all(k.split(".")[2] == "bn1" and k[:6] != "layer4" for k in replaced)
    assert "layer1.0.bn1.IN.weight" in ibn_keys and "layer3.5.bn1.BN.running_var" in ibn_keys


def test_head_init():
    head = BNNeckHead(16, 5)
    assert head.neck.bias.requires_grad is False
    assert torch.all(head.neck.weight == 1) and torch.all(head.neck.bias == 0)
    assert head.classifier.bias is None
    assert head.classifier.weight.std().item() == pytest.approx(0.001, rel=0.2)
    assert isinstance(BNNeckHead(16, 5, bnneck=False).neck, nn.Identity)


def test_model_train_and_eval_outputs():
    model = build_model(_cfg(), num_classes=7)
    assert model.feat_dim == 512
    images = torch.randn(2, 3, HEIGHT, WIDTH)
    out = model.train()(images)
    assert set(out) == {"logits", "feat", "neck_feat"}
    assert out["logits"].shape == (2, 7) and out["feat"].shape == out["neck_feat"].shape == (2, 512)
    torch.testing.assert_close(out["logits"], model.head.classifier(out["neck_feat"]))
    features = model.eval()(images)
    assert features.shape == (2, 512)
    assert torch.allclose(features.norm(dim=1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("neck_feat", ["before", "after"])
@pytest.mark.parametrize("bnneck", [True, False])
def test_neck_feat_and_feat_norm(neck_feat, bnneck):
    torch.manual_seed(0)
    backbone = BACKBONES.get("resnet18")()
    head = BNNeckHead(backbone.out_channels, 4, bnneck=bnneck)
    if bnneck:
        # Non-trivial running statistics so "before" and "after" differ.
        head.neck.running_mean.uniform_(0.5, 1.0)
        head.neck.running_var.uniform_(2.0, 3.0)
    images = torch.randn(2, 3, HEIGHT, WIDTH)
    raw = ReidModel(backbone, head, neck_feat=neck_feat, feat_norm=False).eval()
    normed = ReidModel(backbone, head, neck_feat=neck_feat, feat_norm=True).eval()
    with torch.no_grad():
        feat, after = head.eval().embed(backbone.eval()(images))
        expected = after if neck_feat == "after" else feat
        assert torch.allclose(raw(images), expected)
        assert torch.allclose(normed(images), expected / expected.norm(dim=1, keepdim=True))
        assert torch.allclose(normed(images).norm(dim=1), torch.ones(2), atol=1e-5)
    if bnneck:
        assert not torch.allclose(feat, after)


def test_bad_neck_feat():
    with pytest.raises(ReidError, match="neck_feat"):
        build_model(CfgNode({**_cfg(), "TEST": {"NECK_FEAT": "middle", "FEAT_NORM": True}}), 3)


def test_training_feat_is_pre_bnneck():
    model = build_model(_cfg(), num_classes=3).train()
    images = torch.randn(4, 3, HEIGHT, WIDTH)
    out = model(images)
    pooled = model.backbone(images).mean(dim=(2, 3))
    assert torch.allclose(out["feat"], pooled, atol=1e-5)


@pytest.mark.parametrize("pooling", POOLINGS.names())
def test_poolings(pooling):
    fmap = torch.rand(2, 6, 4, 3) + 0.1
    pooled = POOLINGS.get(pooling)()(fmap)
    assert pooled.shape == (2, 6)
    if pooling == "max":
        assert torch.allclose(pooled, fmap.amax(dim=(2, 3)))


def test_gem_p1_is_average_and_p_learnable():
    fmap = torch.rand(2, 6, 4, 3) + 0.1
    gem = GeneralizedMeanPooling(p=1.0)
    assert torch.allclose(gem(fmap), fmap.mean(dim=(2, 3)), atol=1e-6)
    gem3 = POOLINGS.get("gem")()
    assert gem3.p.requires_grad and gem3.p.item() == 3.0
    assert torch.all(gem3(fmap) >= fmap.mean(dim=(2, 3)) - 1e-6)  # power mean inequality


def _torchvision_resnet18_state() -> dict:
    torch.manual_seed(1)
    return torchvision.models.resnet18().state_dict()


def test_load_pretrained_copies_and_reports(tmp_path, caplog):
    state = _torchvision_resnet18_state()
    state["layer1.0.conv1.weight"] = torch.randn(64, 64, 1, 1)  # wrong shape
    state["extra.weight"] = torch.randn(3)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)

    torch.manual_seed(2)
    backbone = BACKBONES.get("resnet18")()
    before = backbone.layer1[0].conv1.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="reid.models.pretrained"):
        load_pretrained(backbone, path, name="resnet18")
    loaded = backbone.state_dict()
    for key, tensor in state.items():
        if key in loaded and key != "layer1.0.conv1.weight":
            assert torch.equal(loaded[key], tensor), key
    assert torch.equal(backbone.layer1[0].conv1.weight, before)  # skipped, not crashed
    text = caplog.text
    assert "1 shape-mismatched" in text and "layer1.0.conv1.weight" in text
    assert "1 unexpected" in text and "extra.weight" in text
    assert "1 missing" in text  # the mismatched tensor stays as initialised
    assert "fc.weight" not in text  # the ImageNet classifier is ignored silently


def test_load_pretrained_from_reid_checkpoint(tmp_path):
    source = build_model(_cfg(), num_classes=3)
    path = tmp_path / "checkpoint.pth"
    optimizer = torch.optim.Adam(source.parameters())
    source(torch.randn(2, 3, HEIGHT, WIDTH))["logits"].sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.1)
    # What the trainer saves: loading it must not need unpickling arbitrary objects.
    checkpoint = {
        "model": source.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": 5,
        "config": "MODEL:\n  BACKBONE: resnet18\n",
    }
    torch.save(checkpoint, path)
    target = BACKBONES.get("resnet18")()
    load_pretrained(target, path)
    for key, tensor in target.state_dict().items():
        assert torch.equal(tensor, source.backbone.state_dict()[key])


def test_load_pretrained_errors(tmp_path):
    with pytest.raises(ReidError, match="not found: .*nothing.pth"):
        load_pretrained(nn.Linear(2, 2), tmp_path / "nothing.pth")
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, path)
    with pytest.raises(
        ReidError,
        match=r"other.pth leaves most of backbone resnet18 uninitialised: copied 0 of 100 "
        r"tensors .*; 100 missing: \[conv1.weight, .*; 1 unexpected: \[encoder.weight\]$",
    ):
        load_pretrained(BACKBONES.get("resnet18")(), path, name="resnet18")


def _offline(url: str, dst: str, *args, **kwargs) -> None:
    raise urllib.error.URLError("no network in tests")


def test_build_model_pretrained(tmp_path, monkeypatch):
    path = tmp_path / "weights.pth"
    torch.save(_torchvision_resnet18_state(), path)
    model = build_model(_cfg(PRETRAINED=True, PRETRAIN_PATH=str(path)), num_classes=3)
    expected = _torchvision_resnet18_state()["conv1.weight"]
    assert torch.equal(model.backbone.conv1.weight, expected)

    # Without a path, torch's hub cache comes before a download (offline here); the
    # whole order is tested in test_pretrained.py.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    with pytest.raises(ReidError, match="put that file at .*resnet18-f37072fd.pth, or set MODEL"):
        build_model(_cfg(PRETRAINED=True), num_classes=3)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(_torchvision_resnet18_state(), tmp_path / "hub" / "checkpoints" / "resnet18-x.pth")
    model = build_model(_cfg(PRETRAINED=True), num_classes=3)
    assert torch.equal(model.backbone.conv1.weight, expected)
