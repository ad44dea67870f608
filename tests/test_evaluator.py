import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reid.evaluation import evaluate_rank, rank_gallery
from reid.evaluation.evaluator import RerankOptions, embed, gallery_distances
from reid.evaluation.rerank import re_ranking


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


def test_rank_gallery_matches_evaluate_rank_on_the_full_matrix() -> None:
    feats, pids, camids = _problem(0)
    nq = 15
    for metric in ("cosine", "euclidean"):
        distmat = gallery_distances(feats, nq, metric)
        expected = evaluate_rank(distmat, pids[:nq], pids[nq:], camids[:nq], camids[nq:])
        got = rank_gallery(feats, pids, camids, nq, metric)
        assert np.allclose(got[0], expected[0]) and np.isclose(got[1], expected[1])


def test_rank_gallery_with_re_ranking_uses_the_re_ranked_distances() -> None:
    feats, pids, camids = _problem(1)
    nq = 15
    options = RerankOptions(k1=6, k2=3, lambda_value=0.3)
    distmat = re_ranking(feats[:nq], feats[nq:], 6, 3, 0.3)
    expected = evaluate_rank(distmat, pids[:nq], pids[nq:], camids[:nq], camids[nq:])
    got = rank_gallery(feats, pids, camids, nq, rerank=options)
    assert np.allclose(got[0], expected[0]) and np.isclose(got[1], expected[1])
    rows = gallery_distances(feats, nq, rerank=options, rows=[2, 5])
    assert np.allclose(np.asarray(rows), np.asarray(distmat)[[2, 5]])
