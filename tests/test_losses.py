"""Losses against brute-force loops written from their definitions."""

import math

import pytest
import torch
import torch.nn.functional as F
from yacs.config import CfgNode

from reid.errors import ReidError
from reid.losses import (
    CenterLoss,
    CrossEntropyLabelSmooth,
    ReidLoss,
    TripletLoss,
    build_loss,
)


def _pk_batch(num_ids: int, num_instances: int, dim: int, seed: int) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    pids = torch.arange(num_ids).repeat_interleave(num_instances)
    order = torch.randperm(len(pids), generator=gen)
    feats = torch.randn(len(pids), dim, generator=gen, dtype=torch.float64)
    return feats, pids[order]


def _brute_force_triplet(feats, pids, margin, normalize) -> float:
    rows = [[float(v) for v in row] for row in feats]
    if normalize:
        rows = [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in rows]
    labels = [int(p) for p in pids]
    losses = []
    for a, anchor in enumerate(rows):
        d_pos, d_neg = [], []
        for j, other in enumerate(rows):
            if j == a:
                continue
            d = math.sqrt(sum((x - y) ** 2 for x, y in zip(anchor, other, strict=True)))
            (d_pos if labels[j] == labels[a] else d_neg).append(d)
        if not d_pos or not d_neg:
            continue
        gap = max(d_pos) - min(d_neg)
        losses.append(math.log1p(math.exp(gap)) if margin is None else max(0.0, gap + margin))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("margin", [0.3, None])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("num_ids,num_instances", [(2, 2), (3, 4), (4, 3), (6, 2), (5, 4)])
def test_triplet_matches_brute_force(margin, normalize, num_ids, num_instances):
    feats, pids = _pk_batch(num_ids, num_instances, dim=8, seed=num_ids * 10 + num_instances)
    # Scaled down so that with margin 0.3 some triplets are inactive and some active.
    feats = feats * 0.2
    expected = _brute_force_triplet(feats, pids, margin, normalize)
    loss = TripletLoss(margin=margin, normalize_feature=normalize)(feats, pids)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    # float32 input, as in training.
    loss32 = TripletLoss(margin=margin, normalize_feature=normalize)(feats.float(), pids)
    assert loss32.item() == pytest.approx(expected, abs=1e-5)


def test_triplet_margin_zero_is_soft_margin():
    feats, pids = _pk_batch(3, 3, dim=6, seed=1)
    assert torch.allclose(
        TripletLoss(margin=0.0)(feats, pids), TripletLoss(margin=None)(feats, pids)
    )


def test_triplet_skips_anchors_without_positive_or_negative():
    feats, pids = _pk_batch(3, 2, dim=5, seed=2)
    lone = torch.randn(1, 5, dtype=torch.float64)
    with_lone = TripletLoss(margin=0.3)(torch.cat([feats, lone]), torch.cat([pids, pids.new([99])]))
    # The lone sample is a negative of the others but never an anchor.
    expected = _brute_force_triplet(
        torch.cat([feats, lone]), torch.cat([pids, pids.new([99])]), 0.3, False
    )
    assert with_lone.item() == pytest.approx(expected, abs=1e-9)
    single_id = TripletLoss(margin=0.3)(feats.requires_grad_(), torch.zeros(6, dtype=torch.long))
    assert single_id.item() == 0.0
    single_id.backward()
    assert torch.all(feats.grad == 0)


@pytest.mark.parametrize("margin", [0.3, None])
@pytest.mark.parametrize("normalize", [False, True])
def test_triplet_gradient_finite_with_duplicate_features(margin, normalize):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4, 16, generator=gen)
    # Rows 0 and 1 are identical with the same identity (an anchor equal to its only
    # positive); rows 2 and 3 are identical with different identities (zero distance to
    # a negative); row 5 repeats row 4.
    feats = torch.stack([base[0], base[0], base[1], base[1], base[2], base[2], base[3], base[3]])
    pids = torch.tensor([0, 0, 1, 2, 3, 3, 1, 2])
    feats.requires_grad_()
    loss = TripletLoss(margin=margin, normalize_feature=normalize)(feats, pids)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(feats.grad).all()

    zeros = torch.zeros(4, 16, requires_grad=True)
    loss = TripletLoss(margin=margin)(zeros, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert torch.isfinite(zeros.grad).all()


def test_label_smooth_matches_loop():
    gen = torch.Generator().manual_seed(0)
    num_classes, eps = 7, 0.1
    logits = torch.randn(5, num_classes, generator=gen, dtype=torch.float64)
    pids = torch.tensor([0, 3, 6, 3, 1])
    expected = 0.0
    for row, label in zip(logits.tolist(), pids.tolist(), strict=True):
        log_z = math.log(sum(math.exp(v) for v in row))
        for k, v in enumerate(row):
            target = (1 - eps) * (k == label) + eps / num_classes
            expected -= target * (v - log_z)
    expected /= len(pids)
    loss = CrossEntropyLabelSmooth(num_classes, epsilon=eps)(logits, pids)
    assert loss.item() == pytest.approx(expected, abs=1e-10)


def test_label_smooth_zero_is_cross_entropy():
    logits = torch.randn(6, 9)
    pids = torch.randint(0, 9, (6,))
    loss = CrossEntropyLabelSmooth(9, epsilon=0.0)(logits, pids)
    assert torch.allclose(loss, F.cross_entropy(logits, pids), atol=1e-6)


def test_center_loss_matches_loop():
    torch.manual_seed(0)
    center_loss = CenterLoss(num_classes=4, feat_dim=3).double()
    feats = torch.randn(6, 3, dtype=torch.float64)
    pids = torch.tensor([0, 2, 2, 3, 1, 0])
    centers = center_loss.centers.detach().tolist()
    expected = 0.0
    for row, label in zip(feats.tolist(), pids.tolist(), strict=True):
        expected += sum((x - c) ** 2 for x, c in zip(row, centers[label], strict=True))
    expected /= len(pids)
    assert center_loss(feats, pids).item() == pytest.approx(expected, abs=1e-10)


def _loss_cfg() -> CfgNode:
    """The loss keys of reid.config.defaults with their default values."""
    return CfgNode(
        {
            "LOSS": {
                "CE_WEIGHT": 1.0,
                "LABEL_SMOOTH": 0.1,
                "TRIPLET_WEIGHT": 1.0,
                "TRIPLET_MARGIN": 0.3,
                "TRIPLET_NORM_FEAT": False,
                "CENTER_WEIGHT": 0.0,
            },
            "SOLVER": {"CENTER_LR": 0.5},
        }
    )


def _outputs(batch: int, num_classes: int, dim: int) -> dict:
    gen = torch.Generator().manual_seed(3)
    return {
        "logits": torch.randn(batch, num_classes, generator=gen, requires_grad=True),
        "feat": torch.randn(batch, dim, generator=gen, requires_grad=True),
    }


def test_build_loss_terms_and_total():
    cfg = _loss_cfg()
    cfg.LOSS.CE_WEIGHT = 0.7
    cfg.LOSS.TRIPLET_WEIGHT = 1.5
    cfg.LOSS.CENTER_WEIGHT = 0.0005
    loss_fn = build_loss(cfg, num_classes=5, feat_dim=8)
    outputs = _outputs(10, 5, 8)
    pids = torch.arange(5).repeat_interleave(2)
    losses = loss_fn(outputs, pids)
    assert set(losses) == {"ce", "triplet", "center", "total"}
    assert torch.allclose(losses["total"], losses["ce"] + losses["triplet"] + losses["center"])
    ce = CrossEntropyLabelSmooth(5, epsilon=cfg.LOSS.LABEL_SMOOTH)(outputs["logits"], pids)
    assert torch.allclose(losses["ce"], 0.7 * ce)
    triplet = TripletLoss(margin=cfg.LOSS.TRIPLET_MARGIN)(outputs["feat"], pids)
    assert torch.allclose(losses["triplet"], 1.5 * triplet)
    center = loss_fn.center_loss(outputs["feat"], pids)
    assert torch.allclose(losses["center"], 0.0005 * center)


def test_build_loss_skips_zero_weights():
    cfg = _loss_cfg()
    cfg.LOSS.TRIPLET_WEIGHT = 0.0
    loss_fn = build_loss(cfg, num_classes=5, feat_dim=8)
    assert loss_fn.triplet_loss is None and loss_fn.center_loss is None
    assert loss_fn.center_parameters() == [] and list(loss_fn.parameters()) == []
    losses = loss_fn(_outputs(4, 5, 8), torch.tensor([0, 1, 2, 3]))
    assert set(losses) == {"ce", "total"}
    assert torch.equal(losses["total"], losses["ce"])


def test_center_step_uses_unweighted_gradient():
    # Bag-of-Tricks: centers get the gradient of the unweighted center loss and an SGD
    # step at CENTER_LR; features get the weighted gradient.
    cfg = _loss_cfg()
    cfg.LOSS.CE_WEIGHT = 0.0
    cfg.LOSS.TRIPLET_WEIGHT = 0.0
    cfg.LOSS.CENTER_WEIGHT = 0.0005
    loss_fn = build_loss(cfg, num_classes=3, feat_dim=4)
    assert loss_fn.center_parameters() == list(loss_fn.parameters())
    optimizer = torch.optim.SGD(loss_fn.parameters(), lr=cfg.SOLVER.CENTER_LR)
    feats = torch.randn(6, 4, requires_grad=True)
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    before = loss_fn.center_loss.centers.detach().clone()
    losses = loss_fn({"feat": feats}, pids)
    losses["total"].backward()

    ref_feats = feats.detach().clone().requires_grad_()
    ref_centers = before.clone().requires_grad_()
    reference = (ref_feats - ref_centers[pids]).pow(2).sum(1).mean()
    reference.backward()
    assert torch.allclose(losses["center"], 0.0005 * reference)
    assert torch.allclose(loss_fn.center_loss.centers.grad, ref_centers.grad, atol=1e-6)
    assert torch.allclose(feats.grad, 0.0005 * ref_feats.grad, atol=1e-9)
    optimizer.step()
    expected = before - cfg.SOLVER.CENTER_LR * ref_centers.grad
    assert torch.allclose(loss_fn.center_loss.centers.detach(), expected, atol=1e-6)


def test_loss_weights_validated():
    with pytest.raises(ReidError, match="all loss weights are 0"):
        ReidLoss(3, 4, ce_weight=0.0, triplet_weight=0.0, center_weight=0.0)
    with pytest.raises(ReidError, match="'triplet'"):
        ReidLoss(3, 4, triplet_weight=-1.0)
