"""A training run's folder: used by one training at a time, never silently reused."""

import datetime
import logging
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from reid.errors import ReidError
from reid.utils import distributed
from reid.utils.io import make_output_dir

logger = logging.getLogger(__name__)

# A folder holding any of these holds a run worth keeping.
RUN_RESULTS = ("last.pth", "best.pth", "metrics.json")
# Everything a training writes at the top of its folder; --overwrite removes these.
RUN_FILES = (*RUN_RESULTS, "config.yaml", "log.txt", "tensorboard")
# What other tools derive from a run inside its folder (tools/test.py's results and
# pictures, exported models): --overwrite removes these too, so that a new run never
# sits beside results that look like its own.
DERIVED = ("test", "visual")
EXPORTED = ("*.onnx", "*.onnx.*")
LOCK_NAME = ".lock"


@contextmanager
def open_run_dir(
    output_dir: str | Path, resume: bool = False, overwrite: bool = False
) -> Iterator[Path]:
    """Creates and locks a training's ``OUTPUT_DIR`` for as long as the block runs.

    The lock is an OS file lock on ``OUTPUT_DIR/.lock``, released when the process
    ends however it ends (so a killed run can be resumed at once); the file names the
    holder for the error a second training gets. Under torchrun rank 0 does all this
    and the other ranks raise its error, if any.

    Args:
        output_dir: the run folder, created if missing.
        resume: the caller continues the run in it (``last.pth`` must exist).
        overwrite: remove a previous run's files (:data:`RUN_FILES`) and what was
            derived from it (:data:`DERIVED`, exported models: :data:`EXPORTED`) first.

    Yields:
        ``output_dir`` as a Path.

    Raises:
        ReidError: the folder cannot be written, another training holds it, it
            already holds a run and neither ``resume`` nor ``overwrite`` was asked,
            or ``resume`` finds nothing to resume.
    """
    if resume and overwrite:
        raise ReidError("--resume and --overwrite exclude each other: choose one")
    with ExitStack() as held:
        with distributed.main_first():  # rank 0 prepares the folder; the others learn how
            if distributed.is_main_process():
                folder = make_output_dir(output_dir)
                held.enter_context(_exclusive_lock(folder / LOCK_NAME))
                _check_previous_run(folder, resume, overwrite)
        yield Path(output_dir)


def _check_previous_run(folder: Path, resume: bool, overwrite: bool) -> None:
    found = [name for name in RUN_RESULTS if (folder / name).exists()]
    if resume and not (folder / "last.pth").is_file():
        raise ReidError(f"nothing to resume: no last.pth in {folder}")
    if found and not resume:
        if not overwrite:
            raise ReidError(
                f"{folder} already holds a run ({', '.join(found)}); continue it with "
                "--resume, choose another OUTPUT_DIR, or replace it with --overwrite"
            )
        paths = [folder / name for name in (*RUN_FILES, *DERIVED)]
        paths += [path for pattern in EXPORTED for path in sorted(folder.glob(pattern))]
        removed = [path.name for path in paths if path.exists() or path.is_symlink()]
        for path in paths:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        logger.info(
            "--overwrite: removed the previous run's %s from %s", ", ".join(removed), folder
        )


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive, non-blocking OS lock on ``path``; a held lock is a ReidError."""
    file = open(path, "a+")  # noqa: SIM115 - held open for as long as the lock
    try:
        try:
            _lock(file)
        except OSError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            raise ReidError(f"{path.parent} is in use by another training ({holder})") from None
        file.seek(0)
        file.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        file.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}")
        file.flush()
        yield
    finally:
        file.close()  # closing releases the lock


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock(file) -> None:
        file.seek(0)
        msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)

else:
    import fcntl

    def _lock(file) -> None:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
