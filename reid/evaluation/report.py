"""Result tables and ``metrics.json``."""

import json
from pathlib import Path

from reid.utils.io import write_text

_ORDER = ("rank1", "rank5", "rank10", "mAP", "mINP")


def format_results(metrics: dict[str, float]) -> str:
    """A two-line table of the ranking metrics, in percent."""
    names = [n for n in _ORDER if n in metrics]
    header = " | ".join(f"{n:>7}" for n in names)
    values = " | ".join(f"{100 * metrics[n]:>6.2f}%" for n in names)
    return f"{header}\n{values}"


def write_metrics(path: str | Path, metrics: dict[str, float | int | str]) -> None:
    """Writes metrics (fractions in [0, 1]) and any context to a JSON file, atomically."""
    write_text(path, json.dumps(metrics, indent=2) + "\n")
