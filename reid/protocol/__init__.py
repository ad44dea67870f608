"""How a test set is evaluated: the ranking rule, and the named protocols that apply it.

A dataset names its protocol (:attr:`reid.data.datasets.ReidDataset.protocol`); the
protocol divides the test images into one or more query/gallery splits (:class:`Split`), each
ranked under the one rule of :mod:`reid.protocol.rule`, and the metrics are averaged
over the splits. The evaluator never asks which dataset it ranks.
"""

from reid.protocol import market, vehicleid  # noqa: F401  (register entries)
from reid.protocol.registry import PROTOCOLS, Split
from reid.protocol.rule import (
    DISTRACTOR_PID,
    JUNK_PID,
    NO_CAMERA,
    correct_matches,
    ignored,
)

__all__ = [
    "DISTRACTOR_PID",
    "JUNK_PID",
    "NO_CAMERA",
    "PROTOCOLS",
    "Split",
    "correct_matches",
    "ignored",
]
