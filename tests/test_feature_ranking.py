"""Tests for reid.evaluation.feature_ranking: equality with the full-matrix path."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch

from reid.evaluation import feature_ranking
from reid.evaluation.feature_ranking import evaluate_features, pairwise_distance
from reid.evaluation.metrics import MarketRanker, evaluate_rank

METRICS = ("cosine", "euclidean")
APS = ("standard", "official")


def market_like_features(
    seed: int,
    num_query: int = 40,
    num_gallery: int = 300,
    num_ids: int = 20,
    num_cams: int = 4,
    dim: int = 16,
    noise: float = 1.2,
) -> tuple[np.ndarray, ...]:
    """Clustered identities with distractors (0), junk (-1) and same-camera matches.

    Returns:
        ``(query (Q, dim) float32, gallery (G, dim) float32, q_pids, g_pids,
        q_camids, g_camids)``.
    """
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((num_ids + 1, dim))
    q_pids = rng.integers(1, num_ids + 1, num_query)
    g_pids = rng.integers(1, num_ids + 1, num_gallery)
    kind = rng.random(num_gallery)
    g_pids[kind < 0.15] = 0
    g_pids[kind > 0.9] = -1
    q_camids = rng.integers(0, num_cams, num_query)
    g_camids = rng.integers(0, num_cams, num_gallery)

    def draw(pids: np.ndarray) -> np.ndarray:
        base = np.where((pids > 0)[:, None], centers[np.maximum(pids, 0)], 0.0)
        return (base + noise * rng.standard_normal((pids.size, dim))).astype(np.float32)

    return draw(q_pids), draw(g_pids), q_pids, g_pids, q_camids, g_camids


def full_matrix_result(
    problem: tuple[np.ndarray, ...], metric: str, ap: str = "standard", max_rank: int = 20
) -> tuple[np.ndarray, float, float]:
    """The reference: evaluate_rank on the whole pairwise_distance matrix."""
    query, gallery, *labels = problem
    distmat = pairwise_distance(query, gallery, metric)
    return evaluate_rank(distmat, *labels, max_rank=max_rank, ap=ap)


def assert_same(got: tuple, expected: tuple) -> None:
    """Bitwise equality of ``(cmc, mAP, mINP)``."""
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1] == expected[1]
    assert got[2] == expected[2]


@pytest.fixture(params=["default", "7-row blocks"])
def block_grid(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test with one distance block and again with many small ones."""
    if request.param != "default":
        # 7 rows of 300 float32 distances: several blocks, the last one partial.
        monkeypatch.setattr(feature_ranking, "_BLOCK_BYTES", 7 * 300 * 4)
    return request.param


# ---------------------------------------------------------------------------
# Equality with evaluate_rank on the full matrix


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("ap", APS)
@pytest.mark.parametrize("chunk_size", [1, 3, 16, 40, 1000, None])
def test_equals_full_matrix(block_grid: str, metric: str, ap: str, chunk_size: int | None) -> None:
    problem = market_like_features(seed=1)
    expected = full_matrix_result(problem, metric, ap)
    got = evaluate_features(*problem, metric=metric, max_rank=20, ap=ap, chunk_size=chunk_size)
    assert_same(got, expected)
    assert 0.05 < got[1] < 0.95  # a ranking that is neither trivial nor random


@pytest.mark.parametrize("seed", [2, 3, 4])
@pytest.mark.parametrize("metric", METRICS)
def test_equals_full_matrix_other_problems(block_grid: str, seed: int, metric: str) -> None:
    problem = market_like_features(seed, num_query=61, num_cams=2, dim=33)
    for ap in APS:
        expected = full_matrix_result(problem, metric, ap, max_rank=50)
        got = evaluate_features(*problem, metric=metric, ap=ap, chunk_size=5, num_workers=2)
        assert_same(got, expected)


@pytest.mark.parametrize("metric", METRICS)
def test_ties_follow_gallery_order(block_grid: str, metric: str) -> None:
    # Small integer features give many exactly equal distances (and duplicated
    # gallery rows), so the stable tie order decides many ranks.
    problem = list(market_like_features(seed=5))
    rng = np.random.default_rng(5)
    problem[0] = rng.integers(0, 3, problem[0].shape).astype(np.float32)
    problem[1] = rng.integers(0, 3, problem[1].shape).astype(np.float32)
    problem[1][150:] = problem[1][:150]
    problem[0][0] = 0.0  # a zero query: cosine distance 1 to everything
    for ap in APS:
        expected = full_matrix_result(problem, metric, ap)
        for chunk_size in (1, 4, None):
            got = evaluate_features(
                *problem, metric=metric, max_rank=20, ap=ap, chunk_size=chunk_size
            )
            assert_same(got, expected)
    if metric == "euclidean":
        # Integer features make every float32 distance exact, so an independent
        # float64 matrix must give the same ranks, ties included.
        query, gallery, *labels = (np.asarray(a) for a in problem)
        exact = np.sqrt(((query[:, None, :] - gallery[None, :, :]) ** 2).sum(-1))
        assert_same(evaluate_features(*problem, metric=metric), evaluate_rank(exact, *labels))


def test_blocks_never_cover_more_than_the_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feature_ranking, "_BLOCK_BYTES", 7 * 300 * 4)
    seen: list[tuple[int, int]] = []
    original = MarketRanker.add_rows

    def spy(self: MarketRanker, start: int, rows: np.ndarray, **kwargs: object) -> None:
        seen.append((start, rows.shape[0]))
        original(self, start, rows, **kwargs)

    monkeypatch.setattr(MarketRanker, "add_rows", spy)
    evaluate_features(*market_like_features(seed=1), chunk_size=1000)
    assert seen == [(start, min(7, 40 - start)) for start in range(0, 40, 7)]


def test_one_distance_block_alive_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feature_ranking, "_BLOCK_BYTES", 7 * 300 * 4)
    ranked: list[weakref.ref] = []
    add_rows, blocks = MarketRanker.add_rows, feature_ranking.distance_blocks

    def spy_add_rows(self: MarketRanker, start: int, rows: torch.Tensor, **kwargs: object) -> None:
        ranked.append(weakref.ref(rows))
        add_rows(self, start, rows, **kwargs)

    def spy_blocks(*args: object):
        for start, block in blocks(*args):
            yield start, block
            del block
            # On CPU the next block is computed only once every ranked block is freed.
            assert all(ref() is None for ref in ranked)

    monkeypatch.setattr(MarketRanker, "add_rows", spy_add_rows)
    monkeypatch.setattr(feature_ranking, "distance_blocks", spy_blocks)
    evaluate_features(*market_like_features(seed=1))
    assert len(ranked) == 6


def test_ranker_blocks_in_any_order_match_evaluate_rank() -> None:
    query, gallery, *labels = market_like_features(seed=6)
    distmat = pairwise_distance(query, gallery).numpy()
    ranker = MarketRanker(*labels)
    for start in reversed(range(0, 40, 9)):
        ranker.add_rows(start, distmat[start : start + 9])
    assert_same(ranker.result(20, "official"), evaluate_rank(distmat, *labels, 20, "official"))
    with pytest.raises(ValueError, match=r"block must have shape \(n, 300\)"):
        ranker.add_rows(0, distmat[:, :10])
    with pytest.raises(ValueError, match="outside the 40 queries"):
        ranker.add_rows(35, distmat[:9])


# ---------------------------------------------------------------------------
# pairwise_distance


def brute_force_distance(query: np.ndarray, gallery: np.ndarray, metric: str) -> np.ndarray:
    """Double loop in float64, straight from the definitions."""
    out = np.zeros((len(query), len(gallery)))
    for i, q in enumerate(query.astype(np.float64)):
        for j, g in enumerate(gallery.astype(np.float64)):
            if metric == "cosine":
                out[i, j] = 1 - q @ g / (np.linalg.norm(q) * np.linalg.norm(g))
            else:
                out[i, j] = np.sqrt(((q - g) ** 2).sum())
    return out


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_distance_matches_brute_force(block_grid: str, metric: str) -> None:
    query, gallery, *_ = market_like_features(seed=7, num_query=23, num_gallery=300)
    query = query * 3.0  # the scale must not matter for cosine
    expected = brute_force_distance(query, gallery, metric)
    got = pairwise_distance(query, gallery, metric)
    assert got.shape == (23, 300) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=2e-5)
    got64 = pairwise_distance(query.astype(np.float64), gallery, metric)
    assert got64.dtype == torch.float64
    np.testing.assert_allclose(got64.numpy(), expected, rtol=1e-10, atol=1e-10)


def test_pairwise_distance_zero_vector_and_identical_rows() -> None:
    query = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]], dtype=np.float32)
    gallery = np.array([[1.0, 2.0, 2.0], [2.0, 4.0, 4.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    cosine = pairwise_distance(query, gallery, "cosine").numpy()
    np.testing.assert_allclose(cosine, [[1, 1, 1], [0, 0, 1]], atol=1e-6)
    euclidean = pairwise_distance(query, gallery, "euclidean").numpy()
    np.testing.assert_allclose(euclidean, [[3, 6, 0], [0, 3, 3]], atol=1e-6)
    assert (euclidean >= 0).all()


def test_pairwise_distance_equals_evaluated_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rows of the full matrix are bitwise the ones ranked, whatever the chunk size.
    monkeypatch.setattr(feature_ranking, "_BLOCK_BYTES", 7 * 300 * 4)
    query, gallery, *labels = market_like_features(seed=8)
    full = pairwise_distance(query, gallery, "euclidean")
    ranked = []

    def spy(self: MarketRanker, start: int, rows: torch.Tensor, **kwargs: object) -> None:
        ranked.append(rows.clone())

    monkeypatch.setattr(MarketRanker, "add_rows", spy)
    with pytest.raises(ValueError, match="no query has a correct match"):
        evaluate_features(query, gallery, *labels, metric="euclidean", chunk_size=1)
    assert torch.equal(torch.cat(ranked), full)


# ---------------------------------------------------------------------------
# Input types


def test_numpy_and_torch_inputs_agree() -> None:
    problem = market_like_features(seed=9)
    as_torch = [torch.from_numpy(np.asarray(a)) for a in problem]
    for metric in METRICS:
        expected = evaluate_features(*problem, metric=metric)
        assert_same(evaluate_features(*as_torch, metric=metric), expected)
        torch_dist = pairwise_distance(as_torch[0], as_torch[1], metric)
        assert torch.equal(torch_dist, pairwise_distance(problem[0], problem[1], metric))
    # Mixed: torch features with numpy labels, numpy features with torch labels;
    # non-contiguous, half-precision and integer features are accepted too.
    assert_same(evaluate_features(*as_torch[:2], *problem[2:]), evaluate_features(*problem))
    assert_same(evaluate_features(*problem[:2], *as_torch[2:]), evaluate_features(*problem))
    strided = np.asfortranarray(problem[1])
    assert_same(evaluate_features(problem[0], strided, *problem[2:]), evaluate_features(*problem))
    half = [torch.from_numpy(a).half() for a in problem[:2]]
    expected_half = evaluate_features(*[h.float() for h in half], *problem[2:])
    assert_same(evaluate_features(*half, *problem[2:]), expected_half)
    ints = [np.round(a * 4).astype(np.int64) for a in problem[:2]]
    expected_ints = evaluate_features(*[a.astype(np.float32) for a in ints], *problem[2:])
    assert_same(evaluate_features(*ints, *problem[2:]), expected_ints)


# ---------------------------------------------------------------------------
# Invalid inputs


def test_bad_inputs_raise() -> None:
    query, gallery, q_pids, g_pids, q_cams, g_cams = market_like_features(seed=10)
    labels = (q_pids, g_pids, q_cams, g_cams)
    with pytest.raises(ValueError, match="query_feats has 16 dims but gallery_feats has 15"):
        evaluate_features(query, gallery[:, :15], *labels)
    with pytest.raises(ValueError, match="query_feats has 16 dims but gallery_feats has 15"):
        pairwise_distance(query, gallery[:, :15])
    for index, name, rows in ((0, "q_pids", 40), (1, "g_pids", 300), (2, "q_camids", 40),
                              (3, "g_camids", 300)):  # fmt: skip
        short = list(labels)
        short[index] = short[index][:-1]
        message = rf"{name} has shape \({rows - 1},\) but the features have 40 \+ 300 rows"
        with pytest.raises(ValueError, match=message):
            evaluate_features(query, gallery, *short)
    with pytest.raises(ValueError, match="unknown metric 'cos'; valid: cosine, euclidean"):
        evaluate_features(query, gallery, *labels, metric="cos")
    with pytest.raises(ValueError, match="unknown metric 'l2'"):
        pairwise_distance(query, gallery, "l2")
    with pytest.raises(ValueError, match="gallery_feats must be 2-D"):
        evaluate_features(query, gallery[0], *labels)
    with pytest.raises(ValueError, match="query_feats is empty"):
        evaluate_features(query[:0], gallery, *labels)
    with pytest.raises(ValueError, match="query_feats must be a numpy array or torch tensor"):
        evaluate_features(query.tolist(), gallery, *labels)
    with pytest.raises(ValueError, match="gallery_feats must hold real numbers"):
        evaluate_features(query, gallery > 0, *labels)
    with_nan = gallery.copy()
    with_nan[5, 3] = np.nan
    with pytest.raises(ValueError, match="gallery_feats contains NaN or inf"):
        evaluate_features(query, with_nan, *labels)
    with pytest.raises(ValueError, match="unknown ap"):
        evaluate_features(query, gallery, *labels, ap="voc")
    with pytest.raises(ValueError, match="chunk_size"):
        evaluate_features(query, gallery, *labels, chunk_size=0)
    with pytest.raises(ValueError, match="no query has a correct match"):
        evaluate_features(query, gallery, q_pids, np.full(300, -1), q_cams, g_cams)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_device_without_cuda_raises() -> None:
    problem = market_like_features(seed=11)
    with pytest.raises(ValueError, match="CUDA is not available"):
        evaluate_features(*problem, device="cuda")


# ---------------------------------------------------------------------------
# CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("metric", METRICS)
def test_cuda_matches_cpu(monkeypatch: pytest.MonkeyPatch, metric: str) -> None:
    # TF32 would round the GEMM inputs to 10 mantissa bits and reorder ranks.
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    problem = market_like_features(seed=12, num_query=200, num_gallery=3000, dim=64)
    on_cuda = [torch.as_tensor(a, device="cuda") for a in problem]
    cpu_dist = pairwise_distance(problem[0], problem[1], metric)
    cuda_dist = pairwise_distance(*on_cuda[:2], metric)
    assert cuda_dist.device.type == "cuda"
    torch.testing.assert_close(cuda_dist.cpu(), cpu_dist, rtol=1e-5, atol=1e-5)
    for ap in APS:
        expected = evaluate_features(*problem, metric=metric, ap=ap)
        got = evaluate_features(*on_cuda, metric=metric, ap=ap, chunk_size=7)
        # Same device: bitwise equal to the full matrix; across devices the GEMMs
        # round differently, which may reorder near-ties only.
        assert_same(got, evaluate_rank(cuda_dist, *problem[2:], ap=ap))
        np.testing.assert_allclose(got[0], expected[0], atol=1e-2)
        assert got[1:] == pytest.approx(expected[1:], abs=1e-3)
        # CPU features, GPU distances: the device argument decides.
        from_numpy = evaluate_features(*problem, metric=metric, ap=ap, device="cuda")
        assert_same(from_numpy, got)
