import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reid.evaluation import (
    AqeOptions,
    EvalOptions,
    Ranking,
    RerankOptions,
    alpha_query_expansion,
    evaluate_rank,
    evaluator,
    pairwise_distance,
    re_ranking,
)
from reid.evaluation.evaluator import embed


class _ColumnModel(nn.Module):
    """Features = mean of each image column: a flip reverses them, visibly."""

    feat_norm = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(images.mean(dim=(1, 2)), dim=1)


def test_flip_averages_image_and_mirror_then_renormalises() -> None:
    images = torch.rand(3, 3, 4, 5)
    model = _ColumnModel()
    expected = F.normalize(model(images) + model(images.flip(3)), dim=1)
    assert torch.allclose(embed(model, images, flip=True), expected, atol=1e-6)
    assert torch.allclose(embed(model, images), model(images))


def _problem(seed: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pids = rng.integers(1, 8, size=60)
    camids = rng.integers(0, 3, size=60)
    centers = rng.normal(size=(8, 16))
    feats = torch.tensor(centers[pids] + 0.8 * rng.normal(size=(60, 16)), dtype=torch.float32)
    return feats, pids, camids


def test_ranking_matches_evaluate_rank_on_the_full_matrix() -> None:
    feats, pids, camids = _problem(0)
    nq = 15
    labels = (pids[:nq], pids[nq:], camids[:nq], camids[nq:])
    for metric in ("cosine", "euclidean"):
        for ap in ("standard", "official"):
            ranking = Ranking(feats, pids, camids, nq, EvalOptions(metric=metric, ap=ap))
            expected = evaluate_rank(ranking.distances(), *labels, ap=ap)
            got = ranking.metrics()
            np.testing.assert_array_equal(got[0], expected[0])
            assert got[1:] == expected[1:]


def test_ranking_with_re_ranking_computes_it_once(monkeypatch) -> None:
    feats, pids, camids = _problem(1)
    nq = 15
    calls = []
    monkeypatch.setattr(
        evaluator, "re_ranking", lambda *a, **k: calls.append(1) or re_ranking(*a, **k)
    )
    options = EvalOptions(rerank=RerankOptions(k1=6, k2=3, lambda_value=0.3))
    ranking = Ranking(feats, pids, camids, nq, options)
    distmat = re_ranking(feats[:nq], feats[nq:], 6, 3, 0.3)
    expected = evaluate_rank(distmat, pids[:nq], pids[nq:], camids[:nq], camids[nq:])
    got = ranking.metrics()
    assert np.allclose(got[0], expected[0]) and np.isclose(got[1], expected[1])
    np.testing.assert_array_equal(ranking.distances(rows=[2, 5]), distmat[[2, 5]])
    assert calls == [1]


def test_ranking_with_alpha_query_expansion_ranks_the_expanded_features() -> None:
    feats, pids, camids = _problem(2)
    nq = 15
    ranking = Ranking(feats, pids, camids, nq, EvalOptions(aqe=AqeOptions(k=3, alpha=2.0)))
    query, gallery = alpha_query_expansion(feats[:nq], feats[nq:], k=3, alpha=2.0)
    expected = evaluate_rank(
        pairwise_distance(query, gallery), pids[:nq], pids[nq:], camids[:nq], camids[nq:]
    )
    got = ranking.metrics()
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1:] == expected[1:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rerank", [None, RerankOptions(k1=6, k2=3, lambda_value=0.3)])
def test_ranking_on_the_gpu_gives_the_cpu_metrics(rerank) -> None:
    """Distances (and re-ranking) on CUDA: the same metrics as on the CPU, to rounding."""
    feats, pids, camids = _problem(3)
    options = EvalOptions(metric="euclidean", rerank=rerank)
    cpu = Ranking(feats, pids, camids, 15, options).metrics()
    gpu = Ranking(feats.cuda(), pids, camids, 15, options, torch.device("cuda")).metrics()
    np.testing.assert_allclose(gpu[0], cpu[0])
    assert gpu[1:] == pytest.approx(cpu[1:], abs=1e-6)
