"""The protocol registry: name -> ``protocol(pids, camids, num_query) -> list[Split]``."""

from typing import NamedTuple

import numpy as np

from reid.registry import Registry


class Split(NamedTuple):
    """One query/gallery division of a test set's images, ranked under the one rule.

    Attributes:
        rows: which of the test images (query records, then gallery records, as
            loaded) are ranked, queries first: ``slice(None)`` for all of them in that
            order, else ``(Q + G,)`` indices.
        num_query: how many of the rows are queries.
        camids: ``(Q + G,)`` the camera labels the rule compares for those rows.
    """

    rows: slice | np.ndarray
    num_query: int
    camids: np.ndarray


# A protocol maps the test images' pids (N,), camera ids (N,) and the number of query
# records among them to its splits; the metrics are averaged over the splits.
PROTOCOLS = Registry("evaluation protocol")


def sides_as_cameras(num_query: int, num_gallery: int) -> np.ndarray:
    """``(Q + G,)`` camera labels 0 for the queries and 1 for the gallery, for protocols
    without cameras: the rule, which leaves out only same-camera matches, leaves out none."""
    return np.repeat(np.array([0, 1]), [num_query, num_gallery])
