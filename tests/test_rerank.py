"""k-reciprocal re-ranking and alpha-QE against dense brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.evaluation.rerank import _nearest_neighbours, alpha_query_expansion, re_ranking

# ---------------------------------------------------------------------------
# Dense reference: the published algorithm, step by step, with full N x N matrices and
# per-sample loops, in float32 (the authors keep V and the Jaccard distance in float16).


def _k_reciprocal(initial_rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """R(i, k): the k + 1 nearest of i that have i among their own k + 1 nearest."""
    forward = initial_rank[i, : k + 1]
    backward = initial_rank[forward, : k + 1]
    return forward[(backward == i).any(axis=1)]


def reference_re_ranking(
    query: np.ndarray,
    gallery: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    stats: dict | None = None,
) -> np.ndarray:
    """Dense float32 k-reciprocal re-ranking (Zhong et al., CVPR 2017).

    Args:
        query: (Q, D) features.
        gallery: (G, D) features.
        stats: if given, receives ``expansions``, the number of candidate sets that were
            accepted and added a sample to some R*(i).

    Returns:
        (Q, G) float32 re-ranked distances.
    """
    feats = np.concatenate([query, gallery]).astype(np.float32)
    num_query, num_all = len(query), len(feats)
    sq_norm = (feats * feats).sum(axis=1)
    dist = sq_norm[:, None] + sq_norm[None, :] - 2 * (feats @ feats.T)
    # The authors divide every column by its maximum, then transpose.
    original = np.transpose(dist / np.max(dist, axis=0))
    del dist
    initial_rank = np.argsort(original, axis=1)
    half = int(np.around(k1 / 2))

    encoding = np.zeros((num_all, num_all), dtype=np.float32)
    expansions = 0
    for i in range(num_all):
        reciprocal = _k_reciprocal(initial_rank, i, k1)
        expanded = reciprocal
        for candidate in reciprocal:
            candidate_set = _k_reciprocal(initial_rank, candidate, half)
            if len(np.intersect1d(candidate_set, reciprocal)) > 2 / 3 * len(candidate_set):
                expansions += len(np.setdiff1d(candidate_set, expanded)) > 0
                expanded = np.append(expanded, candidate_set)
        expanded = np.unique(expanded)
        weight = np.exp(-original[i, expanded])
        encoding[i, expanded] = weight / np.sum(weight)
    if stats is not None:
        stats["expansions"] = expansions

    if k2 != 1:
        expanded_encoding = np.zeros_like(encoding)
        for i in range(num_all):
            expanded_encoding[i] = np.mean(encoding[initial_rank[i, :k2]], axis=0)
        encoding = expanded_encoding
    del initial_rank

    inverted_index = [np.nonzero(encoding[:, c])[0] for c in range(num_all)]
    jaccard = np.zeros((num_query, num_all), dtype=np.float32)
    for i in range(num_query):
        shared = np.zeros(num_all, dtype=np.float32)
        for c in np.nonzero(encoding[i])[0]:
            holders = inverted_index[c]
            shared[holders] += np.minimum(encoding[i, c], encoding[holders, c])
        jaccard[i] = 1 - shared / (2 - shared)

    final = jaccard * (1 - lambda_value) + original[:num_query] * lambda_value
    return final[:, num_query:]


# ---------------------------------------------------------------------------
# Inputs


def random_feats(seed: int, num_query: int = 30, num_gallery: int = 80, dim: int = 16):
    """Independent gaussian features: (Q, D) and (G, D) float32."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((num_query + num_gallery, dim)).astype(np.float32)
    return feats[:num_query], feats[num_query:]


def clustered_feats(
    seed: int, num_query: int = 30, num_gallery: int = 80, dim: int = 16, num_ids: int = 12
):
    """Identities as tight gaussian clusters, L2-normalised, shuffled: (Q, D), (G, D)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_ids, dim))
    ids = rng.integers(0, num_ids, num_query + num_gallery)
    feats = centres[ids] + 0.45 * rng.standard_normal((len(ids), dim))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    feats = feats.astype(np.float32)
    return feats[:num_query], feats[num_query:]


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------
# re_ranking


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_on_random_features(seed: int) -> None:
    query, gallery = random_feats(seed)
    assert_close(re_ranking(query, gallery), reference_re_ranking(query, gallery))


@pytest.mark.parametrize(
    ("k1", "k2", "lambda_value"),
    [(20, 6, 0.3), (5, 1, 0.5), (7, 3, 0.0), (12, 4, 0.8), (3, 10, 0.3), (1, 2, 0.2)],
)
@pytest.mark.parametrize("seed", [3, 4])
def test_matches_reference_on_clustered_features(
    seed: int, k1: int, k2: int, lambda_value: float
) -> None:
    query, gallery = clustered_feats(seed)
    expected = reference_re_ranking(query, gallery, k1, k2, lambda_value)
    assert_close(re_ranking(query, gallery, k1, k2, lambda_value), expected)


def test_clustered_features_exercise_the_expansion() -> None:
    # Guards the test data: without accepted candidate sets step 4 would go untested.
    stats: dict = {}
    query, gallery = clustered_feats(3)
    reference_re_ranking(query, gallery, stats=stats)
    assert stats["expansions"] > 10


@pytest.mark.parametrize("block_size", [1, 9, 16, 29, 64])
def test_block_size_does_not_change_the_result(block_size: int) -> None:
    # Small blocks straddle the query/gallery boundary and make every row merge many
    # blocks, from both sides of the diagonal.
    query, gallery = clustered_feats(5, num_query=37, num_gallery=90)
    expected = reference_re_ranking(query, gallery, k1=8, k2=3)
    got = re_ranking(query, gallery, k1=8, k2=3, block_size=block_size)
    assert_close(got, expected)


@pytest.mark.parametrize("block_size", [7, 16, 200])
def test_blocked_nearest_neighbours_match_brute_force(block_size: int) -> None:
    query, gallery = random_feats(13, num_query=23, num_gallery=50, dim=8)
    feats = np.concatenate([query, gallery])
    dist = ((feats[:, None, :].astype(np.float64) - feats[None, :, :]) ** 2).sum(axis=2)
    qg = np.empty((23, 50), dtype=np.float32)
    top_dist, top_index, row_max = _nearest_neighbours(
        torch.from_numpy(feats), 7, block_size, qg, 23
    )
    expected_index = np.argsort(dist, axis=1)[:, :7]
    np.testing.assert_array_equal(top_index, expected_index)
    np.testing.assert_allclose(top_dist, np.sort(dist, axis=1)[:, :7], rtol=0, atol=1e-5)
    np.testing.assert_allclose(row_max, dist.max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(qg, dist[:23, 23:], rtol=0, atol=1e-5)


def test_more_neighbours_than_samples() -> None:
    query, gallery = random_feats(6, num_query=3, num_gallery=6, dim=4)
    assert_close(re_ranking(query, gallery), reference_re_ranking(query, gallery))


def test_lambda_one_gives_the_normalised_original_distance() -> None:
    query, gallery = clustered_feats(7)
    feats = torch.from_numpy(np.concatenate([query, gallery])).double()
    dist = torch.cdist(feats, feats) ** 2
    # Each row divided by its own maximum over all query + gallery samples.
    expected = (dist / dist.amax(dim=1, keepdim=True))[: len(query), len(query) :]
    got = re_ranking(query, gallery, lambda_value=1.0)
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-5)


def test_lambda_zero_is_a_jaccard_distance() -> None:
    query, gallery = clustered_feats(8)
    got = re_ranking(query, gallery, lambda_value=0.0)
    assert np.all(got >= -1e-6) and np.all(got <= 1 + 1e-6)
    # Some queries share no neighbourhood with some gallery images: distance exactly 1.
    assert np.any(got == 1.0) and np.any(got < 0.9)


def test_torch_numpy_and_float64_inputs_agree() -> None:
    query, gallery = clustered_feats(9)
    expected = re_ranking(query, gallery)
    from_torch = re_ranking(torch.from_numpy(query), torch.from_numpy(gallery))
    np.testing.assert_array_equal(from_torch, expected)
    from_float64 = re_ranking(query.astype(np.float64), gallery.astype(np.float64))
    assert_close(from_float64, expected)
    grad = torch.from_numpy(query).requires_grad_()
    assert_close(re_ranking(grad, gallery, device="cpu"), expected)


def test_rejects_bad_arguments() -> None:
    query, gallery = random_feats(0)
    with pytest.raises(ValueError, match="query_feats has 16 dims but gallery_feats has 8"):
        re_ranking(query, gallery[:, :8])
    with pytest.raises(ValueError, match="k1 and k2"):
        re_ranking(query, gallery, k1=0)
    with pytest.raises(ValueError, match="lambda_value"):
        re_ranking(query, gallery, lambda_value=1.5)
    with pytest.raises(ValueError, match=r"query_feats must be 2-D"):
        re_ranking(query[0], gallery)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_reference() -> None:
    query, gallery = clustered_feats(10, num_query=50, num_gallery=150)
    expected = reference_re_ranking(query, gallery)
    got = re_ranking(torch.from_numpy(query).cuda(), torch.from_numpy(gallery), block_size=64)
    assert_close(got, expected)


# ---------------------------------------------------------------------------
# alpha_query_expansion


def reference_alpha_qe(
    query: np.ndarray, gallery: np.ndarray, k: int, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature loops in float64: database-side augmentation, then alpha-QE."""
    query = query / np.linalg.norm(query, axis=1, keepdims=True)
    gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    new_gallery = np.empty_like(gallery)
    for j, feat in enumerate(gallery):
        sim = gallery @ feat
        nearest = np.argsort(-sim)[:k]
        summed = (np.maximum(sim[nearest], 0) ** alpha) @ gallery[nearest]
        new_gallery[j] = summed / np.linalg.norm(summed)
    new_query = np.empty_like(query)
    for i, feat in enumerate(query):
        sim = new_gallery @ feat
        nearest = np.argsort(-sim)[: k - 1]
        summed = feat + (np.maximum(sim[nearest], 0) ** alpha) @ new_gallery[nearest]
        new_query[i] = summed / np.linalg.norm(summed)
    return new_query, new_gallery


@pytest.mark.parametrize(("k", "alpha"), [(2, 3.0), (5, 3.0), (4, 0.0), (6, 1.5)])
def test_alpha_qe_matches_reference(k: int, alpha: float) -> None:
    query, gallery = clustered_feats(11)
    expected_query, expected_gallery = reference_alpha_qe(
        query.astype(np.float64), gallery.astype(np.float64), k, alpha
    )
    got_query, got_gallery = alpha_query_expansion(query, gallery, k=k, alpha=alpha)
    assert got_query.dtype == torch.float32 and got_query.shape == query.shape
    np.testing.assert_allclose(got_gallery.numpy(), expected_gallery, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_query.numpy(), expected_query, rtol=0, atol=1e-5)


def test_alpha_qe_k1_and_flags() -> None:
    query, gallery = clustered_feats(12)
    unit_query = query / np.linalg.norm(query, axis=1, keepdims=True)
    unit_gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    for got, expected in zip(
        alpha_query_expansion(torch.from_numpy(query), gallery, k=1),
        (unit_query, unit_gallery),
        strict=True,
    ):
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)
    # Query side only: the gallery is left normalised and the queries expand over it.
    got_query, got_gallery = alpha_query_expansion(query, gallery, k=3, expand_gallery=False)
    np.testing.assert_allclose(got_gallery.numpy(), unit_gallery, rtol=0, atol=1e-6)
    sim = unit_query @ unit_gallery.T
    nearest = np.argsort(-sim, axis=1)[:, :2]
    weight = np.maximum(np.take_along_axis(sim, nearest, axis=1), 0) ** 3
    summed = unit_query + np.einsum("qk,qkd->qd", weight, unit_gallery[nearest])
    summed /= np.linalg.norm(summed, axis=1, keepdims=True)
    np.testing.assert_allclose(got_query.numpy(), summed, rtol=0, atol=1e-5)
    # Gallery side only.
    got_query, _ = alpha_query_expansion(query, gallery, k=3, expand_query=False)
    np.testing.assert_allclose(got_query.numpy(), unit_query, rtol=0, atol=1e-6)
