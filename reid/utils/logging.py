"""Logging set-up for entry points: console plus ``OUTPUT_DIR/log.txt``."""

import logging
import sys
from pathlib import Path

from reid.utils import distributed


def setup_logging(output_dir: str | Path | None = None, level: int = logging.INFO) -> None:
    """Sends ``reid`` log records to stderr and, when given, ``output_dir/log.txt``.

    Under torchrun only rank 0 does so; the other ranks print warnings and errors to
    the console, tagged with their rank, and write no file.
    """
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if not distributed.is_main_process():
        fmt = f"[rank {distributed.rank()}] {fmt}"
        level = max(level, logging.WARNING)
    elif output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(output_dir) / "log.txt"))
    formatter = logging.Formatter(fmt, "%H:%M:%S")
    logger = logging.getLogger("reid")
    logger.handlers.clear()
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(level)
