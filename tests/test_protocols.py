"""Evaluation protocols (reid.protocol): each against a brute-force loop written from its
definition, and the splits of VehicleID's protocol against theirs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.data import Record, ReidDataset
from reid.errors import InputError
from reid.evaluation import ProtocolRanking, check_test_set
from reid.protocol import NO_CAMERA, PROTOCOLS
from reid.protocol import vehicleid as vehicleid_protocol


def cosine_distances(feats: np.ndarray, query: list[int], gallery: list[int]) -> np.ndarray:
    normed = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    return 1.0 - normed[query] @ normed[gallery].T


def reference_without_cameras(
    feats: np.ndarray, pids: np.ndarray, query: list[int], gallery: list[int]
) -> tuple[np.ndarray, float, float]:
    """CMC, mAP and mINP where every gallery image of the query's identity is a correct
    match and nothing is left out: a plain loop down each sorted row."""
    distances = cosine_distances(feats, query, gallery)
    cmcs, aps, inps = [], [], []
    for row, q in enumerate(query):
        ranked = [gallery[k] for k in np.argsort(distances[row], kind="stable")]
        hits, precisions, first, last = 0, [], None, None
        for rank, g in enumerate(ranked, start=1):
            if pids[g] == pids[q]:
                hits += 1
                precisions.append(hits / rank)
                first, last = first or rank, rank
        if hits:
            cmcs.append([float(first <= k) for k in range(1, 51)])
            aps.append(np.mean(precisions))
            inps.append(hits / last)
    return np.mean(cmcs, axis=0), float(np.mean(aps)), float(np.mean(inps))


def test_no_cameras_counts_every_gallery_image_of_the_identity() -> None:
    rng = np.random.default_rng(0)
    pids = np.array([1, 2, 3, 4, 5, 1, 1, 2, 3, 3, 4, 6, 6, 0, 2])
    feats = rng.normal(size=(len(pids), 8)) + 0.8 * np.eye(8)[pids % 8]
    camids = np.full(len(pids), NO_CAMERA)
    ranking = ProtocolRanking(torch.from_numpy(feats).float(), pids, camids, 5, "no_cameras")
    cmc, mean_ap, mean_inp = ranking.metrics()
    ref_cmc, ref_ap, ref_inp = reference_without_cameras(
        feats, pids, [0, 1, 2, 3, 4], list(range(5, 15))
    )
    assert np.allclose(cmc, ref_cmc) and mean_ap == pytest.approx(ref_ap, abs=1e-6)
    assert mean_inp == pytest.approx(ref_inp, abs=1e-6)
    # Query 5 (pid 5) has no match in the gallery: skipped, as under Market's protocol.
    assert len(ranking.splits) == 1


def test_no_cameras_datasets_pass_the_check_that_market_labels_would_fail() -> None:
    """Equal "no camera" labels under Market's rule would leave out every match."""
    query = [Record("q1", 1, NO_CAMERA), Record("q2", 2, NO_CAMERA)]
    gallery = [Record("g1", 1, NO_CAMERA), Record("g2", 2, NO_CAMERA)]
    dataset = ReidDataset("folder", [Record("t", 9, NO_CAMERA)], query, gallery)
    assert dataset.protocol == "no_cameras"
    check_test_set(dataset)  # every query has its match
    market = ReidDataset("folder", [Record("t", 9, 0)], query, gallery, protocol="market")
    with pytest.raises(InputError, match="test set folder: no query has a correct match"):
        check_test_set(market)


def test_market_protocol_is_one_ranking_of_the_records_as_loaded() -> None:
    pids, camids = np.array([1, 2, 1, 2]), np.array([0, 1, 1, 1])
    (split,) = PROTOCOLS.get("market")(pids, camids, 2)
    assert split.rows == slice(None) and split.num_query == 2
    assert split.camids.tolist() == [0, 1, 1, 1]


def vehicle_pids() -> np.ndarray:
    """Vehicles with 1 to 5 images, interleaved as a list file might order them."""
    counts = {11: 3, 4: 1, 27: 5, 8: 2, 30: 4, 2: 2}
    pids = np.array([pid for pid, n in counts.items() for _ in range(n)])
    return pids[np.random.default_rng(1).permutation(len(pids))]


def test_vehicleid_splits_follow_the_definition() -> None:
    pids = vehicle_pids()
    splits = PROTOCOLS.get("vehicleid")(pids, np.full(len(pids), NO_CAMERA), num_query=10)
    assert len(splits) == vehicleid_protocol.TRIALS == 10
    galleries = []
    for rows, num_query, camids in splits:
        query, gallery = list(rows[:num_query]), list(rows[num_query:])
        # One gallery image per vehicle, every other image a query, each image once.
        assert sorted(pids[gallery].tolist()) == sorted(set(pids.tolist()))
        assert sorted(query + gallery) == list(range(len(pids)))
        # Vehicle 4 has a single image: never a query.
        assert 4 not in pids[query]
        # No cameras: nothing is left out of a query's ranking, so the labels differ.
        assert set(camids[:num_query]) == {0} and set(camids[num_query:]) == {1}
        galleries.append(tuple(sorted(gallery)))
    assert len(set(galleries)) > 1  # the trials differ...
    again = PROTOCOLS.get("vehicleid")(pids, np.full(len(pids), NO_CAMERA), num_query=10)
    assert [tuple(s.rows) for s in again] == [tuple(s.rows) for s in splits]  # ...seeded


def test_vehicleid_gallery_image_is_drawn_uniformly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vehicleid_protocol, "TRIALS", 4000)
    pids = vehicle_pids()
    splits = PROTOCOLS.get("vehicleid")(pids, np.full(len(pids), NO_CAMERA), num_query=10)
    picks = np.concatenate([s.rows[s.num_query :] for s in splits])
    for pid in (11, 27, 30):
        rows = np.flatnonzero(pids == pid)
        share = np.array([(picks == row).sum() for row in rows]) / len(splits)
        # Each of a vehicle's n images is its gallery image in 1/n of the trials (±5 sd).
        sd = np.sqrt((1 / len(rows)) * (1 - 1 / len(rows)) / len(splits))
        assert np.all(np.abs(share - 1 / len(rows)) < 5 * sd), (pid, share)


def test_vehicleid_metrics_are_the_mean_over_trials_of_the_definition() -> None:
    """Per trial, a query's single correct match is its vehicle's gallery image: its AP
    and INP are 1 / that image's rank, and CMC@k says whether the rank is <= k."""
    pids = vehicle_pids()
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(len(pids), 6)) + 1.2 * rng.normal(size=(40, 6))[pids]
    camids = np.full(len(pids), NO_CAMERA)
    ranking = ProtocolRanking(torch.from_numpy(feats).float(), pids, camids, 10, "vehicleid")
    cmc, mean_ap, mean_inp = ranking.metrics()

    trial_cmc, trial_ap = [], []
    for split in ranking.splits:
        rows = split.rows.tolist()
        query, gallery = rows[: split.num_query], rows[split.num_query :]
        distances = cosine_distances(feats, query, gallery)
        ranks = []
        for row, q in enumerate(query):
            match = next(k for k, g in enumerate(gallery) if pids[g] == pids[q])
            ranks.append(
                1 + sum(distances[row, k] < distances[row, match] for k in range(len(gallery)))
            )
        trial_cmc.append([np.mean([r <= k for r in ranks]) for k in range(1, 51)])
        trial_ap.append(np.mean([1 / r for r in ranks]))
    assert np.allclose(cmc, np.mean(trial_cmc, axis=0))
    assert mean_ap == pytest.approx(np.mean(trial_ap), abs=1e-6)
    assert mean_inp == pytest.approx(np.mean(trial_ap), abs=1e-6)  # one match: INP = AP
    assert 0 < cmc[0] < 1  # neither trivial nor hopeless: the check has teeth
