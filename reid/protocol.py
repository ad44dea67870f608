"""The re-identification evaluation protocol's labels (Market-1501 and its kind), in one place.

Dataset parsers produce them and evaluation applies them.
"""

import numpy as np

# Junk images (pid -1): removed from every ranking (parsers drop them from datasets).
JUNK_PID = -1
# Distractors (pid 0): kept in the gallery as wrong matches of every query.
DISTRACTOR_PID = 0


def ignored(q_pid: int, q_camid: int, g_pids: np.ndarray, g_camids: np.ndarray) -> np.ndarray:
    """The gallery items a query's ranking leaves out, (G,) bool: junk items, and items
    of the query's identity seen by the query's own camera."""
    return (g_pids == JUNK_PID) | ((g_pids == q_pid) & (g_camids == q_camid))
