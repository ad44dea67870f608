"""Losses against brute-force loops written from their definitions."""

import math

import pytest
import torch
import torch.nn.functional as F

from reid.config import load_cfg
from reid.errors import ReidError
from reid.losses import (
    LOSSES,
    ArcFace,
    CenterLoss,
    CircleLoss,
    CosFace,
    CrossEntropy,
    MultiSimilarityLoss,
    ReidLoss,
    TripletLoss,
    build_loss,
    float32_forward,
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
    """Triplet costs by explicit loops over anchors, positives and negatives.

    Semi-hard as FaceNet / TensorFlow's ``triplet_semihard_loss`` define it: for each
    anchor-positive pair, the closest negative farther than the positive, and when no
    negative is farther, the farthest negative of the anchor.
    """
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
                gaps.append(d(a, p) - (min(farther) if farther else max(d(a, n) for n in neg)))
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


def _pairs_without_farther_negative(feats, pids) -> int:
    """Anchor-positive pairs whose every negative is at most as far as the positive."""
    rows, labels = feats.tolist(), pids.tolist()
    count = 0
    for a, anchor in enumerate(rows):
        dists = [math.dist(anchor, other) for other in rows]
        neg = [dists[n] for n in range(len(rows)) if labels[n] != labels[a]]
        for p in range(len(rows)):
            if p != a and labels[p] == labels[a] and neg and max(neg) <= dists[p]:
                count += 1
    return count


# Two identities on a line, a0 = 0, a1 = 1 and b0 = 1.5, b1 = 4. The semi-hard triplets:
#   (a0, a1): negatives at 1.5 and 4, both beyond 1: the closer, b0; gap 1 - 1.5 = -0.5
#   (a1, a0): negatives at 0.5 and 3; only b1 is beyond 1; gap 1 - 3 = -2
#   (b0, b1): negatives at 1.5 and 0.5, none beyond 2.5: the farthest, a0; gap 2.5 - 1.5 = 1
#             (the closest negative, a1, would give 2.0: the old fallback)
#   (b1, b0): negatives at 4 and 3, both beyond 2.5: the closer, a1; gap 2.5 - 3 = -0.5
# Each gap as a function of the coordinates x = (a0, a1, b0, b1), and its derivative:
#   a1 - b0 -> (0, 1, -1, 0); 2 a1 - a0 - b1 -> (-1, 2, 0, -1);
#   b1 - 2 b0 + a0 -> (1, 0, -2, 1); a1 - b0 -> (0, 1, -1, 0).
_LINE_FEATS = [[0.0], [1.0], [1.5], [4.0]]
_LINE_GAPS = [-0.5, -2.0, 1.0, -0.5]
_LINE_GAP_GRADS = [[0, 1, -1, 0], [-1, 2, 0, -1], [1, 0, -2, 1], [0, 1, -1, 0]]


@pytest.mark.parametrize("margin", [0.3, None])
def test_semi_hard_falls_back_to_the_farthest_negative_by_hand(margin):
    feats = torch.tensor(_LINE_FEATS, dtype=torch.float64, requires_grad=True)
    pids = torch.tensor([0, 0, 1, 1])
    assert _pairs_without_farther_negative(feats.detach(), pids) == 1
    term = TripletLoss(margin=margin, mining="semi_hard")
    loss = term(feats, pids)
    loss.backward()
    if margin is None:
        costs = [math.log1p(math.exp(gap)) for gap in _LINE_GAPS]
        slopes = [1 / (1 + math.exp(-gap)) for gap in _LINE_GAPS]  # softplus' = sigmoid
    else:
        costs = [max(0.0, gap + margin) for gap in _LINE_GAPS]
        slopes = [float(gap + margin > 0) for gap in _LINE_GAPS]
    expected_grad = [
        sum(slope * grads[i] for slope, grads in zip(slopes, _LINE_GAP_GRADS, strict=True)) / 4
        for i in range(4)
    ]
    assert loss.item() == pytest.approx(sum(costs) / 4, abs=1e-12)
    assert feats.grad.flatten().tolist() == pytest.approx(expected_grad, abs=1e-12)
    if margin is not None:
        assert loss.item() == pytest.approx(1.3 / 4)  # the old fallback gave 2.3 / 4
    # Diagnostics: the batch-hard distances, and the share of the mined pairs that
    # violate the margin (with the soft margin, d_ap > d_an): one of four either way.
    diagnostics = {key: value.item() for key, value in term.diagnostics.items()}
    assert diagnostics == pytest.approx(
        {"anchors_ok": 0.5, "active": 0.25, "d_pos": (1 + 1 + 2.5 + 2.5) / 4,
         "d_neg": (1.5 + 0.5 + 0.5 + 3) / 4}
    )  # fmt: skip


def _finite_difference_grad(loss_of_rows, feats, step: float = 1e-6) -> torch.Tensor:
    """Central differences of a function of the rows, one coordinate at a time."""
    grad = torch.zeros_like(feats)
    for i in range(feats.shape[0]):
        for j in range(feats.shape[1]):
            up, down = feats.clone(), feats.clone()
            up[i, j] += step
            down[i, j] -= step
            grad[i, j] = (loss_of_rows(up) - loss_of_rows(down)) / (2 * step)
    return grad


@pytest.mark.parametrize("margin", [0.3, None])
@pytest.mark.parametrize("seed", [0, 1])
def test_semi_hard_gradient_matches_brute_force(margin, seed):
    """Many pairs without a farther negative (wide identities): the autograd gradient
    equals the numerical gradient of the brute-force loop."""
    gen = torch.Generator().manual_seed(seed)
    pids = torch.arange(3).repeat_interleave(4)
    feats = 0.2 * torch.randn(3, 3, generator=gen, dtype=torch.float64)[pids]
    feats = feats + torch.randn(12, 3, generator=gen, dtype=torch.float64)
    assert _pairs_without_farther_negative(feats, pids) >= 3
    feats.requires_grad_()
    TripletLoss(margin=margin, mining="semi_hard")(feats, pids).backward()
    numerical = _finite_difference_grad(
        lambda rows: _brute_force_mined(rows, pids, margin, "semi_hard"), feats.detach()
    )
    torch.testing.assert_close(feats.grad, numerical, rtol=1e-5, atol=1e-7)


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
        terms = {name for name in losses if "." not in name} - {"acc"}  # and diagnostics
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


# --- mixed precision -------------------------------------------------------------------


def _training_outputs(num_ids: int, num_instances: int, dim: int) -> tuple[dict, torch.Tensor]:
    """A P x K batch with identity structure, float32, as a model's training output:
    non-negative pooled ``feat``, standardised ``neck_feat``, classifier ``logits``."""
    gen = torch.Generator().manual_seed(0)
    pids = torch.arange(num_ids).repeat_interleave(num_instances)
    feat = (
        (0.3 * torch.randn(num_ids, dim, generator=gen)[pids])
        .add(torch.randn(len(pids), dim, generator=gen))
        .relu()
    )
    neck_feat = (feat - feat.mean(0)) / feat.std(0)
    logits = neck_feat @ torch.randn(dim, num_ids, generator=gen) / dim**0.5 * 4.0
    return {"feat": feat, "neck_feat": neck_feat, "logits": logits}, pids


def _value_and_grads(term, inputs, pids, autocast: bool) -> tuple:
    term.zero_grad(set_to_none=True)
    x = inputs.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        value = term(x, pids)
    value.backward()
    return value, x.grad, [param.grad.clone() for param in term.parameters()]


def _assert_relative(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    error = (actual.double() - expected.double()).norm() / expected.double().norm().clamp(min=1e-30)
    assert error.item() <= rel, f"relative difference {error.item():.2e} > {rel}"


@pytest.mark.parametrize(
    "name,mining",
    [(name, "hard") for name in LOSSES.names()] + [("triplet", "semi_hard"), ("triplet", "all")],
)
def test_every_term_computes_in_float32_under_autocast(name, mining):
    """bf16 autocast (as SOLVER.AMP on a GPU) changes neither value nor gradients:
    distances, cosines and margin logits are computed in float32."""
    num_ids, dim = 8, 256
    cfg = load_cfg(opts=["LOSS.TRIPLET_MINING", mining])
    torch.manual_seed(0)
    term = LOSSES.get(name)(cfg, num_ids, dim, 1.0)
    outputs, pids = _training_outputs(num_ids, 4, dim)
    inputs = outputs[term.input]
    value, grad, param_grads = _value_and_grads(term, inputs, pids, autocast=False)
    assert value.item() > 0  # a batch that trains the term
    amp_value, amp_grad, amp_param_grads = _value_and_grads(term, inputs, pids, autocast=True)
    _assert_relative(amp_value, value, 1e-5)
    _assert_relative(amp_grad, grad, 1e-5)
    for amp_param_grad, param_grad in zip(amp_param_grads, param_grads, strict=True):
        _assert_relative(amp_param_grad, param_grad, 1e-5)
    assert amp_value.dtype == torch.float32


@pytest.mark.parametrize("name", LOSSES.names())
def test_half_precision_inputs_are_upcast(name):
    """Under autocast a backbone hands over bf16 features; the term computes on them in
    float32 and returns the gradient in their dtype."""
    num_ids, dim = 4, 64
    torch.manual_seed(0)
    term = LOSSES.get(name)(load_cfg(), num_ids, dim, 1.0)
    outputs, pids = _training_outputs(num_ids, 4, dim)
    half = outputs[term.input].bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = term(half, pids)
    value.backward()
    assert value.dtype == torch.float32 and half.grad.dtype == torch.bfloat16
    assert value.item() == term(half.detach().float(), pids).item()


def test_float32_forward_leaves_float64_alone():
    seen = []

    @float32_forward
    def probe(x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        seen.extend([x.dtype, y.dtype, torch.is_autocast_enabled("cpu")])
        return x.sum() * scale

    with torch.autocast("cpu", dtype=torch.bfloat16):
        probe(torch.ones(2, dtype=torch.float64), y=torch.ones(2, dtype=torch.float16))
    assert seen == [torch.float64, torch.float32, False]


# --- logged accuracy -------------------------------------------------------------------


def _hand_accuracy(scores: list[list[float]], labels: list[int]) -> float:
    """Share of rows whose largest score is the label's."""
    right = 0
    for row, label in zip(scores, labels, strict=True):
        right += max(range(len(row)), key=row.__getitem__) == label
    return right / len(labels)


def _cosine_rows(feats: list[list[float]], weight: list[list[float]]) -> list[list[float]]:
    def norm(v: list[float]) -> float:
        return math.sqrt(sum(x * x for x in v))

    return [
        [sum(x * w for x, w in zip(f, wr, strict=True)) / (norm(f) * norm(wr)) for wr in weight]
        for f in feats
    ]


def _accuracy_outputs(loss_fn: ReidLoss, num_ids: int, dim: int) -> tuple[dict, torch.Tensor]:
    """Logits right on the first 4 of 12 rows; neck features that the margin classifier
    (if any) gets right on the first 9, the BNNeck logits being wrong there."""
    gen = torch.Generator().manual_seed(5)
    pids = torch.arange(num_ids).repeat_interleave(12 // num_ids)
    predicted = torch.where(torch.arange(12) < 4, pids, (pids + 1) % num_ids)
    logits = 0.1 * torch.randn(12, num_ids, generator=gen) + 3.0 * F.one_hot(predicted, num_ids)
    margin_terms = [t for t in loss_fn.terms.values() if hasattr(t, "weight")]
    weight = margin_terms[0].weight.detach() if margin_terms else torch.randn(num_ids, dim)
    sign = torch.where(torch.arange(12) < 9, 1.0, -1.0).unsqueeze(1)
    neck_feat = sign * weight[pids] + 0.01 * torch.randn(12, dim, generator=gen)
    feat = torch.randn(12, dim, generator=gen)
    return {"logits": logits, "feat": feat, "neck_feat": neck_feat}, pids


@pytest.mark.parametrize(
    "names,weights,expected_acc,other",
    [
        ("[cross_entropy, triplet]", "[1.0, 1.0]", "cross_entropy", None),
        ("[arcface, triplet]", "[1.0, 1.0]", "arcface", None),
        ("[cosface]", "[1.0]", "cosface", None),
        ("[triplet]", "[1.0]", None, None),
        ("[cosface, cross_entropy]", "[1.0, 1.0]", "cosface", "cross_entropy"),
        ("[cross_entropy, triplet, arcface]", "[0.0, 1.0, 1.0]", "arcface", None),
    ],
)
def test_logged_accuracy_is_the_classifying_terms(names, weights, expected_acc, other):
    """``"acc"`` is the accuracy of the first term (in LOSS.NAMES) that classifies: the
    argmax of the logits for cross-entropy, of the cosines without margin for CosFace
    and ArcFace; none without such a term; the others' as ``"<term>.acc"``."""
    num_ids, dim = 6, 8
    cfg = load_cfg(opts=["LOSS.NAMES", names, "LOSS.WEIGHTS", weights])
    torch.manual_seed(0)
    loss_fn = build_loss(cfg, num_classes=num_ids, feat_dim=dim)
    outputs, pids = _accuracy_outputs(loss_fn, num_ids, dim)
    labels = pids.tolist()
    by_hand = {"cross_entropy": _hand_accuracy(outputs["logits"].tolist(), labels)}
    for name in ("arcface", "cosface"):
        if name in loss_fn.terms:
            weight = loss_fn.terms[name].weight.tolist()
            by_hand[name] = _hand_accuracy(
                _cosine_rows(outputs["neck_feat"].tolist(), weight), labels
            )
    assert by_hand["cross_entropy"] == pytest.approx(4 / 12)
    assert by_hand.get("arcface", 0.75) == by_hand.get("cosface", 0.75) == pytest.approx(0.75)

    losses = loss_fn(outputs, pids)
    if expected_acc is None:
        assert "acc" not in losses and not any(key.endswith(".acc") for key in losses)
        return
    acc = losses["acc"]
    assert acc.dim() == 0 and not acc.requires_grad
    assert acc.item() == pytest.approx(by_hand[expected_acc])
    assert f"{expected_acc}.acc" not in losses  # once, as "acc"
    extra = {key for key in losses if key.endswith(".acc")}
    assert extra == ({f"{other}.acc"} if other else set())
    if other:
        assert losses[f"{other}.acc"].item() == pytest.approx(by_hand[other])
