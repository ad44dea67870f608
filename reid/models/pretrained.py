"""ImageNet (or earlier reid) weights for a backbone: a given file, the cache, a download.

:func:`load_imagenet_weights` looks in this order:

1. ``MODEL.PRETRAIN_PATH``, a local file, when set;
2. the library's own cache: a backbone that knows its library (``timm/<name>``) loads
   through its ``load_library_weights()``; the others look in torch's hub cache
   (``torch.hub.get_dir()/checkpoints``, where torchvision keeps its downloads) for the
   file of :data:`IMAGENET_WEIGHTS`;
3. a download of that file into the cache, with torch.hub's progress bar.

Offline with nothing cached, the error is one line naming the file and the folder to
put it in. A file that fills less than half of the backbone is an error too
(:func:`load_pretrained`), never a warning.
"""

import contextlib
import logging
import socket
import urllib.error
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import resnet as tv_resnet

from reid.errors import ReidError
from reid.utils.io import safe_torch_load

logger = logging.getLogger(__name__)

# Prefixes that wrap backbone keys in other checkpoints: DataParallel ("module."),
# this framework's ReidModel ("backbone."), Bag-of-Tricks' Baseline ("base.").
_WRAPPER_PREFIXES = ("module.",)
_BACKBONE_PREFIXES = ("backbone.", "base.")
# Keys of an ImageNet classifier (torchvision's fc / classifier / head, Torchreid's
# OSNet embedding fc and classifier), which a reid backbone never has: a file's keys
# under these prefixes that the backbone lacks are dropped without a word.
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.")
# BatchNorm's step counter: old files lack it and it is no weight, so it is neither
# counted nor reported.
_STEP_COUNTER = "num_batches_tracked"
# How many key names a summary shows before "...".
_SHOWN_NAMES = 5
_TORCHVISION_PREFIX = "torchvision/"
_TORCHREID_ZOO = "Torchreid's model zoo, https://kaiyangzhou.github.io/deep-person-reid/MODEL_ZOO"
_PRETRAIN_PATH_ADVICE = "or set MODEL.PRETRAIN_PATH to a local weights file"
# Seconds a download may wait on one connect or read: a network that drops packets
# must end in the offline message, not hang (torch.hub sets no timeout of its own).
_SOCKET_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's ImageNet weights come from.

    Attributes:
        file_name: the file's name in the cache folder.
        url: where the library downloads it from; ``""`` when it cannot (the file is
            fetched by hand from ``origin``).
        hash_prefix: leading hex digits of the file's SHA-256, checked after a download
            (torchvision's file names carry them); None checks nothing.
        origin: where the file is published, for the message when it is missing.
    """

    file_name: str
    url: str = ""
    hash_prefix: str | None = None
    origin: str = ""


def _from_torchvision(weights: torchvision.models.WeightsEnum) -> WeightsSource:
    """The source of a torchvision weights enum member (its URL, file name and hash)."""
    file_name = Path(urlparse(weights.url).path).name
    found = torch.hub.HASH_REGEX.search(file_name)
    return WeightsSource(file_name, weights.url, found.group(1) if found else None, weights.url)


_IBN_A_URL = (
    "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_a-d9d0bb7b.pth"
)

# Backbone name -> its ImageNet weights. The ResNets take torchvision's IMAGENET1K_V1,
# the weights the Bag-of-Tricks results were obtained with; ``torchvision/<name>``
# backbones take their enum's DEFAULT (see :func:`library_weights`).
IMAGENET_WEIGHTS: dict[str, WeightsSource] = {
    "resnet18": _from_torchvision(tv_resnet.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": _from_torchvision(tv_resnet.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": _from_torchvision(tv_resnet.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": _from_torchvision(tv_resnet.ResNet101_Weights.IMAGENET1K_V1),
    "resnet152": _from_torchvision(tv_resnet.ResNet152_Weights.IMAGENET1K_V1),
    # The IBN-Net authors' release (github.com/XingangPan/IBN-Net, v1.0); the name's
    # suffix is not documented as a hash, so none is checked.
    "resnet50_ibn_a": WeightsSource(Path(_IBN_A_URL).name, _IBN_A_URL, None, _IBN_A_URL),
    # Torchreid's releases live on Google Drive, which needs a browser-like client: these
    # are only ever read from the cache, under the names Torchreid caches them as.
    **{
        name: WeightsSource(f"{name}_imagenet.pth", origin=_TORCHREID_ZOO)
        for name in ("osnet_x1_0", "osnet_x0_75", "osnet_x0_5", "osnet_x0_25", "osnet_ibn_x1_0")
    },
}


def library_weights(backbone_name: str) -> WeightsSource | None:
    """The ImageNet weights of a backbone: :data:`IMAGENET_WEIGHTS`, or for
    ``torchvision/<name>`` its weights enum's DEFAULT; None when none is known."""
    if backbone_name in IMAGENET_WEIGHTS:
        return IMAGENET_WEIGHTS[backbone_name]
    if backbone_name.startswith(_TORCHVISION_PREFIX):
        try:
            weights = torchvision.models.get_model_weights(
                backbone_name.removeprefix(_TORCHVISION_PREFIX)
            )
        except ValueError:  # not a torchvision model
            return None
        return _from_torchvision(weights.DEFAULT)
    return None


def cache_dir() -> Path:
    """torch.hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``, by default
    ``~/.cache/torch/hub/checkpoints``), which torchvision and this library share."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_cached_weights(backbone_name: str) -> Path | None:
    """ImageNet weights for a backbone already in :func:`cache_dir`.

    Prefers the file of :func:`library_weights`, then other files torchvision downloads
    for the model (e.g. ``resnet50-11ad3fa6.pth``, its IMAGENET1K_V2), then any
    ``<model>-*.pth``.

    Args:
        backbone_name: a name ``BACKBONES.get`` accepts.

    Returns:
        The path of the cached file, or None when none is cached.
    """
    model = backbone_name.removeprefix(_TORCHVISION_PREFIX)
    folder = cache_dir()
    source = library_weights(backbone_name)
    preferred = [source.file_name] if source else []
    with contextlib.suppress(ValueError):  # a torchvision model: the files it downloads
        preferred += [Path(w.url).name for w in torchvision.models.get_model_weights(model)]
    found = [folder / name for name in dict.fromkeys(preferred) if (folder / name).is_file()]
    found += [p for p in sorted(folder.glob(f"{model}-*.pth")) if p not in found]
    if len(found) > 1:
        logger.info("several cached weights for %s; using %s", backbone_name, found[0].name)
    return found[0] if found else None


def load_imagenet_weights(backbone: nn.Module, name: str, path: str | Path = "") -> None:
    """Fills ``backbone`` with ImageNet weights: from ``path``, else the cache, else a
    download into the cache (see the module docstring for the order).

    Args:
        backbone: the backbone to fill, modified in place. One with a
            ``load_library_weights()`` method (``timm/<name>``) loads itself when
            ``path`` is empty.
        name: its registry name, which picks the weights (:func:`library_weights`).
        path: a local weights file (``MODEL.PRETRAIN_PATH``); ``""`` for the library's.

    Raises:
        ReidError: no weights can be had (one line naming the file to put where), or
            the file does not fit the backbone (:func:`load_pretrained`).
    """
    if path:
        load_pretrained(backbone, path, name=name)
        return
    load_library = getattr(backbone, "load_library_weights", None)
    if callable(load_library):
        load_library()
        return
    source = library_weights(name)
    if source is None:
        raise ReidError(
            f"no ImageNet weights are known for backbone {name}: set MODEL.PRETRAIN_PATH "
            "to a local weights file"
        )
    cached = find_cached_weights(name)
    load_pretrained(backbone, cached or _download(source, name), name=name)


def _download(source: WeightsSource, name: str) -> Path:
    """Downloads ``source`` into the cache; returns the file's path."""
    target = cache_dir() / source.file_name
    if not source.url:
        raise ReidError(
            f"no ImageNet weights cached for backbone {name}: put {source.file_name} (from "
            f"{source.origin}) at {target}, {_PRETRAIN_PATH_ADVICE}"
        )
    logger.info("downloading ImageNet weights for backbone %s from %s", name, source.url)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _socket_timeout(_SOCKET_TIMEOUT_S):
            # Looked up at call time so tests can stand in for the network.
            torch.hub.download_url_to_file(
                source.url, str(target), source.hash_prefix, progress=True
            )
    except (urllib.error.URLError, OSError, RuntimeError) as err:  # offline, HTTP, disk, hash
        reason = " ".join(str(err).split())  # one line, whatever the error says
        raise ReidError(
            f"cannot download ImageNet weights for backbone {name} from {source.url} "
            f"({reason}): put that file at {target}, {_PRETRAIN_PATH_ADVICE}"
        ) from err
    return target


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Sets the default socket timeout for the block, unless one is already set."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds if previous is None else previous)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def load_pretrained(module: nn.Module, path: str | Path, name: str | None = None) -> None:
    """Copies the matching tensors of a local weights file into ``module``.

    Accepts a plain state dict (torchvision-style) or a checkpoint dict holding one
    under ``"model"`` or ``"state_dict"``. Wrapper prefixes (``module.``) are removed;
    if keys carry a backbone prefix (``backbone.``, ``base.``) only those are kept,
    without it. A module with an ``adapt_state_dict(state_dict) -> state_dict`` method
    gets the file's tensors through it first (renaming another layout's keys, resizing
    a position embedding). Then tensors are matched by name and shape.

    The rule: the file must fill at least half of the module's tensors (state-dict
    entries; BatchNorm's ``num_batches_tracked`` is not counted), else it is the wrong
    file and loading is an error. Expected misses are silent: the file's ImageNet
    classifier keys (``fc.*``, ``classifier.*``, ``head.*``) that the module lacks,
    and the step counters. Any other missing, unexpected or shape-mismatched key is
    logged as one warning summary; mismatched ones are skipped.

    Args:
        module: the backbone to fill, modified in place.
        path: the weights file.
        name: what to call ``module`` in messages (e.g. the backbone's registry name);
            defaults to its class name.

    Raises:
        ReidError: the file is missing or unreadable, holds no state dict, or fills less
            than half of the module's tensors (the message gives copied, expected,
            missing and unexpected counts and the first missing names).
    """
    path = Path(path)
    name = name or type(module).__name__
    source = _backbone_state_dict(_read_state_dict(path), path)
    adapt = getattr(module, "adapt_state_dict", None)
    if callable(adapt):
        source = dict(adapt(source))

    target = module.state_dict()
    matched: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []
    unexpected: list[str] = []
    for key, tensor in source.items():
        if key not in target:
            if not key.startswith(_CLASSIFIER_PREFIXES) and not key.endswith(_STEP_COUNTER):
                unexpected.append(key)
        elif tensor.shape != target[key].shape:
            mismatched.append(
                f"{key} (file {tuple(tensor.shape)} vs model {tuple(target[key].shape)})"
            )
        else:
            matched[key] = tensor
    expected = [k for k in target if not k.endswith(_STEP_COUNTER)]
    missing = [k for k in expected if k not in matched]
    copied = len(expected) - len(missing)

    if 2 * copied < len(expected):
        raise ReidError(
            f"{path} leaves most of backbone {name} uninitialised: copied {copied} of "
            f"{len(expected)} tensors (at least half must load); "
            + "; ".join(
                _summary(keys, label)
                for label, keys in (
                    ("missing", missing),
                    ("unexpected", unexpected),
                    ("shape-mismatched", mismatched),
                )
                if keys
            )
        )
    module.load_state_dict(matched, strict=False)

    level = logging.WARNING if missing or unexpected or mismatched else logging.INFO
    logger.log(
        level, "loaded %d/%d tensors of %s into backbone %s", copied, len(expected), path, name
    )
    for label, keys in (
        ("missing (left as initialised)", missing),
        ("unexpected (ignored)", unexpected),
        ("shape-mismatched (skipped)", mismatched),
    ):
        if keys:
            logger.warning("  %s", _summary(keys, label))


def _read_state_dict(path: Path) -> Mapping[str, object]:
    content = safe_torch_load(path, "pretrained weights file")
    if isinstance(content, Mapping):
        for wrapper_key in ("model", "state_dict"):
            if isinstance(content.get(wrapper_key), Mapping):
                return content[wrapper_key]
        return content
    raise ReidError(f"{path} holds a {type(content).__name__}, expected a state dict")


def _backbone_state_dict(raw: Mapping[str, object], path: Path) -> dict[str, torch.Tensor]:
    tensors = {_strip(k, _WRAPPER_PREFIXES): v for k, v in raw.items() if torch.is_tensor(v)}
    if any(k.startswith(_BACKBONE_PREFIXES) for k in tensors):
        kept = {
            _strip(k, _BACKBONE_PREFIXES): v
            for k, v in tensors.items()
            if k.startswith(_BACKBONE_PREFIXES)
        }
        logger.info(
            "%s: using its %d backbone tensors, ignoring %d others",
            path,
            len(kept),
            len(tensors) - len(kept),
        )
        tensors = kept
    return tensors


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _summary(keys: list[str], label: str) -> str:
    shown = ", ".join(keys[:_SHOWN_NAMES])
    more = f", ... ({len(keys) - _SHOWN_NAMES} more)" if len(keys) > _SHOWN_NAMES else ""
    return f"{len(keys)} {label}: [{shown}{more}]"
