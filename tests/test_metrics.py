"""Tests for reid.evaluation.metrics: hand-computed cases and a brute-force reference."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from reid.errors import InputError
from reid.evaluation.metrics import check_gallery_matches, evaluate_rank
from reid.protocol import correct_matches, ignored

# ---------------------------------------------------------------------------
# Brute-force reference, written from the definitions


def reference_rank(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int,
) -> tuple[np.ndarray, float, float, float]:
    """Per-query loop: stable argsort, filter, walk down the list.

    Returns:
        ``(cmc, mAP standard, mAP official, mINP)`` over the valid queries.
    """
    cmcs, ap_std, ap_off, inps = [], [], [], []
    for q in range(distmat.shape[0]):
        matches = []
        for k in np.argsort(distmat[q], kind="stable"):
            if g_pids[k] == -1:
                continue
            if g_pids[k] == q_pids[q] and g_camids[k] == q_camids[q]:
                continue
            matches.append(bool(g_pids[k] == q_pids[q]))
        if not any(matches):
            continue
        hits, std, off, first, last = 0, 0.0, 0.0, None, None
        for rank, is_match in enumerate(matches, start=1):
            if not is_match:
                continue
            hits += 1
            precision = hits / rank
            before = (hits - 1) / (rank - 1) if rank > 1 else 1.0
            std += precision
            off += (precision + before) / 2
            first = rank if first is None else first
            last = rank
        cmcs.append([1.0 if first <= k else 0.0 for k in range(1, max_rank + 1)])
        ap_std.append(std / hits)
        ap_off.append(off / hits)
        inps.append(hits / last)
    return (
        np.mean(cmcs, axis=0),
        float(np.mean(ap_std)),
        float(np.mean(ap_off)),
        float(np.mean(inps)),
    )


def market_like_problem(
    seed: int,
    num_query: int = 40,
    num_gallery: int = 300,
    num_ids: int = 30,
    num_cams: int = 4,
    levels: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random labels with distractors (0) and junk (-1); ``levels`` rounds distances to force ties.

    Returns:
        ``(distmat (num_query, num_gallery) float32, q_pids, g_pids, q_camids, g_camids)``.
    """
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, num_ids + 1, num_query)
    q_camids = rng.integers(0, num_cams, num_query)
    g_pids = rng.integers(1, num_ids + 1, num_gallery)
    g_camids = rng.integers(0, num_cams, num_gallery)
    kind = rng.random(num_gallery)
    g_pids[kind < 0.15] = 0
    g_pids[kind > 0.9] = -1
    distmat = rng.random((num_query, num_gallery)).astype(np.float32)
    if levels is not None:
        distmat = np.round(distmat * levels) / levels
    return distmat, q_pids, g_pids, q_camids, g_camids


# ---------------------------------------------------------------------------
# Hand-computed case
#
# Query 0: pid 1, cam 0. Gallery, with the query-0 distance:
#   g0 pid 1 cam 1 d .30  correct match
#   g1 pid 2 cam 1 d .10  wrong
#   g2 pid 1 cam 0 d .05  same pid + same camera -> removed
#   g3 pid -1 cam 2 d .20 junk -> removed
#   g4 pid 0 cam 1 d .25  distractor -> stays, wrong
#   g5 pid 1 cam 2 d .60  correct match
#   g6 pid 3 cam 2 d .40  wrong
#   g7 pid 3 cam 0 d .90  wrong
# Filtered ranking: g1 (1) g4 (2) g0* (3) g6 (4) g5* (5) g7 (6): hits at ranks 3 and 5.
#   standard AP = (1/3 + 2/5) / 2 = 11/30
#   official AP = ((1/3 + 0/2)/2 + (2/5 + 1/4)/2) / 2 = (40/240 + 78/240) / 2 = 59/240
#   INP = 2/5; first hit at rank 3.
# Query 1: pid 3, cam 2. g3 (junk, .01) and g6 (same cam, .02) are removed, so g7 (.03)
#   is rank 1: both APs = 1, INP = 1.
# Query 2: pid 4 is absent from the gallery -> skipped.
# Over the 2 valid queries: CMC = [.5, .5, 1, 1, ...], mAP = (11/30 + 1)/2 = 41/60,
# official mAP = (59/240 + 1)/2 = 299/480, mINP = (2/5 + 1)/2 = 7/10.

HAND_G_PIDS = np.array([1, 2, 1, -1, 0, 1, 3, 3])
HAND_G_CAMS = np.array([1, 1, 0, 2, 1, 2, 2, 0])
HAND_Q_PIDS = np.array([1, 3, 4])
HAND_Q_CAMS = np.array([0, 2, 0])
HAND_DIST = np.array(
    [
        [0.30, 0.10, 0.05, 0.20, 0.25, 0.60, 0.40, 0.90],
        [0.50, 0.60, 0.70, 0.01, 0.80, 0.90, 0.02, 0.03],
        [0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80],
    ],
    dtype=np.float32,
)


def hand_inputs() -> tuple[np.ndarray, ...]:
    return HAND_DIST, HAND_Q_PIDS, HAND_G_PIDS, HAND_Q_CAMS, HAND_G_CAMS


def test_hand_case_standard(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="reid.evaluation.metrics"):
        cmc, mean_ap, minp = evaluate_rank(*hand_inputs(), max_rank=10)
    # max_rank 10 exceeds the 6 items left per query: the curve stays at 1.
    np.testing.assert_allclose(cmc, [0.5, 0.5] + [1.0] * 8)
    assert cmc.shape == (10,) and cmc.dtype == np.float64
    assert mean_ap == pytest.approx(41 / 60, abs=1e-12)
    assert minp == pytest.approx(7 / 10, abs=1e-12)
    assert isinstance(mean_ap, float) and isinstance(minp, float)
    assert "1 of 3 queries" in caplog.text


def test_hand_case_official() -> None:
    cmc, mean_ap, minp = evaluate_rank(*hand_inputs(), max_rank=3, ap="official")
    np.testing.assert_allclose(cmc, [0.5, 0.5, 1.0])
    assert mean_ap == pytest.approx(299 / 480, abs=1e-12)
    assert minp == pytest.approx(7 / 10, abs=1e-12)


def test_hand_case_per_query_values() -> None:
    dist, q_pids, g_pids, q_cams, g_cams = hand_inputs()
    _, ap0, inp0 = evaluate_rank(dist[:1], q_pids[:1], g_pids, q_cams[:1], g_cams, max_rank=5)
    _, off0, _ = evaluate_rank(dist[:1], q_pids[:1], g_pids, q_cams[:1], g_cams, ap="official")
    assert ap0 == pytest.approx(11 / 30, abs=1e-12)
    assert off0 == pytest.approx(59 / 240, abs=1e-12)
    assert inp0 == pytest.approx(2 / 5, abs=1e-12)


def test_distractor_counts_as_negative() -> None:
    # Relabelling the distractor g4 as junk removes it: query 0 hits move to ranks 2 and 4.
    dist, q_pids, g_pids, q_cams, g_cams = hand_inputs()
    g_pids = g_pids.copy()
    g_pids[4] = -1
    _, mean_ap, _ = evaluate_rank(dist[:1], q_pids[:1], g_pids, q_cams[:1], g_cams)
    assert mean_ap == pytest.approx((1 / 2 + 2 / 4) / 2, abs=1e-12)


def test_ties_follow_gallery_order() -> None:
    # Both items at distance .5: the earlier gallery item ranks first.
    q_pids, q_cams, g_cams = np.array([1]), np.array([0]), np.array([1, 1])
    dist = np.array([[0.5, 0.5]])
    cmc, mean_ap, _ = evaluate_rank(dist, q_pids, np.array([2, 1]), q_cams, g_cams, max_rank=2)
    np.testing.assert_allclose(cmc, [0.0, 1.0])
    assert mean_ap == pytest.approx(0.5)
    cmc, mean_ap, _ = evaluate_rank(dist, q_pids, np.array([1, 2]), q_cams, g_cams, max_rank=2)
    np.testing.assert_allclose(cmc, [1.0, 1.0])
    assert mean_ap == pytest.approx(1.0)


def test_official_ap_single_late_hit() -> None:
    # One hit at rank 2: standard 1/2, official (1/2 + 0/1) / 2 = 1/4.
    args = (np.array([[0.1, 0.2]]), np.array([1]), np.array([2, 1]), np.array([0]), np.ones(2))
    assert evaluate_rank(*args)[1] == pytest.approx(0.5)
    assert evaluate_rank(*args, ap="official")[1] == pytest.approx(0.25)


def test_junk_query_pid_is_skipped() -> None:
    dist, q_pids, g_pids, q_cams, g_cams = hand_inputs()
    q_pids = np.array([1, 3, -1])
    cmc, _, _ = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=3)
    np.testing.assert_allclose(cmc, [0.5, 0.5, 1.0])


# ---------------------------------------------------------------------------
# Agreement with the brute-force reference


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("levels", [None, 4, 25])
def test_matches_reference(seed: int, levels: int | None) -> None:
    problem = market_like_problem(seed, levels=levels)
    ref_cmc, ref_std, ref_off, ref_inp = reference_rank(*problem, max_rank=50)
    # Small chunks so that several chunks and both threads are exercised.
    cmc, mean_ap, minp = evaluate_rank(*problem, max_rank=50, chunk_size=7, num_workers=2)
    np.testing.assert_allclose(cmc, ref_cmc, rtol=0, atol=1e-12)
    assert mean_ap == pytest.approx(ref_std, abs=1e-9)
    assert minp == pytest.approx(ref_inp, abs=1e-9)
    _, official, minp_off = evaluate_rank(*problem, max_rank=50, ap="official", chunk_size=7)
    assert official == pytest.approx(ref_off, abs=1e-9)
    assert minp_off == minp


def trapezoid_ap(matches: list[bool]) -> float:
    """Area under the precision-recall curve, trapezoid rule, stepping one rank at a time.

    This is how the official Market-1501 MATLAB evaluation integrates AP: the curve
    starts at (recall 0, precision 1) and every rank adds a trapezoid, which has
    zero width unless the rank is a hit.
    """
    num_rel = sum(matches)
    area, hits, last_recall, last_precision = 0.0, 0, 0.0, 1.0
    for rank, is_match in enumerate(matches, start=1):
        hits += is_match
        recall, precision = hits / num_rel, hits / rank
        area += (recall - last_recall) * (last_precision + precision) / 2
        last_recall, last_precision = recall, precision
    return area


@pytest.mark.parametrize("seed", range(3))
def test_official_ap_is_trapezoid_integration(seed: int) -> None:
    dist, q_pids, g_pids, q_cams, g_cams = market_like_problem(seed, levels=30)
    aps = []
    for q in range(dist.shape[0]):
        ranked = np.argsort(dist[q], kind="stable")
        keep = (g_pids[ranked] != -1) & ~(
            (g_pids[ranked] == q_pids[q]) & (g_cams[ranked] == q_cams[q])
        )
        matches = list(g_pids[ranked][keep] == q_pids[q])
        if any(matches):
            aps.append(trapezoid_ap(matches))
    official = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, ap="official")[1]
    assert official == pytest.approx(np.mean(aps), abs=1e-9)


def test_matches_reference_all_equal_and_infinite_distances() -> None:
    dist, q_pids, g_pids, q_cams, g_cams = market_like_problem(3, num_query=12, num_gallery=80)
    for fill in (0.0, np.inf):
        dist_tied = np.full_like(dist, fill)
        dist_tied[:, ::3] = 1.0  # two values, one of them shared by most items
        ref_cmc, ref_std, ref_off, ref_inp = reference_rank(
            dist_tied, q_pids, g_pids, q_cams, g_cams, max_rank=20
        )
        cmc, mean_ap, minp = evaluate_rank(dist_tied, q_pids, g_pids, q_cams, g_cams, max_rank=20)
        np.testing.assert_allclose(cmc, ref_cmc, atol=1e-12)
        assert mean_ap == pytest.approx(ref_std, abs=1e-9)
        assert minp == pytest.approx(ref_inp, abs=1e-9)
        official = evaluate_rank(dist_tied, q_pids, g_pids, q_cams, g_cams, ap="official")[1]
        assert official == pytest.approx(ref_off, abs=1e-9)


def test_matches_reference_without_junk_and_float64() -> None:
    dist, q_pids, g_pids, q_cams, g_cams = market_like_problem(11, levels=10)
    g_pids = np.where(g_pids == -1, 0, g_pids)
    dist = dist.astype(np.float64) + 1e-12 * np.arange(dist.shape[1])
    ref_cmc, ref_std, _, ref_inp = reference_rank(dist, q_pids, g_pids, q_cams, g_cams, 50)
    cmc, mean_ap, minp = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, chunk_size=5)
    np.testing.assert_allclose(cmc, ref_cmc, atol=1e-12)
    assert mean_ap == pytest.approx(ref_std, abs=1e-9)
    assert minp == pytest.approx(ref_inp, abs=1e-9)


def test_matches_reference_with_distractor_and_junk_queries() -> None:
    # A pid-0 query matches the other-camera distractors; a pid -1 query is skipped.
    dist, q_pids, g_pids, q_cams, g_cams = market_like_problem(8, levels=12)
    q_pids[:3] = 0
    q_pids[3] = -1
    ref_cmc, ref_std, ref_off, ref_inp = reference_rank(dist, q_pids, g_pids, q_cams, g_cams, 50)
    cmc, mean_ap, minp = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, chunk_size=4)
    np.testing.assert_allclose(cmc, ref_cmc, atol=1e-12)
    assert mean_ap == pytest.approx(ref_std, abs=1e-9)
    assert minp == pytest.approx(ref_inp, abs=1e-9)
    official = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, ap="official")[1]
    assert official == pytest.approx(ref_off, abs=1e-9)


def test_chunking_and_threads_do_not_change_results() -> None:
    problem = market_like_problem(5, num_query=60, levels=8)
    expected = evaluate_rank(*problem, num_workers=1)
    for chunk_size, workers in ((1, 1), (13, 2), (1000, 2)):
        cmc, mean_ap, minp = evaluate_rank(*problem, chunk_size=chunk_size, num_workers=workers)
        np.testing.assert_array_equal(cmc, expected[0])
        assert (mean_ap, minp) == expected[1:]


@pytest.mark.parametrize("seed", range(4))
def test_standard_ap_equals_sklearn(seed: int) -> None:
    dist, q_pids, g_pids, q_cams, g_cams = market_like_problem(seed)
    dist = dist.astype(np.float64)  # continuous values: no ties
    aps = []
    for q in range(dist.shape[0]):
        keep = (g_pids != -1) & ~((g_pids == q_pids[q]) & (g_cams == q_cams[q]))
        y_true = g_pids[keep] == q_pids[q]
        if y_true.any():
            aps.append(average_precision_score(y_true, -dist[q, keep]))
    _, mean_ap, _ = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)
    assert mean_ap == pytest.approx(np.mean(aps), abs=1e-9)


# ---------------------------------------------------------------------------
# Input types


def test_torch_inputs_match_numpy() -> None:
    problem = market_like_problem(2, levels=16)
    expected = evaluate_rank(*problem, ap="official")
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in problem]
    got = evaluate_rank(*tensors, ap="official")
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1:] == expected[1:]
    # Half precision holds these values exactly (multiples of 1/16), so the ranking is equal.
    half = evaluate_rank(tensors[0].half(), *tensors[1:], ap="official")
    np.testing.assert_array_equal(half[0], expected[0])
    assert half[1:] == pytest.approx(expected[1:], abs=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inputs_match_numpy() -> None:
    problem = market_like_problem(4, levels=16)
    expected = evaluate_rank(*problem)
    got = evaluate_rank(*[torch.as_tensor(a, device="cuda") for a in problem], chunk_size=9)
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1:] == expected[1:]


# ---------------------------------------------------------------------------
# Invalid inputs


def test_shape_mismatch_names_the_array() -> None:
    dist, q_pids, g_pids, q_cams, g_cams = hand_inputs()
    with pytest.raises(ValueError, match=r"g_pids has shape \(7,\).*\(3, 8\)"):
        evaluate_rank(dist, q_pids, g_pids[:7], q_cams, g_cams)
    with pytest.raises(ValueError, match="q_camids"):
        evaluate_rank(dist, q_pids, g_pids, q_cams[:2], g_cams)
    with pytest.raises(ValueError, match="2-D"):
        evaluate_rank(dist[0], q_pids, g_pids, q_cams, g_cams)
    with pytest.raises(ValueError, match="1-D"):
        evaluate_rank(dist, q_pids[:, None], g_pids, q_cams, g_cams)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"ap": "voc"}, "unknown ap 'voc'; valid: standard, official"),
        ({"max_rank": 0}, "max_rank"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"num_workers": 0}, "num_workers"),
    ],
)
def test_bad_options_raise(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        evaluate_rank(*hand_inputs(), **kwargs)


def test_nan_and_all_skipped_raise() -> None:
    dist, q_pids, g_pids, q_cams, g_cams = hand_inputs()
    with_nan = dist.copy()
    with_nan[0, 6] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_rank(with_nan, q_pids, g_pids, q_cams, g_cams)
    with_nan[0, 6] = 0.4
    with_nan[0, 3] = np.nan  # NaN on a junk item is harmless
    assert evaluate_rank(with_nan, q_pids, g_pids, q_cams, g_cams)[1] == pytest.approx(41 / 60)
    with pytest.raises(ValueError, match="no query has a correct match"):
        evaluate_rank(dist, np.array([7, 8, 9]), g_pids, q_cams, g_cams)


def test_check_gallery_matches_agrees_with_evaluation() -> None:
    """The label-only pre-check raises exactly when evaluate_rank finds no valid query."""
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(200):
        q_pids, g_pids = rng.integers(-1, 4, 3), rng.integers(-1, 4, 5)
        q_cams, g_cams = rng.integers(0, 2, 3), rng.integers(0, 2, 5)
        labels = (q_pids, g_pids, q_cams, g_cams)
        try:
            evaluate_rank(rng.random((3, 5)), *labels)
            evaluable = True
        except ValueError:
            evaluable = False
        if evaluable:
            check_gallery_matches(*labels)
        else:
            with pytest.raises(InputError, match="no query has a correct match"):
                check_gallery_matches(*labels)
        outcomes.add(evaluable)
    assert outcomes == {True, False}


# ---------------------------------------------------------------------------
# One rule (reid.protocol) for the metrics, the training pre-check and the pictures,
# each checked against a brute force of the rule's definition.


def reference_status(q_pid: int, q_cam: int, g_pid: int, g_cam: int) -> str:
    """A gallery item for a query, from the README's definition: junk (pid -1) and the
    query's identity seen by its own camera are left out; the query's identity seen by
    another camera is a correct match; anything else (distractors too) is wrong."""
    if g_pid == -1 or (g_pid == q_pid and g_cam == q_cam):
        return "ignored"
    return "correct" if g_pid == q_pid else "wrong"


def protocol_labels(
    rng: np.random.Generator, num_query: int, num_gallery: int, num_ids: int = 4
) -> tuple[np.ndarray, ...]:
    """Junk and distractors on both sides, and same-camera items of the query's pid."""
    q_pids, g_pids = rng.integers(-1, num_ids, num_query), rng.integers(-1, num_ids, num_gallery)
    q_cams, g_cams = rng.integers(0, 2, num_query), rng.integers(0, 2, num_gallery)
    return q_pids, q_cams, g_pids, g_cams


def reference_statuses(q_pids, q_cams, g_pids, g_cams) -> np.ndarray:
    """(Q, G) statuses by a loop over every pair."""
    return np.array(
        [
            [reference_status(*query, *item) for item in zip(g_pids, g_cams, strict=True)]
            for query in zip(q_pids, q_cams, strict=True)
        ]
    )


@pytest.mark.parametrize("seed", range(4))
def test_protocol_rule_matches_its_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    q_pids, q_cams, g_pids, g_cams = protocol_labels(rng, 12, 40)
    expected = reference_statuses(q_pids, q_cams, g_pids, g_cams)
    assert {"ignored", "correct", "wrong"} == set(expected.ravel())
    # A block of queries against the whole gallery: (Q, G).
    np.testing.assert_array_equal(ignored(q_pids, q_cams, g_pids, g_cams), expected == "ignored")
    correct = correct_matches(q_pids, q_cams, g_pids, g_cams)
    np.testing.assert_array_equal(correct, expected == "correct")
    # One query: (G,).
    for q in range(len(q_pids)):
        row = ignored(q_pids[q], q_cams[q], g_pids, g_cams)
        assert row.shape == g_pids.shape
        np.testing.assert_array_equal(row, expected[q] == "ignored")
    # Gallery items chosen per query, as the metrics pass them: (Q, 7).
    cols = rng.integers(0, len(g_pids), (len(q_pids), 7))
    chosen = ignored(q_pids, q_cams, g_pids[cols], g_cams[cols])
    np.testing.assert_array_equal(chosen, np.take_along_axis(expected, cols, 1) == "ignored")


def test_check_gallery_matches_follows_the_definition() -> None:
    """Raises exactly when no query has a correct match, distractor queries included."""
    rng = np.random.default_rng(1)
    outcomes = set()
    for _ in range(300):
        q_pids, q_cams, g_pids, g_cams = protocol_labels(rng, 3, 5, num_ids=3)
        statuses = reference_statuses(q_pids, q_cams, g_pids, g_cams)
        has_match = bool((statuses == "correct").any())
        if has_match:
            check_gallery_matches(q_pids, g_pids, q_cams, g_cams)
        else:
            with pytest.raises(InputError, match="no query has a correct match"):
                check_gallery_matches(q_pids, g_pids, q_cams, g_cams)
        outcomes.add(has_match)
    assert outcomes == {True, False}


@pytest.mark.parametrize("seed", range(3))
def test_metrics_and_pictures_follow_the_definition(seed: int) -> None:
    """evaluate_rank and the ranked-list pictures on labels where every case occurs."""
    from reid.utils.visualization import _rank_entries

    rng = np.random.default_rng(seed)
    q_pids, q_cams, g_pids, g_cams = protocol_labels(rng, 30, 80, num_ids=6)
    dist = np.round(rng.random((30, 80)) * 10) / 10  # ties too
    statuses = reference_statuses(q_pids, q_cams, g_pids, g_cams)
    # The metrics, from the ranks of the correct matches among the kept items.
    cmcs, aps, inps = [], [], []
    for q in range(len(q_pids)):
        ranked = [statuses[q, g] for g in np.argsort(dist[q], kind="stable")]
        kept = [status for status in ranked if status != "ignored"]
        ranks = [r for r, status in enumerate(kept, start=1) if status == "correct"]
        if ranks:
            cmcs.append([ranks[0] <= k for k in range(1, 11)])
            aps.append(np.mean([i / r for i, r in enumerate(ranks, start=1)]))
            inps.append(len(ranks) / ranks[-1])
    cmc, mean_ap, minp = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    np.testing.assert_allclose(cmc, np.mean(cmcs, axis=0), atol=1e-12)
    assert mean_ap == pytest.approx(np.mean(aps), abs=1e-12)
    assert minp == pytest.approx(np.mean(inps), abs=1e-12)
    # The pictures: each query's walk down its ranking, 5 counted items and 5 ignored.
    for q in range(len(q_pids)):
        expected, rank, left_out = [], 0, 0
        for g in np.argsort(dist[q], kind="stable"):
            if statuses[q, g] == "ignored":
                expected += [(int(g), "ignored", 0)] if left_out < 5 else []
                left_out += 1
                continue
            rank += 1
            expected.append((int(g), str(statuses[q, g]), rank))
            if rank == 5:
                break
        got = _rank_entries(dist[q], q_pids[q], q_cams[q], g_pids, g_cams, topk=5)
        assert got == expected, q
