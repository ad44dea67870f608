"""Result tables and ``metrics.json``."""

import json
from pathlib import Path
from typing import Any

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


def metrics_report(per_set: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ``metrics.json`` form of each test set's metrics: one set's metrics as they are
    (the form of single-dataset runs), several sets' keyed by the set's name."""
    return next(iter(per_set.values())) if len(per_set) == 1 else dict(per_set)


def format_report(report: dict[str, Any]) -> str:
    """:func:`format_results` of a :func:`metrics_report`, each set's under its name."""
    if report and all(isinstance(value, dict) for value in report.values()):
        return "\n".join(f"{name}\n{format_results(m)}" for name, m in report.items())
    return format_results(report)
