"""Feature extraction and model evaluation on a query + gallery loader."""

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from reid.evaluation.metrics import evaluate_rank


@torch.no_grad()
def extract_features(
    model: nn.Module, loader: DataLoader, device: torch.device
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Runs the model in eval mode over a loader of ``(images, pids, camids)``.

    Returns:
        Features (N, D) as float32 on CPU, pids (N,) and camids (N,).
    """
    was_training = model.training
    model.eval()
    feats, pids, camids = [], [], []
    for images, batch_pids, batch_camids in tqdm(loader, desc="features", leave=False):
        feats.append(model(images.to(device, non_blocking=True)).float().cpu())
        pids.append(batch_pids.numpy())
        camids.append(batch_camids.numpy())
    model.train(was_training)
    return torch.cat(feats), np.concatenate(pids), np.concatenate(camids)


def evaluate_model(
    model: nn.Module, loader: DataLoader, num_query: int, device: torch.device
) -> dict[str, float]:
    """Extracts query + gallery features and ranks the gallery by Euclidean distance.

    Args:
        loader: query images first, then gallery images (``build_test_loader``).
        num_query: how many of the first items are queries.

    Returns:
        ``rank1``, ``rank5``, ``rank10``, ``mAP``, ``mINP`` as fractions in [0, 1].
    """
    feats, pids, camids = extract_features(model, loader, device)
    distmat = torch.cdist(feats[:num_query], feats[num_query:])
    cmc, mean_ap, mean_inp = evaluate_rank(
        distmat, pids[:num_query], pids[num_query:], camids[:num_query], camids[num_query:]
    )
    return {
        "rank1": float(cmc[0]),
        "rank5": float(cmc[4]),
        "rank10": float(cmc[9]),
        "mAP": mean_ap,
        "mINP": mean_inp,
    }
