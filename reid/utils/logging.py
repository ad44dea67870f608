"""Logging set-up for entry points: console plus ``OUTPUT_DIR/log.txt``."""

import logging
import sys
from pathlib import Path


def setup_logging(output_dir: str | Path | None = None, level: int = logging.INFO) -> None:
    """Sends ``reid`` log records to stderr and, when given, ``output_dir/log.txt``."""
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(output_dir) / "log.txt"))
    logger = logging.getLogger("reid")
    logger.handlers.clear()
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(level)
