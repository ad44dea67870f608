"""VehicleID's protocol (Liu et al., CVPR 2016): a random gallery of one image per
vehicle, the other images as queries, repeated and averaged."""

import numpy as np

from reid.protocol.registry import PROTOCOLS, Split, sides_as_cameras

# The number of random splits averaged, and the seed that makes them the same every time.
TRIALS = 10
SEED = 0


@PROTOCOLS.register("vehicleid")
def vehicleid(pids: np.ndarray, camids: np.ndarray, num_query: int) -> list[Split]:
    """:data:`TRIALS` splits of all test images (query and gallery records alike): in
    each, one image per vehicle drawn at random is its gallery, the rest are queries.

    There are no cameras: each query's one correct match is its vehicle's gallery image.
    A vehicle with a single image is only ever a gallery image (a wrong match for the
    others). Split ``t`` draws from ``numpy.random.default_rng([SEED, t])``, so the
    splits depend only on the images' order, which the dataset's parser fixes.
    """
    pids = np.asarray(pids)
    return [_draw(pids, np.random.default_rng([SEED, trial])) for trial in range(TRIALS)]


def _draw(pids: np.ndarray, rng: np.random.Generator) -> Split:
    """One split: per vehicle (in order of pid) one of its rows, uniformly, to the gallery."""
    order = np.argsort(pids, kind="stable")  # rows grouped by vehicle, each group in row order
    grouped = pids[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    counts = np.diff(np.r_[starts, len(pids)])
    gallery = np.sort(order[starts + rng.integers(0, counts)])
    query = np.setdiff1d(np.arange(len(pids)), gallery)
    rows = np.concatenate([query, gallery])
    return Split(rows, len(query), sides_as_cameras(len(query), len(gallery)))
