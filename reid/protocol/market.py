"""One ranking of the query records against the gallery records: Market-1501's protocol,
and the same without camera ids."""

import numpy as np

from reid.protocol.registry import PROTOCOLS, Split, sides_as_cameras


@PROTOCOLS.register("market")
def market(pids: np.ndarray, camids: np.ndarray, num_query: int) -> list[Split]:
    """Each query against the whole gallery; gallery images of the query's identity seen
    by the query's own camera are left out (they could be near-duplicates of it)."""
    return [Split(slice(None), num_query, np.asarray(camids))]


@PROTOCOLS.register("no_cameras")
def no_cameras(pids: np.ndarray, camids: np.ndarray, num_query: int) -> list[Split]:
    """For datasets without camera ids: each query against the whole gallery, and every
    gallery image of its identity is a correct match; nothing is left out.

    The dataset's query and gallery folders are what keeps a query's near-duplicates out
    of its gallery, so they should hold different moments or places of each identity.
    (Under Market's rule, equal "no camera" labels would leave out every match.)
    """
    num_gallery = len(pids) - num_query
    return [Split(slice(None), num_query, sides_as_cameras(num_query, num_gallery))]
