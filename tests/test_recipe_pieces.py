"""FastReID SBS pieces, each off by default: non-local blocks in ResNet stages,
the circle-softmax classifier, AutoAugment with a probability."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from reid.config import load_cfg
from reid.data import ImageDataset
from reid.data.build import build_train_loader
from reid.data.datasets import Record
from reid.data.sampler import Sample
from reid.data.transforms import build_train_transform
from reid.errors import ReidError
from reid.losses import LOSSES, CircleSoftmax, build_loss
from reid.models import BACKBONES
from reid.models.backbones.non_local import NonLocalBlock
from reid.models.build import backbone_options, build_backbone, build_model
from reid.models.pretrained import load_pretrained
from reid.solver import build_optimizer

# --- non-local blocks ------------------------------------------------------------------


def test_non_local_block_starts_as_the_identity():
    torch.manual_seed(0)
    block = NonLocalBlock(8).double()
    x = torch.randn(2, 8, 5, 3, dtype=torch.float64)
    assert torch.equal(block(x), x)  # training mode: batch statistics
    block.eval()
    assert torch.equal(block(x), x)


def test_non_local_block_matches_loop():
    """z_i = x_i + BN(W sum_j (theta_i . phi_j) / N g_j), position by position."""
    torch.manual_seed(0)
    channels, height, width = 4, 3, 2
    block = NonLocalBlock(channels).double().eval()
    with torch.no_grad():  # a trained block: BatchNorm no longer zero
        block.bn.weight.uniform_(0.5, 1.5)
        block.bn.bias.uniform_(-0.5, 0.5)
        block.bn.running_mean.uniform_(-0.2, 0.2)
        block.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, channels, height, width, dtype=torch.float64)

    def conv(layer: nn.Conv2d, vec: torch.Tensor) -> torch.Tensor:
        return layer.weight[:, :, 0, 0] @ vec + layer.bias

    bn = block.bn
    expected = torch.empty_like(x)
    positions = [(r, c) for r in range(height) for c in range(width)]
    for b in range(x.shape[0]):
        for r, c in positions:
            x_i = x[b, :, r, c]
            y_i = torch.zeros(channels // 2, dtype=torch.float64)
            for rj, cj in positions:
                x_j = x[b, :, rj, cj]
                weight = conv(block.theta, x_i) @ conv(block.phi, x_j) / len(positions)
                y_i = y_i + weight * conv(block.g, x_j)
            w_y = conv(block.out, y_i)
            normed = (w_y - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
            expected[b, :, r, c] = x_i + normed * bn.weight + bn.bias
    assert torch.allclose(block(x), expected, rtol=1e-12, atol=1e-12)


# FastReID's WITH_NL: (blocks, channels) per stage, each after one of the stage's last
# residual blocks.
_EXPECTED_NON_LOCAL = {
    "resnet50": {"layer2": (2, 512), "layer3": (3, 1024)},
    "resnet50_ibn_a": {"layer2": (2, 512), "layer3": (3, 1024)},
    "resnet101": {"layer2": (2, 512), "layer3": (9, 1024)},
    "resnet152": {"layer2": (2, 512), "layer3": (9, 1024)},
}


@pytest.mark.slow  # model building: in the full suite, kept out of the quick loop
@pytest.mark.parametrize("name", sorted(_EXPECTED_NON_LOCAL))
def test_non_local_blocks_per_stage_follow_the_last_residual_blocks(name):
    backbone = BACKBONES.get(name)(non_local=True).eval()
    expected = _EXPECTED_NON_LOCAL[name]
    assert {stage: len(blocks) for stage, blocks in backbone.non_local.items()} == {
        stage: count for stage, (count, _) in expected.items()
    }
    order: list[str] = []
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for index, block in enumerate(getattr(backbone, stage)):
            block.register_forward_hook(lambda *_, tag=f"{stage}.{index}": order.append(tag))
    for stage, blocks in backbone.non_local.items():
        for index, block in enumerate(blocks):
            assert block.bn.num_features == expected[stage][1]
            block.register_forward_hook(lambda *_, tag=f"NL.{stage}.{index}": order.append(tag))
    with torch.no_grad():
        backbone(torch.randn(1, 3, 32, 16))
    for stage, (count, _) in expected.items():
        stage_order = [t for t in order if t.startswith(stage) or t.startswith(f"NL.{stage}")]
        depth = len(getattr(backbone, stage))
        plain = [f"{stage}.{i}" for i in range(depth - count)]
        interleaved = [
            tag for i in range(count) for tag in (f"{stage}.{depth - count + i}", f"NL.{stage}.{i}")
        ]
        assert stage_order == plain + interleaved


def test_non_local_is_off_by_default_and_adds_only_new_names():
    torch.manual_seed(0)
    plain = BACKBONES.get("resnet50")()
    with_nl = BACKBONES.get("resnet50")(non_local=True)
    assert len(plain.non_local) == 0
    plain_keys = set(plain.state_dict())
    assert plain_keys == set(torchvision.models.resnet50().state_dict()) - {"fc.weight", "fc.bias"}
    new_keys = set(with_nl.state_dict()) - plain_keys
    assert plain_keys <= set(with_nl.state_dict())
    assert new_keys and all(key.startswith("non_local.") for key in new_keys)


@pytest.mark.parametrize("name", ["resnet50", "resnet50_ibn_a"])
def test_resnet_with_non_local_equals_the_resnet_at_init(name):
    """Same weights for the ResNet part: the zero-initialised blocks change nothing."""
    torch.manual_seed(0)
    plain = BACKBONES.get(name)()
    with_nl = BACKBONES.get(name)(non_local=True)
    result = with_nl.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.startswith("non_local.") for k in result.missing_keys)
    images = torch.randn(4, 3, 32, 16)
    with torch.no_grad():
        assert torch.equal(with_nl(images), plain(images))  # training mode
        assert torch.equal(with_nl.eval()(images), plain.eval()(images))


@pytest.mark.slow  # model building: in the full suite, kept out of the quick loop
def test_imagenet_weights_load_into_the_resnet_part(tmp_path: Path):
    torch.manual_seed(0)
    imagenet = torchvision.models.resnet50().state_dict()
    path = tmp_path / "resnet50-imagenet.pth"
    torch.save(imagenet, path)
    backbone = BACKBONES.get("resnet50")(non_local=True)
    new_before = {k: v.clone() for k, v in backbone.state_dict().items() if "non_local." in k}
    load_pretrained(backbone, path, name="resnet50")
    state = backbone.state_dict()
    for key, tensor in imagenet.items():
        if not key.startswith("fc."):
            assert torch.equal(state[key], tensor), key
    assert all(torch.equal(state[k], v) for k, v in new_before.items())


def test_non_local_option_from_the_config():
    cfg = load_cfg(opts=["MODEL.BACKBONE", "resnet50", "MODEL.NON_LOCAL", "True"])
    model = build_model(cfg, num_classes=3)
    assert len(model.backbone.non_local["layer3"]) == 3
    assert len(build_model(load_cfg(), num_classes=3).backbone.non_local) == 0
    # FastReID has no non-local blocks for the BasicBlock ResNets: asking is an error.
    for name in ("resnet18", "resnet34"):
        options = backbone_options(load_cfg(opts=["MODEL.NON_LOCAL", "True"]))
        message = f"MODEL.NON_LOCAL True is not supported by the backbone {name}"
        with pytest.raises(ReidError, match=message):
            build_backbone(name, options)


@pytest.mark.slow  # model building: in the full suite, kept out of the quick loop
def test_model_with_non_local_trains_a_step():
    """At init only the blocks' BatchNorm gets a gradient (the rest sits behind its zero
    scale); after one step every block parameter does, and the blocks act."""
    cfg = load_cfg(opts=["MODEL.BACKBONE", "resnet50", "MODEL.NON_LOCAL", "True"])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=2)
    loss_fn = build_loss(cfg, num_classes=2, feat_dim=model.feat_dim)
    optimizer = build_optimizer(cfg, model, loss_fn)
    images, pids = torch.randn(4, 3, 32, 16), torch.tensor([0, 0, 1, 1])
    blocks = [b for stage in model.backbone.non_local.values() for b in stage]

    def step() -> None:
        optimizer.zero_grad()
        total = loss_fn(model(images), pids)["total"]
        assert torch.isfinite(total)
        total.backward()

    step()
    for block in blocks:
        assert block.bn.weight.grad.abs().sum() > 0 and block.bn.bias.grad.abs().sum() > 0
        assert block.theta.weight.grad.abs().sum() == 0  # behind the zero scale
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer.step()
    assert all(
        not torch.equal(p, before[name])
        for name, p in model.named_parameters()
        if "non_local" in name and name.endswith(("bn.weight", "bn.bias"))
    )
    step()
    for block in blocks:
        for conv in (block.theta, block.phi, block.g, block.out):
            assert conv.weight.grad.abs().sum() > 0
    x = torch.randn(2, 512, 6, 3)
    assert not torch.equal(blocks[0].eval()(x), x)


# --- circle softmax --------------------------------------------------------------------


def _brute_force_circle_softmax(feats, weight, pids, margin, scale, epsilon, detach=True):
    """Loop over samples and classes on scalar tensors, from the definition; the
    self-paced weights are Python floats (constants in the gradient) when ``detach``."""
    num_classes = weight.shape[0]
    total = 0.0
    for f, label in zip(feats, pids.tolist(), strict=True):
        logits = []
        for k in range(num_classes):
            w = weight[k]
            s = (f * w).sum() / (f.pow(2).sum().sqrt() * w.pow(2).sum().sqrt())
            s_value = s.item() if detach else s
            if k == label:
                alpha = max(0.0, 1 + margin - s_value) if detach else (1 + margin - s).clamp(min=0)
                logits.append(scale * alpha * (s - (1 - margin)))
            else:
                alpha = max(0.0, s_value + margin) if detach else (s + margin).clamp(min=0)
                logits.append(scale * alpha * (s - margin))
        log_z = torch.stack(logits).exp().sum().log()
        nll = [log_z - logit for logit in logits]
        total = total + (1 - epsilon) * nll[label] + epsilon * sum(nll) / num_classes
    return total / len(pids)


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
@pytest.mark.parametrize("margin,scale", [(0.35, 64.0), (0.25, 8.0)])
def test_circle_softmax_matches_brute_force(margin, scale, epsilon):
    torch.manual_seed(0)
    num_classes, dim = 5, 4
    term = CircleSoftmax(num_classes, dim, margin, scale, label_smoothing=epsilon).double()
    feats = torch.randn(12, dim, dtype=torch.float64, requires_grad=True)
    pids = torch.randint(0, num_classes, (12,))
    loss = term(feats, pids)
    loss.backward()

    ref_feats = feats.detach().clone().requires_grad_()
    ref_weight = term.weight.detach().clone().requires_grad_()
    expected = _brute_force_circle_softmax(ref_feats, ref_weight, pids, margin, scale, epsilon)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)
    assert torch.allclose(feats.grad, ref_feats.grad, rtol=1e-7, atol=1e-12)
    assert torch.allclose(term.weight.grad, ref_weight.grad, rtol=1e-7, atol=1e-12)
    # The weights held constant matter: differentiating through them is another gradient.
    ref_feats.grad = None
    _brute_force_circle_softmax(
        ref_feats, term.weight.detach(), pids, margin, scale, epsilon, detach=False
    ).backward()
    assert not torch.allclose(feats.grad, ref_feats.grad, rtol=1e-3)


def test_circle_softmax_by_hand():
    """Two classes with weights e1, e2, m = 0.25, gamma = 4: the loss of a sample of
    class 0 is softplus(logit_1 - logit_0)."""
    term = CircleSoftmax(2, 2, margin=0.25, scale=4.0).double()
    with torch.no_grad():
        term.weight.copy_(torch.eye(2, dtype=torch.float64))
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    pids = torch.tensor([0, 0, 0])
    r = 1 / math.sqrt(2)
    # s_p = 1, s_n = 0: a_p = 0.25, a_n = 0.25; logits 4*0.25*0.25 and 4*0.25*(-0.25).
    # s_p = 0, s_n = 1: a_p = a_n = 1.25; logits 4*1.25*(-0.75) and 4*1.25*0.75.
    # s_p = r, s_n = -r: a_n = relu(0.25 - r) = 0; logit_p = 4*(1.25 - r)*(r - 0.75).
    pairs = [(0.25, -0.25), (-3.75, 3.75), (4 * (1.25 - r) * (r - 0.75), 0.0)]
    expected = sum(math.log1p(math.exp(n - p)) for p, n in pairs) / 3
    assert term(feats, pids).item() == pytest.approx(expected, rel=1e-12)
    assert term.diagnostics["acc"].item() == pytest.approx(2 / 3)


def test_circle_softmax_is_a_registered_term_read_from_the_config():
    assert "circle_softmax" in LOSSES.names()
    cfg = load_cfg(opts=["LOSS.NAMES", "[circle_softmax, triplet]", "LOSS.WEIGHTS", "[1, 1]",
                         "LOSS.CIRCLE_SOFTMAX_MARGIN", "0.3", "LOSS.CIRCLE_SOFTMAX_SCALE", "32",
                         "LOSS.LABEL_SMOOTH", "0.2"])  # fmt: skip
    loss_fn = build_loss(cfg, num_classes=4, feat_dim=8)
    term = loss_fn.terms["circle_softmax"]
    assert isinstance(term, CircleSoftmax)
    # SBS smooths the cross-entropy over the circle-softmax logits (CE_EPSILON).
    assert (term.margin, term.scale, term.label_smoothing) == (0.3, 32.0, 0.2)
    assert term.input == "neck_feat" and term.own_lr is None and not term.pairwise
    default = LOSSES.get("circle_softmax")(load_cfg(), 4, 8, 1.0)
    assert (default.margin, default.scale) == (0.35, 64.0)  # FastReID's SBS
    assert [name for name, _ in loss_fn.model_optimizer_parameters()] == [
        "loss.circle_softmax.weight"
    ]
    torch.manual_seed(0)
    outputs = {"feat": torch.randn(8, 8), "neck_feat": torch.randn(8, 8, requires_grad=True)}
    losses = loss_fn(outputs, torch.arange(4).repeat_interleave(2))
    assert "acc" in losses and torch.isfinite(losses["total"])
    losses["total"].backward()
    assert term.weight.grad.abs().sum() > 0


# --- AutoAugment -----------------------------------------------------------------------

_SIZE, _MEAN, _STD = (32, 16), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _picture(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8))


def _transform(autoaugment_prob: float | None, **kwargs):
    if autoaugment_prob is None:  # the pipeline as it was before AutoAugment
        return build_train_transform(_SIZE, _MEAN, _STD, **kwargs)
    return build_train_transform(_SIZE, _MEAN, _STD, autoaugment_prob=autoaugment_prob, **kwargs)


def _steps(transform) -> list:
    """The AutoAugment step of a training transform, and what a RandomApply wraps."""
    step = transform.autoaugment
    if step is None:
        return []
    return [step, *step.transforms] if isinstance(step, v2.RandomApply) else [step]


def _seeded(transform, image: Image.Image, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return transform(image)


def _old_pipeline() -> v2.Compose:
    """The training transform before AutoAugment existed, step by step."""
    return v2.Compose([
        v2.Resize(_SIZE), v2.RandomHorizontalFlip(0.5), v2.Pad(10), v2.RandomCrop(_SIZE),
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(_MEAN, _STD),
        v2.RandomErasing(0.5, scale=(0.02, 0.4), ratio=(0.3, 3.33), value=0),
    ])  # fmt: skip


def test_autoaugment_prob_zero_is_the_old_pipeline():
    image = _picture()
    for seed in range(20):
        expected = _seeded(_old_pipeline(), image, seed)
        assert torch.equal(_seeded(_transform(0.0), image, seed), expected)
        assert torch.equal(_seeded(_transform(None), image, seed), expected)


def test_autoaugment_prob_one_is_torchvision_autoaugment_before_the_resize():
    image = _picture()
    autoaugment = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    for seed in range(20):
        torch.manual_seed(seed)
        expected = _old_pipeline()(autoaugment(image))
        assert torch.equal(_seeded(_transform(1.0), image, seed), expected)
    # With the other augmentations off, it changes the picture for most seeds.
    fixed = {"flip_prob": 0.0, "padding": 0, "erase_prob": 0.0}
    plain = _transform(0.0, **fixed)(image)
    changed = sum(
        not torch.equal(_seeded(_transform(1.0, **fixed), image, seed), plain) for seed in range(20)
    )
    assert changed >= 10


@pytest.mark.slow  # model building: in the full suite, kept out of the quick loop
def test_autoaugment_applied_in_about_p_of_the_images():
    image = _picture().resize((8, 16))
    transform = _transform(0.3, flip_prob=0.0, padding=0, erase_prob=0.0)
    (autoaugment,) = [m for m in _steps(transform) if isinstance(m, v2.AutoAugment)]
    calls = []
    autoaugment.register_forward_hook(lambda *_: calls.append(1))
    for seed in range(1000):
        _seeded(transform, image, seed)
    assert abs(len(calls) / 1000 - 0.3) < 0.05  # 3.4 standard deviations


def test_autoaugment_is_a_function_of_the_sample_seed(tmp_path: Path):
    """Through ImageDataset, whatever the global RNG did before: the draws of AutoAugment
    come from the generator seeded with the sample's seed, as those of the others."""
    path = tmp_path / "person.png"
    _picture().save(path)
    dataset = ImageDataset([Record(str(path), 0, 0)], _transform(0.5))
    outputs = {}
    for seed in range(12):
        torch.manual_seed(1000 + seed)  # a worker's global state, which must not matter
        image, _, _ = dataset[Sample(0, seed)]
        torch.manual_seed(5000)
        assert torch.equal(dataset[Sample(0, seed)][0], image)
        assert torch.equal(_seeded(_transform(0.5), _picture(), seed), image)
        outputs[seed] = image
    assert len({o.sum().item() for o in outputs.values()}) > 1


def test_train_loader_reads_autoaugment_prob(tmp_path: Path):
    path = tmp_path / "person.png"
    _picture().save(path)
    records = [Record(str(path), pid, 0) for pid in (0, 0, 1, 1)]
    opts = ["SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_INSTANCES", "2",
            "DATALOADER.NUM_WORKERS", "0"]  # fmt: skip
    loader = build_train_loader(load_cfg(opts=[*opts, "INPUT.AUTOAUGMENT_PROB", "0.25"]), records)
    (apply,) = [m for m in _steps(loader.dataset.transform) if isinstance(m, v2.RandomApply)]
    assert apply.p == 0.25 and isinstance(apply.transforms[0], v2.AutoAugment)
    default = build_train_loader(load_cfg(opts=opts), records)
    assert not any(isinstance(m, v2.AutoAugment) for m in _steps(default.dataset.transform))
