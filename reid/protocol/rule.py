"""The re-identification ranking rule (Market-1501 and its kind), in one place.

Dataset parsers produce its labels; :func:`ignored` and :func:`correct_matches` are its
one rule, which the metrics (:class:`reid.evaluation.metrics.MarketRanker`), the
training pre-check (:func:`reid.evaluation.metrics.check_gallery_matches`) and the
ranked-list pictures (:mod:`reid.utils.visualization`) all apply, so they cannot
disagree. A protocol (:data:`reid.protocol.PROTOCOLS`) chooses which images are ranked
against which, and the camera labels this rule compares.
"""

from typing import Any

import numpy as np

# Junk images (pid -1): removed from every ranking (parsers drop them from datasets).
JUNK_PID = -1
# Distractors (pid 0): kept in the gallery as wrong matches of every query.
DISTRACTOR_PID = 0
# The camera id of a record whose dataset has no camera ids (custom folders, VehicleID).
NO_CAMERA = -1


def ignored(q_pids: Any, q_camids: Any, g_pids: Any, g_camids: Any) -> np.ndarray:
    """Which gallery items a query's ranking leaves out: junk items (pid -1), and items
    of the query's identity seen by the query's own camera.

    Everything else stays in the ranking, distractors (pid 0) included. Only junk
    items and items of the query's own identity are ever left out: the metrics rely
    on it to rank a query without sorting its row.

    Args:
        q_pids, q_camids: query labels of any shape ``S``: scalars for one query,
            ``(Q,)`` for a block of queries.
        g_pids, g_camids: gallery labels, ``(G,)`` shared by every query, or
            ``S + (G,)`` for gallery items chosen per query.

    Returns:
        ``S + (G,)`` bool, True where the item is left out.
    """
    q_pids, q_camids = np.asarray(q_pids)[..., None], np.asarray(q_camids)[..., None]
    return (g_pids == JUNK_PID) | ((g_pids == q_pids) & (g_camids == q_camids))


def correct_matches(q_pids: Any, q_camids: Any, g_pids: Any, g_camids: Any) -> np.ndarray:
    """Which gallery items count as correct matches of a query: items of its identity
    that :func:`ignored` keeps (so a junk query has none). Shapes as :func:`ignored`.

    Returns:
        ``S + (G,)`` bool.
    """
    same_identity = np.asarray(g_pids) == np.asarray(q_pids)[..., None]
    return same_identity & ~ignored(q_pids, q_camids, g_pids, g_camids)
