"""PK identity sampling: every batch holds P identities x K images each."""

from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
from torch.utils.data import Sampler

from reid.errors import ReidError


class Sample(NamedTuple):
    """One item of a batch: a dataset index and the seed of its augmentation."""

    index: int
    seed: int


class PKSampler(Sampler[list[Sample]]):
    """Batch sampler for metric learning: P distinct identities x K images per batch.

    Each epoch, every identity's images are shuffled and cut into chunks of K; an
    identity with fewer than K images is topped up by sampling its own images with
    replacement, and a last partial chunk is completed with other images of the
    same identity. Batches then draw P distinct identities, each giving one chunk,
    with probability proportional to the chunks it has left, so identities run out
    together and an epoch visits every training image about once (only the chunks
    left when fewer than P identities remain are skipped).

    Order is a pure function of ``(seed, epoch)``: ``set_epoch`` makes a resumed
    run see the same batches. So is augmentation: each item carries a seed drawn
    from ``(seed, epoch, batch, slot)``, which :class:`reid.data.ImageDataset` uses
    for its random transforms, so the images a step sees do not depend on the loader's
    worker count or on the number of processes.

    Distributed (``world_size`` W > 1): every rank derives the same global batch of P
    identities and yields its own P / W whole identities (rank ``r`` the ``r``-th
    group of them), so the global batch, in rank order, is the single-process batch.

    Args:
        pids: the identity of each dataset index, length N.
        batch_size: P x K, the global batch.
        num_instances: K.
        seed: base seed; epoch ``e`` uses ``(seed, e)``.
        rank: this process's rank.
        world_size: W, the number of processes sharing each batch.

    Raises:
        ReidError: the batch is not P x K, the training set has fewer than P
            identities, or P cannot be split into W groups of at least 2 identities.
    """

    def __init__(
        self,
        pids: Sequence[int],
        batch_size: int,
        num_instances: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % num_instances:
            raise ReidError(
                f"batch size {batch_size} is not a multiple of {num_instances} images per identity"
            )
        self.num_identities = batch_size // num_instances
        self.num_instances = num_instances
        per_rank, left = divmod(self.num_identities, world_size)
        if world_size > 1 and (left or per_rank < 2):
            p, w = self.num_identities, world_size
            fits = sorted({max(2 * w, p // w * w), max(2 * w, -(-p // w) * w)})
            sizes = " or ".join(str(fit * num_instances) for fit in fits)
            raise ReidError(
                f"a global batch of P = {self.num_identities} identities x K = {num_instances} "
                f"cannot be split over {world_size} processes: each needs a whole number of "
                f"identities, at least 2; use a batch size (SOLVER.IMS_PER_BATCH) of {sizes}, "
                "or another number of processes"
            )
        self.rank_slice = slice(rank * per_rank, (rank + 1) * per_rank)
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0
        indices_of = defaultdict(list)
        for index, pid in enumerate(pids):
            indices_of[pid].append(index)
        self._indices = [np.array(indices_of[pid]) for pid in sorted(indices_of)]
        if len(self._indices) < self.num_identities:
            raise ReidError(
                f"a batch needs {self.num_identities} identities (batch size {batch_size} / "
                f"{num_instances} per identity) but the training set has {len(self._indices)}"
            )
        self._cache: tuple[int, list[list[np.ndarray]]] | None = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Selects the epoch whose batches the next iteration yields.

        Args:
            epoch: 0-based epoch.
            start_batch: skip the epoch's first batches, to resume mid-epoch; the next
                iteration starts with batch ``start_batch`` of that epoch.
        """
        self.epoch = epoch
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[list[Sample]]:
        epoch, first = self.epoch, self.start_batch
        batches = self._batches(epoch)[first:]
        self.epoch += 1
        self.start_batch = 0
        k = self.num_instances
        slots = range(self.rank_slice.start * k, self.rank_slice.stop * k)
        for number, chunks in enumerate(batches, start=first):
            seeds = np.random.SeedSequence([self.seed, epoch, number]).generate_state(
                self.num_identities * k
            )
            indices = np.concatenate(chunks[self.rank_slice])
            yield [Sample(int(i), int(seeds[s])) for i, s in zip(indices, slots, strict=True)]

    def __len__(self) -> int:
        """Batches in the selected epoch, counting those ``start_batch`` skips."""
        return len(self._batches(self.epoch))

    def _batches(self, epoch: int) -> list[list[np.ndarray]]:
        """Batches of ``epoch``, each a list of P chunks of K dataset indices."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        chunks = [self._chunks(indices, rng) for indices in self._indices]
        left = np.array([len(c) for c in chunks], dtype=np.float64)
        batches = []
        while np.count_nonzero(left) >= self.num_identities:
            probs = left / left.sum()
            chosen = rng.choice(len(chunks), self.num_identities, replace=False, p=probs)
            batches.append([chunks[i].pop() for i in chosen])
            left[chosen] -= 1
        self._cache = (epoch, batches)
        return batches

    def _chunks(self, indices: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        k = self.num_instances
        order = rng.permutation(indices)
        if len(order) < k:
            order = np.concatenate([order, rng.choice(indices, k - len(order), replace=True)])
        elif remainder := len(order) % k:
            # Complete the last chunk with images of this identity that it does not hold.
            fill = rng.choice(order[:-remainder], k - remainder, replace=False)
            order = np.concatenate([order, fill])
        return list(order.reshape(-1, k))
