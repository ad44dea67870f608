from collections import Counter

import numpy as np
import pytest

from reid.data import PKSampler
from reid.errors import ReidError
from reid.utils import distributed


def _pids(seed: int = 0) -> list[int]:
    """Uneven identities: some with fewer than K images, some with many."""
    rng = np.random.default_rng(seed)
    counts = [1, 2, 3, 4, 5, 7, 9, 13, 20] + list(rng.integers(1, 15, size=21))
    return [pid for pid, n in enumerate(counts) for _ in range(n)]


@pytest.mark.parametrize(("p", "k"), [(4, 4), (8, 2), (3, 5)])
def test_every_batch_has_p_distinct_identities_with_k_images(p: int, k: int) -> None:
    pids = _pids()
    sampler = PKSampler(pids, batch_size=p * k, num_instances=k, seed=1)
    for _ in range(3):
        batches = list(sampler)
        assert len(batches) == len(sampler) > 0
        for batch in batches:
            assert len(batch) == p * k
            counts = Counter(pids[i] for i, _ in batch)
            assert len(counts) == p and set(counts.values()) == {k}


def test_an_epoch_visits_about_every_image_once() -> None:
    pids = _pids()
    p, k = 4, 4
    sampler = PKSampler(pids, batch_size=p * k, num_instances=k, seed=0)
    for _ in range(4):
        visits = Counter(i for batch in sampler for i, _ in batch)
        # Identities with at least K images contribute each image at least once,
        # except the few chunks left when fewer than P identities remain.
        coverage = len(visits) / len(pids)
        assert coverage > 0.9
        assert sum(visits.values()) <= sum(-(-pids.count(q) // k) * k for q in set(pids))


def test_images_within_an_identity_chunk_are_distinct_when_possible() -> None:
    pids = _pids()
    k = 4
    sampler = PKSampler(pids, batch_size=16, num_instances=k, seed=3)
    size = Counter(pids)
    for batch in sampler:
        for start in range(0, len(batch), k):
            chunk = [index for index, _ in batch[start : start + k]]
            if size[pids[chunk[0]]] >= k:
                assert len(set(chunk)) == k


def test_order_is_seeded_reshuffled_and_resumable() -> None:
    pids = _pids()
    a = PKSampler(pids, batch_size=16, num_instances=4, seed=7)
    b = PKSampler(pids, batch_size=16, num_instances=4, seed=7)
    epochs_a = [list(a) for _ in range(3)]
    assert epochs_a[0] == list(b)
    assert epochs_a[0] != epochs_a[1]  # reshuffled each epoch
    resumed = PKSampler(pids, batch_size=16, num_instances=4, seed=7)
    resumed.set_epoch(2)
    assert list(resumed) == epochs_a[2]
    resumed.set_epoch(1, start_batch=3)  # mid-epoch
    assert len(resumed) == len(epochs_a[1]) and list(resumed) == epochs_a[1][3:]
    assert list(resumed) == epochs_a[2]  # the next epoch starts from its first batch
    other_seed = PKSampler(pids, batch_size=16, num_instances=4, seed=8)
    assert list(other_seed) != epochs_a[0]


def test_too_few_identities_or_bad_batch_size() -> None:
    with pytest.raises(ReidError, match="needs 4 identities"):
        PKSampler([0, 0, 1, 1, 2, 2], batch_size=8, num_instances=2)
    with pytest.raises(ReidError, match="not a multiple"):
        PKSampler([0, 1, 2, 3], batch_size=6, num_instances=4)


def test_ranks_split_each_global_batch_into_whole_identities() -> None:
    """Concatenated in rank order, the ranks' batches are the single-process batches,
    augmentation seeds included."""
    pids = _pids()
    single = PKSampler(pids, batch_size=32, num_instances=4, seed=5)
    ranks = [PKSampler(pids, 32, 4, seed=5, rank=r, world_size=4) for r in range(4)]
    for epoch in range(2):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch)
        expected = list(single)
        per_rank = [list(sampler) for sampler in ranks]
        assert [sum(parts, []) for parts in zip(*per_rank, strict=True)] == expected
        for parts in zip(*per_rank, strict=True):
            assert all(len({pids[i] for i, _ in part}) == 2 for part in parts)


def test_augmentation_seeds_differ_within_an_epoch_and_between_epochs() -> None:
    pids = _pids()
    sampler = PKSampler(pids, batch_size=16, num_instances=4, seed=0)
    epochs = [[seed for batch in sampler for _, seed in batch] for _ in range(2)]
    assert len(set(epochs[0])) == len(epochs[0])  # repeated images get other seeds
    assert not set(epochs[0]) & set(epochs[1])


@pytest.mark.parametrize(("batch", "world", "fix"), [(64, 3, "60 or 72"), (8, 2, "16")])
def test_a_batch_that_cannot_be_split_names_the_fix(batch: int, world: int, fix: str) -> None:
    with pytest.raises(ReidError) as info:
        PKSampler(_pids(), batch_size=batch, num_instances=4, rank=0, world_size=world)
    message = str(info.value)
    assert f"cannot be split over {world} processes" in message
    assert f"(SOLVER.IMS_PER_BATCH) of {fix}" in message


@pytest.mark.parametrize(("num_items", "world"), [(10, 3), (2, 4), (7, 1), (0, 2)])
def test_evaluation_shards_cover_the_list_once_in_order(
    monkeypatch: pytest.MonkeyPatch, num_items: int, world: int
) -> None:
    shards = []
    for rank in range(world):
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        shards.append(distributed.shard(num_items))
    assert [i for shard in shards for i in shard] == list(range(num_items))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
