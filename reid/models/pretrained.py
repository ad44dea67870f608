"""Loading ImageNet (or earlier reid) weights into a backbone from local files only.

Nothing here downloads. With no explicit file, the weights must already be in
torch's hub cache (``torch.hub.get_dir()/checkpoints``), where torchvision keeps
the files it has downloaded before.
"""

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision
from torch import nn

from reid.errors import ReidError
from reid.utils.io import safe_torch_load

logger = logging.getLogger(__name__)

# Prefixes that wrap backbone keys in other checkpoints: DataParallel ("module."),
# this framework's ReidModel ("backbone."), Bag-of-Tricks' Baseline ("base.").
_WRAPPER_PREFIXES = ("module.",)
_BACKBONE_PREFIXES = ("backbone.", "base.")
# Keys of an ImageNet classifier, which a reid backbone never has.
_CLASSIFIER_PREFIXES = ("fc.",)
# How many key names a summary line shows before "...".
_SHOWN_NAMES = 5

# Cache file names, preferred first. torchvision's IMAGENET1K_V1 files come first:
# they are the weights the Bag-of-Tricks results were obtained with.
KNOWN_WEIGHT_FILES: dict[str, tuple[str, ...]] = {
    "resnet18": ("resnet18-f37072fd.pth",),
    "resnet34": ("resnet34-b627a593.pth",),
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
    "resnet101": ("resnet101-63fe2227.pth", "resnet101-cd907fc2.pth"),
    "resnet152": ("resnet152-394f9c45.pth", "resnet152-f82ba261.pth"),
    # Released with IBN-Net (github.com/XingangPan/IBN-Net, v1.0).
    "resnet50_ibn_a": ("resnet50_ibn_a-d9d0bb7b.pth",),
}


def find_cached_weights(backbone_name: str) -> Path:
    """Finds ImageNet weights for a backbone in the local torch hub cache.

    Looks in ``<hub dir>/checkpoints`` for the files torchvision downloads for the
    model (``torchvision/<name>`` backbones included, e.g. ``convnext_tiny-983f1562.pth``),
    for :data:`KNOWN_WEIGHT_FILES`, and for ``<name>-*.pth``, preferring the known files.

    Args:
        backbone_name: a name ``BACKBONES.get`` accepts.

    Returns:
        The path of the cached file.

    Raises:
        ReidError: no such file is cached; the message says how to provide one.
    """
    model = backbone_name.removeprefix("torchvision/")
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    preferred = list(KNOWN_WEIGHT_FILES.get(backbone_name, ()))
    with contextlib.suppress(ValueError):  # a torchvision model: the files it downloads
        preferred += [Path(w.url).name for w in torchvision.models.get_model_weights(model)]
    found = [cache_dir / name for name in dict.fromkeys(preferred) if (cache_dir / name).is_file()]
    found += [p for p in sorted(cache_dir.glob(f"{model}-*.pth")) if p not in found]
    if not found:
        expected = preferred[0] if preferred else f"{model}-<hash>.pth"
        raise ReidError(
            f"no ImageNet weights for backbone {backbone_name!r}: set MODEL.PRETRAIN_PATH "
            f"to a local .pth file, or place {expected} in {cache_dir} "
            "(weights are never downloaded)"
        )
    if len(found) > 1:
        logger.info("several cached weights for %s; using %s", backbone_name, found[0].name)
    return found[0]


def load_pretrained(module: nn.Module, path: str | Path, name: str | None = None) -> None:
    """Copies the matching tensors of a local weights file into ``module``.

    Accepts a plain state dict (torchvision-style) or a checkpoint dict holding one
    under ``"model"`` or ``"state_dict"``. Wrapper prefixes (``module.``) are removed;
    if keys carry a backbone prefix (``backbone.``, ``base.``) only those are kept,
    without it. ImageNet classifier keys (``fc.*``) are ignored. Missing, unexpected
    and shape-mismatched keys are logged as one summary; mismatched ones are skipped.

    Args:
        module: the backbone to fill, modified in place.
        path: the weights file.
        name: what to call ``module`` in messages (e.g. the backbone's registry name);
            defaults to its class name.

    Raises:
        ReidError: the file is missing or unreadable, holds no state dict, or none of
            its tensors matches a parameter of ``module`` in name and shape.
    """
    path = Path(path)
    name = name or type(module).__name__
    source = _backbone_state_dict(_read_state_dict(path), path)

    target = module.state_dict()
    matched: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []
    unexpected: list[str] = []
    for key, tensor in source.items():
        if key not in target:
            unexpected.append(key)
        elif tensor.shape != target[key].shape:
            mismatched.append(
                f"{key} (file {tuple(tensor.shape)} vs model {tuple(target[key].shape)})"
            )
        else:
            matched[key] = tensor
    # Old checkpoints lack BatchNorm's step counter; it is not a weight worth a warning.
    missing = [k for k in target if k not in matched and not k.endswith("num_batches_tracked")]

    if not matched:
        raise ReidError(
            f"no parameter of {path} matches backbone {name}: "
            f"{_summary(list(source), 'file keys')}; {_summary(list(target), 'model keys')}"
        )
    module.load_state_dict(matched, strict=False)

    level = logging.WARNING if missing or unexpected or mismatched else logging.INFO
    logger.log(
        level, "loaded %d/%d tensors of %s into backbone %s", len(matched), len(target), path, name
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
    return {k: v for k, v in tensors.items() if not k.startswith(_CLASSIFIER_PREFIXES)}


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _summary(keys: list[str], label: str) -> str:
    shown = ", ".join(keys[:_SHOWN_NAMES])
    more = f", ... ({len(keys) - _SHOWN_NAMES} more)" if len(keys) > _SHOWN_NAMES else ""
    return f"{len(keys)} {label}: [{shown}{more}]"
