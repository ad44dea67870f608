"""The decoded-image cache (``DATALOADER.CACHE ram``): training images decoded and resized
once, into one uint8 array on disk that every loader worker and local process maps.

Decoding a JPEG costs more than the flip, crop and erasing that follow it. The resize is
the first step of the training transform (AutoAugment aside), so a loader that starts
from the resized pixels (:func:`decoded_images`, :class:`CachedImageDataset`, and
``build_train_transform(..., resize=False)``) gives the batches the per-image path
(:class:`reid.data.ImageDataset`) gives, bit for bit.
"""

import contextlib
import hashlib
import json
import logging
import mmap
import numbers
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
import torchvision
from torchvision.transforms import v2
from tqdm import tqdm

from reid.data.datasets import DatasetError, Record
from reid.data.image_dataset import ImageDataset, read_image
from reid.errors import ReidError
from reid.utils import distributed
from reid.utils.io import user_cache_dir

logger = logging.getLogger(__name__)

# Part of the cache key: bump it when the file layout or the decoding changes, so that
# files written by an older version are rebuilt instead of reused.
FORMAT_VERSION = 1
# The cache folder inside the dataset root, when that root can be written.
CACHE_FOLDER = ".reid_cache"


def decoded_images(records: Sequence[Record], size: Sequence[int], root: str | Path) -> np.ndarray:
    """Every record's image decoded and resized once, as a read-only memory-mapped array.

    Row ``i`` holds exactly the pixels the training transform's resize makes of
    ``records[i]``: ``v2.Resize(size)`` of :func:`reid.data.image_dataset.read_image`.
    The rows live in one ``.npy`` file opened with ``np.load(mmap_mode="r")``: loader
    workers and local processes share its pages through the OS instead of each holding
    a copy.

    The file is named by a SHA-256 key of ``size``, the Pillow and torchvision versions
    and every record's path, file size and modification time (in order), and reused
    while those are unchanged; a changed, added or removed image gives another key,
    hence a new build. A file with the right name that cannot be loaded or holds the
    wrong shape or dtype (truncated, corrupt) is rebuilt with a warning. It is kept in
    ``<root>/.reid_cache/`` when that folder can be written, else in
    ``$XDG_CACHE_HOME/reid/decoded`` (``~/.cache/reid/decoded``); a valid file already in
    either is reused. A build goes through a temporary file renamed into
    place, so an interrupted build never leaves a partial file under the real name.

    Under torchrun rank 0 builds first; the other ranks then open its file, or build
    their own where they do not see it (another node without a shared file system).

    Args:
        records: the training records, N of them.
        size: ``[H, W]``, the training size (``INPUT.SIZE_TRAIN``).
        root: the dataset root the cache folder goes in.

    Returns:
        A read-only ``np.memmap`` of uint8, shape (N, H, W, 3).

    Raises:
        DatasetError: an image is missing or cannot be read; the message names it.
        ReidError: no records, a bad ``size``, or no cache folder can be written.
    """
    height, width = _check_size(size)
    records = list(records)
    if not records:
        raise ReidError("the decoded-image cache got no records; expected training images")
    key = _cache_key(records, (height, width))
    name = f"decoded-{key[:16]}-{height}x{width}.npy"
    shape = (len(records), height, width, 3)
    with distributed.main_first():
        images, path, built = _open_or_build(records, shape, name, Path(root))
    logger.info(
        "%s decoded-image cache %s: %d images at %dx%d, %.1f MB",
        "built" if built else "reusing",
        path,
        len(records),
        height,
        width,
        images.nbytes / 2**20,
    )
    return images


class CachedImageDataset(ImageDataset):
    """An :class:`reid.data.ImageDataset` whose images come decoded and resized from
    :func:`decoded_images` instead of from their files; indexed the same way, so the
    same sample seed gives the same augmentation. Pickled (a spawned worker), a
    memory-mapped array travels as its file and is mapped again, not copied.

    Args:
        images: uint8 array (N, H, W, 3), e.g. from :func:`decoded_images`.
        records: the N ``(path, pid, camid)`` records, in the same order.
        transform: maps a uint8 tensor (3, H, W) to a tensor (3, H, W), e.g.
            ``build_train_transform(..., resize=False)``.

    Raises:
        ReidError: ``images`` is not uint8 (N, H, W, 3), or N differs from the number of
            records.
    """

    def __init__(self, images: np.ndarray, records: Sequence[Record], transform: Callable) -> None:
        super().__init__(records, transform)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ReidError(
                f"cached images are {images.dtype} of shape {images.shape}; "
                "expected uint8 (N, H, W, 3)"
            )
        if len(images) != len(self.records):
            raise ReidError(
                f"the image cache holds {len(images)} images but there are "
                f"{len(self.records)} records; expected one image per record"
            )
        self.images = images

    def image(self, index: int) -> torch.Tensor:
        """uint8 (3, H, W): one copy out of the shared read-only pages, in that layout."""
        return torch.from_numpy(np.array(self.images[index].transpose(2, 0, 1), order="C"))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        images = self.images
        # Only a whole mapped file (its base is the mmap itself, not a view of a view) can
        # be described by its file, offset and shape.
        if isinstance(images, np.memmap) and isinstance(images.base, mmap.mmap):
            state["images"] = _MappedArray(
                str(images.filename), images.offset, images.shape, images.dtype.str
            )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["images"], _MappedArray):
            mapped = state["images"]
            state["images"] = np.memmap(
                mapped.filename,
                dtype=mapped.dtype,
                mode="r",
                offset=mapped.offset,
                shape=mapped.shape,
            )
        self.__dict__.update(state)


class _MappedArray:
    """A read-only memory-mapped array as pickled: where its bytes are, not the bytes."""

    def __init__(self, filename: str, offset: int, shape: tuple[int, ...], dtype: str) -> None:
        self.filename = filename
        self.offset = offset
        self.shape = shape
        self.dtype = dtype


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    values = list(size)
    if len(values) != 2 or not all(isinstance(v, numbers.Integral) and v > 0 for v in values):
        raise ReidError(f"image cache size {values} is not [H, W] with positive integers")
    return int(values[0]), int(values[1])


def _cache_key(records: Sequence[Record], size: tuple[int, int]) -> str:
    """SHA-256 hex of what the decoded pixels depend on: the images as files on disk and
    the resize, including the libraries that implement it."""
    description = {
        "format": FORMAT_VERSION,
        "size": list(size),
        # Pillow decodes and resamples, torchvision picks the filter: a new version may
        # change the pixels the per-image path produces.
        "pillow": PIL.__version__,
        "torchvision": torchvision.__version__,
        "images": [[str(r.path), *_file_stamp(r.path)] for r in records],
    }
    return hashlib.sha256(json.dumps(description).encode()).hexdigest()


def _file_stamp(path: str) -> tuple[int, int]:
    """``(size in bytes, mtime in ns)`` of an image file."""
    try:
        stat = os.stat(path)
    except OSError as err:
        raise DatasetError(f"cannot read image {path}: {err.strerror or err}") from None
    return stat.st_size, stat.st_mtime_ns


def _open_or_build(
    records: Sequence[Record], shape: tuple[int, int, int, int], name: str, root: Path
) -> tuple[np.ndarray, Path, bool]:
    """The cache file's array, its path, and whether it was built now."""
    folders = [root / CACHE_FOLDER] if root.is_dir() else []
    folders.append(user_cache_dir("decoded"))
    for folder in folders:
        if (folder / name).exists():
            images = _open(folder / name, shape)
            if images is not None:
                return images, folder / name, False
    writable = next((folder for folder in folders if _is_writable(folder)), None)
    if writable is None:
        tried = " nor ".join(str(folder) for folder in folders)
        raise ReidError(
            f"cannot write the decoded-image cache: neither {tried} can be written; "
            "free one of them or set DATALOADER.CACHE none"
        )
    path = writable / name
    _build(records, shape, path)
    images = _open(path, shape)
    if images is None:
        raise ReidError(f"the decoded-image cache {path} cannot be read back after building it")
    return images, path, True


def _is_writable(folder: Path) -> bool:
    """True when ``folder`` exists or can be made, and a file can be created in it.

    A file is really made: permission bits say nothing of a read-only mount, and nothing
    at all to root.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return False
    return True


def _open(path: Path, shape: tuple[int, int, int, int]) -> np.ndarray | None:
    """The file's array mapped read-only, or None (with a warning) when it is unusable."""
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    else:
        if images.dtype == np.uint8 and images.shape == shape and images.flags.c_contiguous:
            return images
        reason = f"it holds {images.dtype} {images.shape}, expected uint8 {shape}"
    logger.warning("decoded-image cache %s is unusable (%s); building it again", path, reason)
    return None


def _build(records: Sequence[Record], shape: tuple[int, int, int, int], path: Path) -> None:
    """Decodes every record into the ``.npy`` file ``path``, one row at a time.

    The rows are written, not stored through a writable memory map: a full disk is then
    an error naming the file instead of a SIGBUS that kills the process.
    """
    _, height, width, _ = shape
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
        "fortran_order": False,
        "shape": shape,
    }
    tmp: Path | None = None
    try:
        # A name of its own: ranks on one node without the file build side by side.
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        with os.fdopen(handle, "wb") as file:
            np.lib.format.write_array_header_1_0(file, header)
            for record in tqdm(records, desc="decoding training images", unit="image"):
                file.write(_decode(record.path, (height, width)).tobytes())
            file.flush()
            os.fsync(file.fileno())
        # mkstemp makes the file private; the cache is as readable as the images it holds.
        tmp.chmod(0o644)
        os.replace(tmp, path)
    except OSError as err:
        raise ReidError(
            f"cannot write the decoded-image cache {path}: {err.strerror or err}"
        ) from None
    finally:  # a failed decode or a Ctrl-C too; after the rename there is nothing left
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def _decode(path: str, size: tuple[int, int]) -> np.ndarray:
    """The (H, W, 3) uint8 pixels the per-image path resizes ``path`` to."""
    return np.asarray(v2.Resize(size)(read_image(path)))
