"""Configuration: the defaults tree, YAML + command-line merging, validation."""

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from yacs.config import CfgNode as CN

from reid.config.defaults import get_default_cfg
from reid.data.datasets import DATASETS
from reid.errors import ReidError, UnknownNameError
from reid.models.backbones import BACKBONES
from reid.models.heads import POOLINGS

__all__ = ["ConfigError", "config_differences", "get_default_cfg", "load_cfg"]


class ConfigError(ReidError):
    """A config file, key or value that cannot be used."""


# Keys whose value must be one of a fixed set; registry-backed names are checked
# against the live registries in _check_choices.
CHOICES: dict[str, tuple[str, ...]] = {
    "MODEL.DEVICE": ("auto", "cpu", "cuda"),
    "SOLVER.OPTIMIZER": ("adam", "sgd"),
    "SOLVER.SCHEDULER": ("multistep", "cosine"),
    "TEST.NECK_FEAT": ("before", "after"),
    "TEST.METRIC": ("cosine", "euclidean"),
}


def load_cfg(path: str | Path | None = None, opts: Sequence[str] = ()) -> CN:
    """Builds the frozen config: defaults, then the YAML file, then ``KEY VALUE`` pairs.

    Args:
        path: a YAML file listing only the keys that differ from the defaults.
        opts: flat command-line overrides, e.g. ``["SOLVER.BASE_LR", "0.001"]``;
            values are parsed as YAML (``true``, ``[256, 128]``, ``1e-3``).

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: a missing file, a YAML syntax error, an unknown key (with the
            closest valid keys), a value of the wrong type or outside its choices.
    """
    cfg = get_default_cfg()
    if path is not None:
        _merge(cfg, _flatten(_read_yaml(Path(path))), source=str(path))
    if len(opts) % 2:
        raise ConfigError(f"overrides must be KEY VALUE pairs; got an odd count: {list(opts)}")
    overrides = {
        key: _parse_value(key, value) for key, value in zip(opts[::2], opts[1::2], strict=True)
    }
    _merge(cfg, overrides, source="command line")
    _check(cfg)
    cfg.freeze()
    return cfg


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"invalid YAML in {path}{line}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, prefix=f"{full}."))
        else:
            flat[full] = value
    return flat


def _parse_value(key: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"cannot parse the value {text!r} given for {key}") from None


def _all_keys(node: CN, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        full = f"{prefix}{key}"
        keys.extend(_all_keys(value, f"{full}.") if isinstance(value, CN) else [full])
    return keys


def _merge(cfg: CN, flat: dict[str, Any], source: str) -> None:
    valid = _all_keys(cfg)
    for key, value in flat.items():
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownNameError(f"unknown config key {key} ({source}){hint}")
        *parents, leaf = key.split(".")
        node = cfg
        for parent in parents:
            node = node[parent]
        node[leaf] = _coerce(key, value, node[leaf], source)


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """Returns ``value`` converted to the default's type, or raises ConfigError."""
    expected = type(default)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, list | tuple):
        ok = isinstance(value, list | tuple) and _same_element_kind(value, default)
        value = list(value) if ok else value
    else:
        ok = isinstance(value, expected)
    if not ok:
        example = f" such as {default!r}" if default not in ("", []) else ""
        raise ConfigError(f"{key} ({source}) must be {_type_name(default)}{example}, got {value!r}")
    return value


def _same_element_kind(value: Sequence[Any], default: Sequence[Any]) -> bool:
    if not default:
        return True
    numeric = all(isinstance(d, int | float) and not isinstance(d, bool) for d in default)
    if numeric:
        return all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    return all(isinstance(v, type(default[0])) for v in value)


def _type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "a boolean (true/false)"
    if isinstance(default, list | tuple):
        return "a list"
    names = {int: "an integer", float: "a number", str: "a string"}
    return names.get(type(default), type(default).__name__)


def _check(cfg: CN) -> None:
    """Cross-key and value-range rules, checked once after merging."""
    choices = dict(CHOICES)
    choices["DATASETS.NAME"] = tuple(DATASETS.names())
    choices["MODEL.BACKBONE"] = tuple(BACKBONES.names())
    choices["MODEL.POOLING"] = tuple(POOLINGS.names())
    for key, allowed in choices.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")

    for key in ("INPUT.SIZE_TRAIN", "INPUT.SIZE_TEST"):
        size = _get(cfg, key)
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ConfigError(f"{key} must be [H, W] with two positive integers; got {size}")
    for key in ("INPUT.PIXEL_MEAN", "INPUT.PIXEL_STD"):
        if len(_get(cfg, key)) != 3:
            raise ConfigError(f"{key} must list 3 values (R, G, B); got {_get(cfg, key)}")
    for key in ("INPUT.FLIP_PROB", "INPUT.RE_PROB"):
        if not 0.0 <= _get(cfg, key) <= 1.0:
            raise ConfigError(f"{key} must be a probability in [0, 1]; got {_get(cfg, key)}")

    k, batch = cfg.DATALOADER.NUM_INSTANCES, cfg.SOLVER.IMS_PER_BATCH
    if k < 1 or batch < k or batch % k:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH ({batch}) must be a positive multiple of "
            f"DATALOADER.NUM_INSTANCES ({k}): a batch is P identities x K images"
        )
    if cfg.MODEL.LAST_STRIDE not in (1, 2):
        raise ConfigError(f"MODEL.LAST_STRIDE must be 1 or 2; got {cfg.MODEL.LAST_STRIDE}")
    positive = ("SOLVER.MAX_EPOCHS", "SOLVER.BASE_LR", "TEST.IMS_PER_BATCH", "TEST.EVAL_PERIOD")
    for key in positive:
        if _get(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive; got {_get(cfg, key)}")
    if cfg.DATALOADER.NUM_WORKERS < 0:
        raise ConfigError(f"DATALOADER.NUM_WORKERS must be >= 0; got {cfg.DATALOADER.NUM_WORKERS}")


def _get(cfg: CN, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def config_differences(old: CN, new: CN) -> list[str]:
    """Keys whose values differ between two configs, as ``"KEY: old -> new"`` lines."""
    old_values = {key: _get(old, key) for key in _all_keys(old)}
    return [
        f"{key}: {old_values.get(key)!r} -> {_get(new, key)!r}"
        for key in _all_keys(new)
        if old_values.get(key) != _get(new, key)
    ]


# Keys that may change when a run is resumed without changing what it trains.
RESUME_SAFE_KEYS = (
    "OUTPUT_DIR",
    "DATASETS.ROOT",
    "DATALOADER.NUM_WORKERS",
    "SOLVER.MAX_EPOCHS",
    "MODEL.DEVICE",
    "MODEL.PRETRAINED",
    "MODEL.PRETRAIN_PATH",
    "TEST.",
)


def resume_conflicts(saved_yaml: str, cfg: CN) -> list[str]:
    """Differences between a checkpoint's config and ``cfg`` that forbid resuming.

    Args:
        saved_yaml: the checkpoint's resolved config (``cfg.dump()`` text).

    Returns:
        ``"KEY: old -> new"`` lines, empty when the run can continue.
    """
    saved = CN.load_cfg(saved_yaml)
    return [d for d in config_differences(saved, cfg) if not d.startswith(RESUME_SAFE_KEYS)]
