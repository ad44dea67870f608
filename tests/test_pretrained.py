"""ImageNet weights: the load order (file, cache, download), the one-line offline error,
the "mostly uninitialised" rule, and Torchreid's OSNet weights in our OSNet.

No test touches the network: torch.hub's downloader is replaced in every test, and
``TORCH_HOME`` points at a temporary folder so the user's own cache is never read.
"""

import logging
import socket
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from reid.config import get_default_cfg
from reid.errors import ReidError
from reid.models import BACKBONES, build_model, load_pretrained
from reid.models.pretrained import load_imagenet_weights

RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
ADVICE = "or set MODEL.PRETRAIN_PATH to a local weights file"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torch.hub's checkpoint folder, under tmp_path; any download fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(*args, **kwargs):
        raise AssertionError(f"unexpected download: {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


def serve(monkeypatch: pytest.MonkeyPatch, state: dict) -> list[tuple]:
    """Makes downloads write ``state`` to their destination; returns the calls made."""
    calls = []

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, Path(dst), hash_prefix, progress))
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    return calls


def go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def download(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)


def resnet18_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """A torchvision ResNet-18 state dict, classifier included, as torchvision ships it."""
    torch.manual_seed(seed)
    return torchvision.models.resnet18().state_dict()


def pretrained_cfg(**model):
    cfg = get_default_cfg()
    cfg.MODEL.update({"BACKBONE": "resnet18", "PRETRAINED": True, **model})
    return cfg


def assert_holds(backbone: nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = backbone.state_dict()
    for key, tensor in loaded.items():
        assert torch.equal(tensor, state[key]), key


# --- load order -------------------------------------------------------------------


def test_first_use_downloads_into_the_cache_with_progress(monkeypatch, cache):
    calls = serve(monkeypatch, resnet18_state())
    model = build_model(pretrained_cfg(), num_classes=3)
    assert calls == [(RESNET18_URL, cache / "resnet18-f37072fd.pth", "f37072fd", True)]
    assert_holds(model.backbone, resnet18_state())

    # The second use reads the cache and downloads nothing.
    calls.clear()
    build_model(pretrained_cfg(), num_classes=3)
    assert calls == []


def test_cache_comes_before_download(cache):
    cache.mkdir(parents=True)
    torch.save(resnet18_state(2), cache / "resnet18-f37072fd.pth")
    backbone = BACKBONES.get("resnet18")()
    load_imagenet_weights(backbone, "resnet18")  # the autouse fixture forbids downloads
    assert_holds(backbone, resnet18_state(2))


def test_pretrain_path_comes_first(tmp_path, cache):
    cache.mkdir(parents=True)
    torch.save(resnet18_state(2), cache / "resnet18-f37072fd.pth")
    torch.save(resnet18_state(3), tmp_path / "mine.pth")
    model = build_model(pretrained_cfg(PRETRAIN_PATH=str(tmp_path / "mine.pth")), num_classes=3)
    assert_holds(model.backbone, resnet18_state(3))


def test_torchvision_backbones_take_their_default_weights(monkeypatch, cache):
    torch.manual_seed(4)
    state = torchvision.models.mobilenet_v3_small().state_dict()
    calls = serve(monkeypatch, state)
    backbone = BACKBONES.get("torchvision/mobilenet_v3_small")(last_stride=2)
    load_imagenet_weights(backbone, "torchvision/mobilenet_v3_small")
    url = torchvision.models.MobileNet_V3_Small_Weights.DEFAULT.url
    assert calls == [(url, cache / Path(url).name, "047dcff4", True)]
    assert_holds(backbone, state)


def test_a_backbone_with_its_own_library_loads_itself(tmp_path):
    """timm/<name> backbones bring load_library_weights (cache, hub, offline message)."""

    class LibraryBackbone(nn.Linear):
        calls = 0

        def load_library_weights(self) -> None:
            LibraryBackbone.calls += 1

    load_imagenet_weights(LibraryBackbone(2, 2), "timm/anything")
    assert LibraryBackbone.calls == 1

    source = nn.Linear(2, 2)
    torch.save(source.state_dict(), tmp_path / "linear.pth")
    backbone = LibraryBackbone(2, 2)
    load_imagenet_weights(backbone, "timm/anything", tmp_path / "linear.pth")
    assert LibraryBackbone.calls == 1  # MODEL.PRETRAIN_PATH still comes first
    assert_holds(backbone, source.state_dict())


def test_adapt_state_dict_runs_before_matching(tmp_path):
    """What a timm ViT uses to resample its position embedding from a 224x224 file."""

    class Adapting(nn.Linear):
        def adapt_state_dict(self, state):
            return {key.removeprefix("old_"): 2 * tensor for key, tensor in state.items()}

    source = nn.Linear(3, 2)
    torch.save({f"old_{k}": v for k, v in source.state_dict().items()}, tmp_path / "w.pth")
    target = Adapting(3, 2)
    load_pretrained(target, tmp_path / "w.pth")
    assert torch.equal(target.weight, 2 * source.weight)


# --- one-line errors --------------------------------------------------------------


def test_offline_without_cache_says_which_file_to_put_where(monkeypatch, cache):
    go_offline(monkeypatch)
    with pytest.raises(ReidError) as info:
        build_model(pretrained_cfg(), num_classes=3)
    assert str(info.value) == (
        f"cannot download ImageNet weights for backbone resnet18 from {RESNET18_URL} "
        "(<urlopen error [Errno -3] Temporary failure in name resolution>): put that file "
        f"at {cache}/resnet18-f37072fd.pth, {ADVICE}"
    )
    assert not list(cache.glob("*"))


def test_a_silent_network_times_out_instead_of_hanging(monkeypatch):
    seen = []

    def download(url, dst, hash_prefix=None, progress=True):
        seen.append(socket.getdefaulttimeout())
        raise TimeoutError("timed out")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    with pytest.raises(ReidError, match=r"resnet18-f37072fd.pth \(timed out\): put that file"):
        load_imagenet_weights(nn.Identity(), "resnet18")
    assert seen == [60.0] and socket.getdefaulttimeout() is None


def test_offline_resnet50_ibn_a_names_the_ibn_net_release(monkeypatch, cache):
    go_offline(monkeypatch)
    with pytest.raises(ReidError) as info:
        load_imagenet_weights(nn.Identity(), "resnet50_ibn_a")
    url = "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_a-d9d0bb7b.pth"
    message = str(info.value)
    assert f"from {url} (" in message and "\n" not in message
    assert message.endswith(f"put that file at {cache}/resnet50_ibn_a-d9d0bb7b.pth, {ADVICE}")


def test_osnet_without_cache_names_torchreids_file(cache):
    with pytest.raises(ReidError) as info:
        load_imagenet_weights(BACKBONES.get("osnet_x0_25")(), "osnet_x0_25")
    assert str(info.value) == (
        "no ImageNet weights cached for backbone osnet_x0_25: put osnet_x0_25_imagenet.pth "
        "(from Torchreid's model zoo, https://kaiyangzhou.github.io/deep-person-reid/MODEL_ZOO)"
        f" at {cache}/osnet_x0_25_imagenet.pth, {ADVICE}"
    )


def test_a_backbone_without_known_weights_asks_for_a_file():
    with pytest.raises(ReidError) as info:
        load_imagenet_weights(nn.Linear(2, 2), "my_net")
    assert str(info.value) == (
        "no ImageNet weights are known for backbone my_net: set MODEL.PRETRAIN_PATH to a "
        "local weights file"
    )


# --- the "mostly uninitialised" rule ----------------------------------------------


def _first_tensors(count: int) -> dict[str, torch.Tensor]:
    """The first ``count`` weights of a ResNet-18 (step counters aside), plus fc."""
    state = resnet18_state()
    weights = [k for k in state if not k.endswith("num_batches_tracked")]
    kept = weights[:count] + ["fc.weight", "fc.bias"]
    return {k: state[k] for k in kept}


def test_a_file_filling_less_than_half_the_backbone_is_an_error(tmp_path):
    """ResNet-18 has 100 tensors besides BatchNorm's step counters: 49 is too few."""
    torch.save({**_first_tensors(49), "extra.weight": torch.zeros(1)}, tmp_path / "w.pth")
    with pytest.raises(ReidError) as info:
        load_pretrained(BACKBONES.get("resnet18")(), tmp_path / "w.pth", name="resnet18")
    message = str(info.value)
    assert message.startswith(
        f"{tmp_path / 'w.pth'} leaves most of backbone resnet18 uninitialised: copied 49 of "
        "100 tensors (at least half must load); 51 missing: [layer2.1.bn2.running_var, "
    )
    assert message.endswith("; 1 unexpected: [extra.weight]")  # fc.* is expected, unnamed


def test_a_file_filling_half_the_backbone_loads_with_a_warning(tmp_path, caplog):
    torch.save(_first_tensors(50), tmp_path / "w.pth")
    backbone = BACKBONES.get("resnet18")()
    with caplog.at_level(logging.INFO, logger="reid.models.pretrained"):
        load_pretrained(backbone, tmp_path / "w.pth", name="resnet18")
    assert "loaded 50/100 tensors" in caplog.text
    assert "50 missing (left as initialised)" in caplog.text
    assert [r.levelno for r in caplog.records].count(logging.WARNING) == 2


def test_a_complete_imagenet_file_loads_without_a_warning(tmp_path, caplog):
    """The classifier and the step counters are the only expected misses."""
    state = resnet18_state()
    torch.save({k: v for k, v in state.items() if "num_batches" not in k}, tmp_path / "w.pth")
    with caplog.at_level(logging.INFO, logger="reid.models.pretrained"):
        load_pretrained(BACKBONES.get("resnet18")(), tmp_path / "w.pth", name="resnet18")
    assert "loaded 100/100 tensors" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- Torchreid's OSNet ImageNet weights --------------------------------------------
# A network laid out as Torchreid's torchreid/models/osnet.py names its modules,
# written from that layout: conv1 (conv, bn), maxpool, stages conv2 and conv3 of two OS
# blocks and a transition (1x1 conv unit + 2x2 average pool) at index 2, conv4 of two OS
# blocks, conv5 (conv, bn), the 512-d embedding fc (Linear, BatchNorm1d, ReLU) and the
# ImageNet classifier. An OS block holds conv1 (1x1 conv unit), the Lite 3x3 streams
# conv2a (one layer) and conv2b/conv2c/conv2d (Sequentials of 2, 3, 4), the shared gate
# (fc1, fc2), conv3 (1x1 conv + bn), downsample (the same, when channels change) and IN
# (OSNet-IBN, in conv2). A Lite 3x3 holds conv1 (1x1), conv2 (depthwise 3x3) and bn.


class _ConvUnit(nn.Module):
    def __init__(self, cin, cout, kernel, stride=1, relu=True, instance_norm=False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.InstanceNorm2d(cout, affine=True) if instance_norm else nn.BatchNorm2d(cout)
        self.use_relu = relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return torch.relu(x) if self.use_relu else x


class _Lite(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(self.bn(self.conv2(self.conv1(x))))


class _Gate(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // 16, 1)
        self.fc2 = nn.Conv2d(channels // 16, channels, 1)

    def forward(self, x):
        context = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(context))))


class _Block(nn.Module):
    def __init__(self, cin, cout, instance_norm=False):
        super().__init__()
        mid = cout // 4
        self.conv1 = _ConvUnit(cin, mid, 1)
        self.conv2a = _Lite(mid)
        self.conv2b = nn.Sequential(*(_Lite(mid) for _ in range(2)))
        self.conv2c = nn.Sequential(*(_Lite(mid) for _ in range(3)))
        self.conv2d = nn.Sequential(*(_Lite(mid) for _ in range(4)))
        self.gate = _Gate(mid)
        self.conv3 = _ConvUnit(mid, cout, 1, relu=False)
        self.downsample = _ConvUnit(cin, cout, 1, relu=False) if cin != cout else None
        self.IN = nn.InstanceNorm2d(cout, affine=True) if instance_norm else None

    def forward(self, x):
        reduced = self.conv1(x)
        streams = (self.conv2a, self.conv2b, self.conv2c, self.conv2d)
        out = self.conv3(sum(self.gate(s(reduced)) for s in streams))
        out = out + (self.downsample(x) if self.downsample is not None else x)
        return torch.relu(self.IN(out) if self.IN is not None else out)


class TorchreidLayoutOSNet(nn.Module):
    def __init__(self, channels, ibn=False):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.conv1 = _ConvUnit(3, c1, 7, stride=2, instance_norm=ibn)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        transition = lambda c: nn.Sequential(_ConvUnit(c, c, 1), nn.AvgPool2d(2, 2))  # noqa: E731
        self.conv2 = nn.Sequential(_Block(c1, c2, ibn), _Block(c2, c2, ibn), transition(c2))
        self.conv3 = nn.Sequential(_Block(c2, c3), _Block(c3, c3), transition(c3))
        self.conv4 = nn.Sequential(_Block(c3, c4), _Block(c4, c4))
        self.conv5 = _ConvUnit(c4, c4, 1)
        self.fc = nn.Sequential(nn.Linear(c4, 512), nn.BatchNorm1d(512), nn.ReLU())
        self.classifier = nn.Linear(512, 1000)

    def featuremaps(self, x):
        x = self.conv3(self.conv2(self.maxpool(self.conv1(x))))
        return self.conv5(self.conv4(x))


# Torchreid's widths of its five released OSNets (conv1, conv2, conv3, conv4).
TORCHREID_OSNETS = {
    "osnet_x1_0": ((64, 256, 384, 512), False),
    "osnet_x0_75": ((48, 192, 288, 384), False),
    "osnet_x0_5": ((32, 128, 192, 256), False),
    "osnet_x0_25": ((16, 64, 96, 128), False),
    "osnet_ibn_x1_0": ((64, 256, 384, 512), True),
}


def torchreid_osnet(name: str, seed: int = 0) -> TorchreidLayoutOSNet:
    """A Torchreid-layout OSNet with random weights, norm statistics included."""
    torch.manual_seed(seed)
    net = TorchreidLayoutOSNet(*TORCHREID_OSNETS[name])
    with torch.no_grad():
        for key, tensor in net.state_dict().items():
            if key.endswith("running_var") or (key.endswith("weight") and tensor.dim() == 1):
                tensor.uniform_(0.5, 1.5)
            elif key.endswith(("running_mean", "bias")):
                tensor.normal_(0.0, 0.1)
    return net.eval()


@pytest.mark.slow  # model building: in the full suite, kept out of the quick loop
@pytest.mark.parametrize("name", list(TORCHREID_OSNETS))
def test_torchreid_osnet_imagenet_weights_give_the_same_features(name, tmp_path, caplog):
    reference = torchreid_osnet(name)
    path = tmp_path / f"{name}_imagenet.pth"
    torch.save({f"module.{k}": v for k, v in reference.state_dict().items()}, path)

    ours = BACKBONES.get(name)(last_stride=2)
    with caplog.at_level(logging.INFO, logger="reid.models.pretrained"):
        load_pretrained(ours, path, name=name)
    expected = sum(not k.endswith("num_batches_tracked") for k in ours.state_dict())
    assert f"loaded {expected}/{expected} tensors" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # fc, classifier

    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(images), reference.featuremaps(images))


def test_osnet_reads_torchreids_file_from_the_cache(cache):
    cache.mkdir(parents=True)
    reference = torchreid_osnet("osnet_x0_25", seed=5)
    torch.save(reference.state_dict(), cache / "osnet_x0_25_imagenet.pth")
    model = build_model(pretrained_cfg(BACKBONE="osnet_x0_25", LAST_STRIDE=2), num_classes=3)
    assert torch.equal(model.backbone.conv1[0].weight, reference.conv1.conv.weight)
    assert torch.equal(model.backbone.conv5[1].running_var, reference.conv5.bn.running_var)


def test_osnet_still_reads_its_own_names(tmp_path):
    """A reid checkpoint of our OSNet passes the Torchreid key map unchanged."""
    torch.manual_seed(6)
    source = BACKBONES.get("osnet_ibn_x1_0")()
    torch.save({f"backbone.{k}": v for k, v in source.state_dict().items()}, tmp_path / "c.pth")
    target = BACKBONES.get("osnet_ibn_x1_0")()
    load_pretrained(target, tmp_path / "c.pth")
    assert_holds(target, source.state_dict())
