"""Reading torch files without running code, and writing files atomically.

Every file this project loads with ``torch.load`` goes through :func:`safe_torch_load`,
and every file it writes for a run (checkpoints, ``config.yaml``, ``metrics.json``)
through :func:`atomic_write`, so that a bad file cannot execute code and a failed
write never leaves a half-written file in place of a good one.
"""

import contextlib
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from reid.errors import ReidError

# Checkpoints of earlier versions stored NumPy's RNG state as an ndarray. Rebuilding an
# array runs no code (its elements go through the same restricted unpickler), so these
# are allowed on top of torch's tensors and plain types.
_NUMPY_ARRAY_GLOBALS: list = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
try:  # NumPy >= 2 moved the reconstructor to numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct
_NUMPY_ARRAY_GLOBALS.append(_reconstruct)


def safe_torch_load(path: str | Path, what: str = "checkpoint") -> Any:
    """Loads a torch file onto the CPU without letting it run code.

    Only tensors, plain Python types (dict, list, tuple, str, numbers, None) and NumPy
    arrays are accepted (``torch.load(weights_only=True)``). A file that needs anything
    else, such as a pickled object whose unpickling would call a function, is refused
    before that function runs.

    Args:
        path: the file.
        what: what to call it in messages (``"checkpoint"``, ``"weights file"``).

    Returns:
        The loaded object.

    Raises:
        ReidError: the file is missing, unreadable or corrupt, or holds objects that
            could run code (the message names the first one).
    """
    path = Path(path)
    if not path.is_file():
        raise ReidError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise ReidError(f"cannot read {what} {path}: the file is empty (0 bytes)")
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)|got <class '([^']+)'>", str(err))
        if found:
            raise ReidError(
                f"refused to load {what} {path}: it holds a Python object ({found[1] or found[2]}) "
                "whose loading could run code, so it may be unsafe; reid files hold only tensors "
                "and plain types"
            ) from None
        problem = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
        reason = problem[1].strip() if problem else "not a torch file"
        raise ReidError(
            f"cannot read {what} {path}: {reason} (corrupt or not a torch file)"
        ) from None
    except Exception as err:  # torch raises many types for truncated or foreign files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if _INCOMPLETE.search(reason) or isinstance(err, EOFError):
            # torch's own text runs to several sentences of advice; its first clause says why.
            detail = reason.split(". ")[0].rstrip(".")
            raise ReidError(
                f"cannot read {what} {path}: the file is incomplete or corrupt ({detail}); "
                f"was it copied or saved completely? ({path.stat().st_size} bytes)"
            ) from None
        raise ReidError(f"cannot read {what} {path}: {reason}") from None


# What torch says of a file that ends early: a zip without its directory, a legacy file
# whose tensor bytes are cut.
_INCOMPLETE = re.compile(r"central directory|unexpected EOF|EOFError|Ran out of input", re.I)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Writes a file through ``write(file)`` so that ``path`` is never left half-written.

    The bytes go to a temporary file in the same folder, are flushed to disk, then
    renamed over ``path`` in one step. If anything fails (disk full, no permission, a
    Ctrl-C) the temporary file is removed and ``path`` keeps its previous content.

    Raises:
        ReidError: the folder or file cannot be written; the message names ``path`` and
            the reason (e.g. ``No space left on device``).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    file = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as raw:
            file = _WriteErrorRecorder(raw)
            write(file)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        # torch.save reports a failed write as its own RuntimeError; the OSError says why.
        cause = file.error if file is not None and file.error is not None else err
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
        kept = "; the previous file is unchanged" if path.exists() else ""
        raise ReidError(f"cannot write {path}: {reason.splitlines()[0]}{kept}") from None
    finally:  # any failure, a KeyboardInterrupt included; after the rename it is gone
        with contextlib.suppress(OSError):  # e.g. the folder itself could not be made
            tmp.unlink(missing_ok=True)


class _WriteErrorRecorder:
    """A binary file that remembers the first OSError its writes raised."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def write_text(path: str | Path, text: str) -> None:
    """Writes UTF-8 text atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda file: file.write(text.encode()))


def user_cache_dir(name: str) -> Path:
    """The user's cache folder for ``name``: ``$XDG_CACHE_HOME/reid/<name>``, or
    ``~/.cache/reid/<name>`` (the XDG spec ignores a relative ``XDG_CACHE_HOME``)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "reid" / name


def make_output_dir(path: str | Path, key: str = "OUTPUT_DIR") -> Path:
    """Creates ``path`` if needed and checks that files can be written in it.

    Raises:
        ReidError: ``path`` is a file, or the folder cannot be created or written.
    """
    path = Path(path)
    probe = path / ".write-test"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except FileExistsError:
        raise ReidError(f"{key} {path} is a file; expected a folder") from None
    except OSError as err:
        raise ReidError(f"{key} {path} cannot be written: {err.strerror or err}") from None
    return path
