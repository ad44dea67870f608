"""Losses against brute-force loops written from their definitions."""

import math

import pytest
import torch
import torch.nn.functional as F

from reid.config import load_cfg
from reid.errors import ReidError
from reid.losses import (
    ArcFace,
    CenterLoss,
    CircleLoss,
    CosFace,
    CrossEntropy,
    MultiSimilarityLoss,
    ReidLoss,
    TripletLoss,
    build_loss,
)
from reid.solver import build_loss_optimizer, build_optimizer


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


def _brute_force_mined(feats, pids, margin, mining) -> float:
    """Triplet costs by explicit loops over anchors, positives and negatives."""
    rows = [[float(v) for v in row] for row in feats]
    labels = [int(p) for p in pids]

    def d(i: int, j: int) -> float:
        return math.sqrt(
            max(sum((x - y) ** 2 for x, y in zip(rows[i], rows[j], strict=True)), 1e-12)
        )

    def cost(gap: float) -> float:
        return math.log1p(math.exp(gap)) if margin is None else max(0.0, gap + margin)

    gaps = []
    for a in range(len(rows)):
        pos = [j for j in range(len(rows)) if j != a and labels[j] == labels[a]]
        neg = [j for j in range(len(rows)) if labels[j] != labels[a]]
        if not pos or not neg:
            continue
        for p in pos:
            if mining == "semi_hard":
                farther = [d(a, n) for n in neg if d(a, n) > d(a, p)]
                gaps.append(d(a, p) - (min(farther) if farther else min(d(a, n) for n in neg)))
            else:  # all
                gaps.extend(d(a, p) - d(a, n) for n in neg)
    costs = [cost(gap) for gap in gaps]
    if mining == "all" and margin is not None:
        positive = [c for c in costs if c > 0]
        return sum(positive) / max(len(positive), 1)
    return sum(costs) / len(costs)


@pytest.mark.parametrize("mining", ["semi_hard", "all"])
@pytest.mark.parametrize("margin", [0.3, 1.0, None])
@pytest.mark.parametrize("num_ids,num_instances", [(2, 2), (3, 4), (4, 3), (6, 2)])
def test_mining_strategies_match_brute_force(mining, margin, num_ids, num_instances):
    feats, pids = _pk_batch(num_ids, num_instances, dim=5, seed=num_ids * 3 + num_instances)
    feats = feats * 0.3  # some triplets active, some not, at margin 0.3
    expected = _brute_force_mined(feats, pids, margin, mining)
    loss = TripletLoss(margin=margin, mining=mining)(feats, pids)
    assert loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_batch_all_with_no_active_triplet_is_zero():
    feats = torch.tensor([[0.0, 0.0], [0.0, 0.1], [5.0, 0.0], [5.0, 0.1]], requires_grad=True)
    loss = TripletLoss(margin=0.3, mining="all")(feats, torch.tensor([0, 0, 1, 1]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(feats.grad).all()


def test_triplet_diagnostics_on_a_hand_made_batch():
    """Two identities on a line: a0 = 0, a1 = 1; b0 = 1.5, b1 = 4 (1-D features).

    Anchor a0: farthest positive 1, closest negative 1.5 -> ok, gap -0.5
    Anchor a1: positive 1, negative 0.5 -> not ok, gap 0.5
    Anchor b0: positive 2.5, negative 0.5 -> not ok, gap 2.0
    Anchor b1: positive 2.5, negative 3 -> ok, gap -0.5
    """
    feats = torch.tensor([[0.0], [1.0], [1.5], [4.0]], dtype=torch.float64)
    term = TripletLoss(margin=0.3)
    loss = term(feats, torch.tensor([0, 0, 1, 1]))
    assert loss.item() == pytest.approx((0.0 + 0.8 + 2.3 + 0.0) / 4)
    diagnostics = {key: value.item() for key, value in term.diagnostics.items()}
    assert diagnostics == pytest.approx(
        {"anchors_ok": 0.5, "active": 0.5, "d_pos": (1 + 1 + 2.5 + 2.5) / 4,
         "d_neg": (1.5 + 0.5 + 0.5 + 3) / 4}
    )  # fmt: skip
    losses = ReidLoss({"triplet": (term, 1.0)})({"feat": feats}, torch.tensor([0, 0, 1, 1]))
    assert losses["triplet.anchors_ok"].item() == 0.5 and "triplet.active" in losses


def _brute_force_multi_similarity(feats, pids, alpha, beta, lam, eps) -> float:
    rows = [[float(v) for v in row] for row in feats]
    rows = [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in rows]
    labels = [int(p) for p in pids]
    total = 0.0
    for i, anchor in enumerate(rows):
        sims = [sum(x * y for x, y in zip(anchor, other, strict=True)) for other in rows]
        pos = [sims[j] for j in range(len(rows)) if j != i and labels[j] == labels[i]]
        neg = [sims[j] for j in range(len(rows)) if labels[j] != labels[i]]
        kept_pos = [s for s in pos if neg and s < max(neg) + eps]
        kept_neg = [s for s in neg if pos and s > min(pos) - eps]
        total += math.log(1 + sum(math.exp(-alpha * (s - lam)) for s in kept_pos)) / alpha
        total += math.log(1 + sum(math.exp(beta * (s - lam)) for s in kept_neg)) / beta
    return total / len(rows)


@pytest.mark.parametrize("num_ids,num_instances", [(2, 2), (3, 4), (5, 3)])
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_multi_similarity_matches_brute_force(num_ids, num_instances, eps):
    feats, pids = _pk_batch(num_ids, num_instances, dim=4, seed=num_ids * 5 + num_instances)
    expected = _brute_force_multi_similarity(feats, pids, 2.0, 10.0, 0.5, eps)
    loss = MultiSimilarityLoss(alpha=2.0, beta=10.0, threshold=0.5, epsilon=eps)(feats, pids)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_label_smoothed_cross_entropy_matches_loop():
    """F.cross_entropy(label_smoothing=) is the Bag-of-Tricks loss, written as a loop."""
    gen = torch.Generator().manual_seed(0)
    num_classes = 7
    logits = torch.randn(5, num_classes, generator=gen, dtype=torch.float64)
    pids = torch.tensor([0, 3, 6, 3, 1])
    for eps in (0.0, 0.1, 0.3):
        expected = 0.0
        for row, label in zip(logits.tolist(), pids.tolist(), strict=True):
            log_z = math.log(sum(math.exp(v) for v in row))
            for k, v in enumerate(row):
                target = (1 - eps) * (k == label) + eps / num_classes
                expected -= target * (v - log_z)
        expected /= len(pids)
        assert CrossEntropy(epsilon=eps)(logits, pids).item() == pytest.approx(expected, abs=1e-12)


def _brute_force_circle(feats, pids, margin, scale) -> float:
    rows = [[float(v) for v in row] for row in feats]
    rows = [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in rows]
    labels = [int(p) for p in pids]
    losses = []
    for a, anchor in enumerate(rows):
        pos_sum = neg_sum = 0.0
        has_pos = has_neg = False
        for j, other in enumerate(rows):
            if j == a:
                continue
            s = sum(x * y for x, y in zip(anchor, other, strict=True))
            if labels[j] == labels[a]:
                has_pos = True
                pos_sum += math.exp(-scale * max(1 + margin - s, 0.0) * (s - (1 - margin)))
            else:
                has_neg = True
                neg_sum += math.exp(scale * max(s + margin, 0.0) * (s - margin))
        if has_pos and has_neg:
            losses.append(math.log(1 + neg_sum * pos_sum))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("num_ids,num_instances", [(2, 2), (3, 4), (5, 2)])
@pytest.mark.parametrize("scale", [1.0, 16.0])
def test_circle_matches_brute_force(num_ids, num_instances, scale):
    feats, pids = _pk_batch(num_ids, num_instances, dim=6, seed=num_ids + 7 * num_instances)
    expected = _brute_force_circle(feats, pids, margin=0.25, scale=scale)
    loss = CircleLoss(margin=0.25, scale=scale)(feats, pids)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    feats.requires_grad_(True)
    CircleLoss(margin=0.25, scale=128.0)(feats, pids).backward()
    assert torch.isfinite(feats.grad).all()


def _brute_force_margin_ce(cosines, pids, scale, target_logit) -> float:
    total = 0.0
    for row, label in zip(cosines, pids, strict=True):
        logits = [scale * (target_logit(c) if k == label else c) for k, c in enumerate(row)]
        log_z = math.log(sum(math.exp(v) for v in logits))
        total += log_z - logits[label]
    return total / len(pids)


@pytest.mark.parametrize("kind", ["cosface", "arcface"])
def test_margin_classifiers_match_brute_force(kind):
    torch.manual_seed(0)
    num_classes, dim, margin, scale = 5, 4, 0.4, 8.0
    term = (CosFace if kind == "cosface" else ArcFace)(num_classes, dim, margin, scale).double()
    feats = torch.randn(12, dim, dtype=torch.float64)
    pids = torch.randint(0, num_classes, (12,))
    # The last rows' features point away from their class: ArcFace's fallback branch.
    with torch.no_grad():
        feats[-3:] = -term.weight[pids[-3:]]
    weight = term.weight.detach().tolist()
    cosines = []
    for row in feats.tolist():
        norm = math.sqrt(sum(v * v for v in row))
        cosines.append([
            sum(x * w for x, w in zip(row, wrow, strict=True))
            / (norm * math.sqrt(sum(w * w for w in wrow)))
            for wrow in weight
        ])  # fmt: skip

    def target(cos: float) -> float:
        if kind == "cosface":
            return cos - margin
        theta = math.acos(max(-1.0, min(1.0, cos)))
        if cos > math.cos(math.pi - margin):
            return math.cos(theta + margin)
        return cos - math.sin(margin) * margin

    expected = _brute_force_margin_ce(cosines, pids.tolist(), scale, target)
    assert term(feats, pids).item() == pytest.approx(expected, rel=1e-9)
    assert term.input == "neck_feat" and term.own_lr is None


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


def _outputs(batch: int, num_classes: int, dim: int) -> dict:
    gen = torch.Generator().manual_seed(3)
    feat = torch.randn(batch, dim, generator=gen, requires_grad=True)
    return {
        "logits": torch.randn(batch, num_classes, generator=gen, requires_grad=True),
        "feat": feat,
        "neck_feat": feat * 2.0,
    }


def _old_reid_loss(outputs, pids, ce_w, triplet_w, center_w, centers) -> torch.Tensor:
    """The loss of earlier versions, term by term as it was written: a hand-written
    label-smoothed cross-entropy, batch-hard triplet, center loss, weighted."""
    log_probs = F.log_softmax(outputs["logits"], dim=1)
    num_classes = log_probs.shape[1]
    targets = 0.9 * F.one_hot(pids, num_classes) + 0.1 / num_classes
    ce = (-targets * log_probs).sum(dim=1).mean()
    triplet = TripletLoss(margin=0.3)(outputs["feat"], pids)
    center = (outputs["feat"] - centers[pids]).pow(2).sum(dim=1).clamp(1e-12, 1e12).mean()
    return ce_w * ce + triplet_w * triplet + center_w * center


def test_loss_terms_reproduce_the_old_ce_triplet_center_loss():
    """Both the new keys and the old ones (read through the migration) give it."""
    new = ["LOSS.NAMES", "[cross_entropy, triplet, center]", "LOSS.WEIGHTS", "[0.7, 1.5, 5e-4]"]
    old = ["LOSS.CE_WEIGHT", "0.7", "LOSS.TRIPLET_WEIGHT", "1.5", "LOSS.CENTER_WEIGHT", "5e-4"]
    pids = torch.arange(5).repeat_interleave(2)
    for opts in (new, old):
        cfg = load_cfg(opts=opts)
        assert cfg.LOSS.NAMES == ["cross_entropy", "triplet", "center"]
        loss_fn = build_loss(cfg, num_classes=5, feat_dim=8)
        outputs = _outputs(10, 5, 8)
        losses = loss_fn(outputs, pids)
        terms = {name for name in losses if "." not in name}  # the rest are diagnostics
        assert terms == {"cross_entropy", "triplet", "center", "total"}
        centers = loss_fn.terms["center"].centers
        reference = _old_reid_loss(outputs, pids, 0.7, 1.5, 5e-4, centers)
        torch.testing.assert_close(losses["total"], reference, rtol=1e-6, atol=0)


def test_the_default_loss_is_bag_of_tricks():
    loss_fn = build_loss(load_cfg(), num_classes=5, feat_dim=8)
    assert list(loss_fn.terms) == ["cross_entropy", "triplet"]
    outputs = _outputs(10, 5, 8)
    pids = torch.arange(5).repeat_interleave(2)
    reference = _old_reid_loss(outputs, pids, 1.0, 1.0, 0.0, torch.zeros(5, 8))
    torch.testing.assert_close(loss_fn(outputs, pids)["total"], reference, rtol=1e-6, atol=0)


def test_unused_outputs_get_a_zero_gradient():
    """DDP needs a gradient for every parameter: a triplet-only loss still reaches the
    classifier, with zeros."""
    cfg = load_cfg(opts=["LOSS.NAMES", "[triplet]", "LOSS.WEIGHTS", "[1.0]"])
    outputs = _outputs(10, 5, 8)
    build_loss(cfg, num_classes=5, feat_dim=8)(outputs, torch.arange(5).repeat_interleave(2))[
        "total"
    ].backward()
    assert torch.equal(outputs["logits"].grad, torch.zeros_like(outputs["logits"]))


def test_each_term_trains_with_the_optimizer_it_declares():
    cfg = load_cfg(opts=["LOSS.NAMES", "[cosface, center]", "LOSS.WEIGHTS", "[1.0, 0.01]"])
    model = torch.nn.Linear(8, 8)
    loss_fn = build_loss(cfg, num_classes=5, feat_dim=8)
    model_optimizer = build_optimizer(cfg, model, loss_fn)
    stepped = {id(p) for group in model_optimizer.param_groups for p in group["params"]}
    assert id(loss_fn.terms["cosface"].weight) in stepped
    assert id(loss_fn.terms["center"].centers) not in stepped
    center_optimizer = build_loss_optimizer(loss_fn)
    assert isinstance(center_optimizer, torch.optim.SGD)
    (group,) = center_optimizer.param_groups
    assert group["params"] == [loss_fn.terms["center"].centers]
    assert group["lr"] == cfg.SOLVER.CENTER_LR and group["momentum"] == 0


def test_unknown_loss_name_lists_the_registered_ones():
    cfg = load_cfg(opts=["LOSS.NAMES", "[softmax]", "LOSS.WEIGHTS", "[1.0]"])
    with pytest.raises(ReidError, match="unknown loss 'softmax'; available: arcface, center"):
        build_loss(cfg, num_classes=5, feat_dim=8)


def test_center_step_uses_unweighted_gradient():
    # Bag-of-Tricks: centers get the gradient of the unweighted center loss and an SGD
    # step at CENTER_LR; features get the weighted gradient.
    cfg = load_cfg(opts=["LOSS.NAMES", "[center]", "LOSS.WEIGHTS", "[0.0005]"])
    loss_fn = build_loss(cfg, num_classes=3, feat_dim=4)
    optimizer = build_loss_optimizer(loss_fn)
    centers = loss_fn.terms["center"].centers
    feats = torch.randn(6, 4, requires_grad=True)
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    before = centers.detach().clone()
    losses = loss_fn({"feat": feats}, pids)
    losses["total"].backward()

    ref_feats = feats.detach().clone().requires_grad_()
    ref_centers = before.clone().requires_grad_()
    reference = (ref_feats - ref_centers[pids]).pow(2).sum(1).mean()
    reference.backward()
    assert torch.allclose(losses["center"], 0.0005 * reference)
    assert torch.allclose(centers.grad, ref_centers.grad, atol=1e-6)
    assert torch.allclose(feats.grad, 0.0005 * ref_feats.grad, atol=1e-9)
    optimizer.step()
    expected = before - cfg.SOLVER.CENTER_LR * ref_centers.grad
    assert torch.allclose(centers.detach(), expected, atol=1e-6)


def test_loss_weights_validated():
    with pytest.raises(ReidError, match="all loss weights are 0"):
        ReidLoss({"triplet": (TripletLoss(), 0.0)})
    with pytest.raises(ReidError, match="'triplet'"):
        ReidLoss({"triplet": (TripletLoss(), -1.0)})
