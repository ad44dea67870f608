"""Configuration: the defaults tree, YAML + command-line merging, validation."""

import difflib
import importlib
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import yaml
from yacs.config import CfgNode as CN

from reid.config.defaults import get_default_cfg
from reid.errors import ReidError, UnknownNameError

__all__ = [
    "ConfigError",
    "config_differences",
    "flatten",
    "get_default_cfg",
    "import_plugins",
    "load_cfg",
]

logger = logging.getLogger(__name__)


class ConfigError(ReidError):
    """A config file, key or value that cannot be used."""


# Keys whose value must be one of a fixed set. Registry names (datasets, backbones,
# poolings, losses) are checked where they are used, in the build_* functions, since
# IMPORTS may register more of them.
# Loss terms that compare pairs within a batch, so need K >= 2 images per identity.
PAIRWISE_LOSSES = ("triplet", "circle", "multi_similarity")

CHOICES: dict[str, tuple[str, ...]] = {
    "MODEL.DEVICE": ("auto", "cpu", "cuda"),
    "SOLVER.OPTIMIZER": ("adam", "adamw", "sgd"),
    "SOLVER.SCHEDULER": ("multistep", "cosine"),
    "TEST.NECK_FEAT": ("before", "after"),
    "TEST.METRIC": ("cosine", "euclidean"),
    "TEST.AP": ("standard", "official"),
    "LOSS.TRIPLET_MINING": ("hard", "semi_hard", "all"),
    "TEST.BEST_METRIC": ("rank1", "rank5", "rank10", "mAP", "mINP"),
    "MODEL.VIT_POOL": ("token", "mean"),
    "DATALOADER.CACHE": ("none", "ram"),
}


def load_cfg(
    path: str | Path | None = None,
    opts: Sequence[str] = (),
    *,
    trust_file_imports: bool = True,
    opt_in: Callable[[list[str]], str] | None = None,
) -> CN:
    """Builds the frozen config: defaults, then the YAML file, then ``KEY VALUE`` pairs.

    Args:
        path: a YAML file listing only the keys that differ from the defaults.
        opts: flat command-line overrides, e.g. ``["SOLVER.BASE_LR", "0.001"]``;
            values are parsed as YAML (``true``, ``[256, 128]``, ``1e-3``).
        trust_file_imports: import the plugin modules that the file's ``IMPORTS`` lists
            (your own config). False for a file you received, such as a run folder's
            ``config.yaml``: then only an ``IMPORTS`` given in ``opts`` is imported (it
            replaces the file's list), and a file that lists modules without one is
            refused, since importing a module runs its code.
        opt_in: how the caller's user allows a file's modules, for that refusal, e.g.
            ``lambda modules: f"pass imports={modules}"``; by default an ``IMPORTS``
            override on the command line.

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: a missing file, a YAML syntax error, an unknown key (with the
            closest valid keys), a value of the wrong type or outside its choices, a
            plugin that fails to import, or a distrusted file that lists ``IMPORTS``.
    """
    cfg = get_default_cfg()
    if path is not None:
        _merge(cfg, _migrate(flatten(_read_yaml(Path(path))), str(path)), source=str(path))
    listed = list(cfg.IMPORTS)
    overrides = _migrate(_pair_overrides(opts, _all_keys(cfg)), "command line")
    _merge(cfg, overrides, source="command line")
    if listed and not trust_file_imports and "IMPORTS" not in overrides:
        hint = (opt_in or _imports_override)(listed)
        raise ConfigError(
            f"{path} lists IMPORTS [{', '.join(map(str, listed))}]: plugin code named in a "
            f"file is not run unless you allow it; to run it, {hint}"
        )
    import_plugins(cfg.IMPORTS)
    _check(cfg)
    _fill_pixel_stats(cfg)
    cfg.freeze()
    return cfg


def _fill_pixel_stats(cfg: CN) -> None:
    """An empty ``INPUT.PIXEL_MEAN`` or ``PIXEL_STD`` becomes the backbone's own, so that
    the resolved config (a run's ``config.yaml``) records what was used. An unknown
    backbone leaves them empty: ``build_model`` names it with the available ones."""
    if cfg.INPUT.PIXEL_MEAN and cfg.INPUT.PIXEL_STD:
        return
    from reid.models.backbones import pixel_stats  # imports torch: only when needed

    try:
        stats = pixel_stats(cfg.MODEL.BACKBONE)
    except UnknownNameError:
        return
    for key, values in zip(("PIXEL_MEAN", "PIXEL_STD"), stats, strict=True):
        cfg.INPUT[key] = cfg.INPUT[key] or [float(v) for v in values]


def _imports_override(modules: list[str]) -> str:
    return f'pass IMPORTS "[{", ".join(map(str, modules))}]" on the command line'


def import_plugins(modules: Sequence[str]) -> None:
    """Imports the ``IMPORTS`` modules, from the current folder or ``PYTHONPATH``.

    Raises:
        ConfigError: a name that is not a module name, a module that cannot be found,
            or one that fails while importing, such as one registering a name that is
            taken (the message names its file and line).
    """
    for name in modules:
        if not isinstance(name, str) or not all(part.isidentifier() for part in name.split(".")):
            raise ConfigError(
                f"IMPORTS must list module names such as my_project.backbones; got {name!r}"
            )
    if modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # tools/*.py put their own folder there instead
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not name.startswith(err.name):
                raise _plugin_error(name, err) from None
            raise ConfigError(
                f"IMPORTS: no module named {name!r} in the current folder ({os.getcwd()}) "
                "or on PYTHONPATH"
            ) from None
        except (Exception, SystemExit) as err:  # a plugin's own bug, or a script's exit
            raise _plugin_error(name, err) from None


def _plugin_error(name: str, err: BaseException) -> ConfigError:
    # The plugin's own line, not the registry's or importlib's that raised on its behalf
    # (a name already registered fails inside Registry.register).
    frames = traceback.extract_tb(err.__traceback__)
    package = str(Path(__file__).parents[1]) + os.sep
    own = [f for f in frames if not f.filename.startswith((package, "<"))] or frames
    where = f" ({own[-1].filename}:{own[-1].lineno})" if own else ""
    # KeyError's str() quotes its message; show the message as written.
    text = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 else err
    return ConfigError(f"IMPORTS: importing {name} failed{where}: {type(err).__name__}: {text}")


# The loss weights of earlier versions, now LOSS.NAMES / LOSS.WEIGHTS, with their defaults.
_OLD_LOSS_WEIGHTS = {
    "LOSS.CE_WEIGHT": ("cross_entropy", 1.0),
    "LOSS.TRIPLET_WEIGHT": ("triplet", 1.0),
    "LOSS.CENTER_WEIGHT": ("center", 0.0),
}


def _migrate(flat: dict[str, Any], source: str) -> dict[str, Any]:
    """Reads the keys of earlier versions (run folders, checkpoints, old configs) as today's."""
    if "DATASETS.NAME" in flat:
        if "DATASETS.NAMES" in flat:
            raise ConfigError(
                f"DATASETS.NAME ({source}) cannot be mixed with DATASETS.NAMES; "
                "list the datasets in DATASETS.NAMES"
            )
        name = flat.pop("DATASETS.NAME")
        flat["DATASETS.NAMES"] = [name]
        logger.warning(
            "%s: DATASETS.NAME %s is read as DATASETS.NAMES [%s] (the key of earlier versions)",
            source, name, name,
        )  # fmt: skip
    return _migrate_loss_weights(flat, source)


def _migrate_loss_weights(flat: dict[str, Any], source: str) -> dict[str, Any]:
    """Reads the loss weights of earlier versions as terms."""
    old = {key: flat.pop(key) for key in list(flat) if key in _OLD_LOSS_WEIGHTS}
    if not old:
        return flat
    if "LOSS.NAMES" in flat or "LOSS.WEIGHTS" in flat:
        raise ConfigError(
            f"{', '.join(old)} ({source}) cannot be mixed with LOSS.NAMES / LOSS.WEIGHTS"
        )
    weights = dict(_OLD_LOSS_WEIGHTS.values())
    for key, value in old.items():
        weights[_OLD_LOSS_WEIGHTS[key][0]] = _coerce(key, value, 1.0, source)
    names = [name for name, weight in weights.items() if weight > 0]
    flat["LOSS.NAMES"], flat["LOSS.WEIGHTS"] = names, [weights[name] for name in names]
    logger.warning(
        "%s: %s are read as LOSS.NAMES %s, LOSS.WEIGHTS %s (the keys of earlier versions)",
        source, ", ".join(old), names, flat["LOSS.WEIGHTS"],
    )  # fmt: skip
    return flat


def _pair_overrides(opts: Sequence[str], keys: list[str]) -> dict[str, Any]:
    """``[KEY, VALUE, ...]`` as ``{KEY: parsed VALUE}``; a key without a value is named."""
    overrides: dict[str, Any] = {}
    tokens = list(opts)
    for index in range(0, len(tokens), 2):
        key = tokens[index]
        value = tokens[index + 1] if index + 1 < len(tokens) else None
        if value is None or value in keys:
            raise ConfigError(
                f"no value given for {key} (command line); overrides are KEY VALUE pairs"
            )
        overrides[key] = _parse_value(key, value)
    return overrides


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (where the plain
    loader silently keeps the later value)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key} is set twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte {err.start}); expected YAML") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
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


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{dotted key: value}`` of the leaves of a nested mapping (a YAML tree, a config)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{full}."))
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
            section = _get(cfg, key) if _is_section(cfg, key) else None
            if section is not None:
                if value is None:  # an empty section in a YAML file: nothing to change
                    continue
                raise ConfigError(
                    f"{key} ({source}) is a section; set its keys, such as {key}."
                    f"{next(iter(section))}"
                )
            close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownNameError(f"unknown config key {key} ({source}){hint}")
        *parents, leaf = key.split(".")
        node = cfg
        for parent in parents:
            node = node[parent]
        node[leaf] = _coerce(key, value, node[leaf], source)


def _is_section(cfg: CN, key: str) -> bool:
    try:
        return isinstance(_get(cfg, key), CN)
    except (KeyError, TypeError):
        return False


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """Returns ``value`` converted to the default's type, or raises ConfigError."""
    example = f" such as {default!r}" if default not in ("", []) else ""
    if value is None:
        raise ConfigError(f"{key} ({source}) has no value; expected {_type_name(default)}{example}")
    expected = type(default)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        value = _as_float(value)
        ok = isinstance(value, float) and math.isfinite(value)
    elif isinstance(default, list | tuple):
        ok = isinstance(value, list | tuple)
        if ok and default and all(isinstance(d, float) for d in default):
            value = [_as_float(v) for v in value]
            ok = all(isinstance(v, float) and math.isfinite(v) for v in value)
        ok = ok and _same_element_kind(value, default)
        value = list(value) if ok else value
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(f"{key} ({source}) must be {_type_name(default)}{example}, got {value!r}")
    return value


def _as_float(value: Any) -> Any:
    """Numbers and numeric strings as float (YAML reads ``1e-3``, without a dot, as text)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
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
    names = {int: "an integer", float: "a finite number", str: "a string"}
    return names.get(type(default), type(default).__name__)


def _check(cfg: CN) -> None:
    """Cross-key and value-range rules, checked once after merging."""
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")

    for key, (allowed, text) in RANGES.items():
        if not allowed(_get(cfg, key)):
            raise ConfigError(f"{key} must be {text}; got {_get(cfg, key)}")
    for key in ("INPUT.SIZE_TRAIN", "INPUT.SIZE_TEST"):
        size = _get(cfg, key)
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ConfigError(f"{key} must be [H, W] with two positive integers; got {size}")
    for key in ("INPUT.PIXEL_MEAN", "INPUT.PIXEL_STD"):
        stats = [_as_float(v) for v in _get(cfg, key)]  # YAML reads 1e-1 as text
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in stats)
        if len(stats) not in (0, 3) or not numbers or not all(map(math.isfinite, stats)):
            raise ConfigError(
                f"{key} must list 3 numbers (R, G, B), or none for the backbone's own; got {stats}"
            )
        *parents, leaf = key.split(".")
        _get(cfg, ".".join(parents))[leaf] = [float(v) for v in stats]
    if cfg.INPUT.PIXEL_STD and min(cfg.INPUT.PIXEL_STD) <= 0:
        raise ConfigError(f"INPUT.PIXEL_STD must be positive; got {cfg.INPUT.PIXEL_STD}")
    if cfg.SOLVER.WARMUP_EPOCHS > 0 and cfg.SOLVER.WARMUP_ITERS > 0:
        raise ConfigError(
            "SOLVER.WARMUP_EPOCHS and SOLVER.WARMUP_ITERS are both set; warm up over "
            "epochs or over iterations, and set the other to 0"
        )
    steps = cfg.SOLVER.STEPS
    if any(step < 0 for step in steps) or list(steps) != sorted(steps):
        raise ConfigError(f"SOLVER.STEPS must be epochs >= 0 in increasing order; got {steps}")
    if not cfg.OUTPUT_DIR.strip():
        raise ConfigError("OUTPUT_DIR is empty; expected a folder for the run's files")

    if cfg.INPUT.AUTOAUGMENT_PROB > 0:
        for key, on in (
            ("DATALOADER.CACHE ram", cfg.DATALOADER.CACHE == "ram"),
            ("INPUT.BATCH_AUGMENT", cfg.INPUT.BATCH_AUGMENT),
        ):
            if on:
                raise ConfigError(
                    f"{key} augments the resized image, but INPUT.AUTOAUGMENT_PROB > 0 sees "
                    "the image before the resize; turn one of them off"
                )
    k, batch = cfg.DATALOADER.NUM_INSTANCES, cfg.SOLVER.IMS_PER_BATCH
    if batch < k or batch % k:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH ({batch}) must be a positive multiple of "
            f"DATALOADER.NUM_INSTANCES ({k}): a batch is P identities x K images"
        )
    if batch // k < 2:
        raise ConfigError(
            f"a batch of SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCES = {batch // k} identity "
            "has no negatives: expected P >= 2 identities per batch"
        )
    names, weights = cfg.LOSS.NAMES, cfg.LOSS.WEIGHTS
    if len(names) != len(weights) or len(set(names)) != len(names):
        raise ConfigError(
            f"LOSS.NAMES {names} and LOSS.WEIGHTS {weights} must be lists of the same length "
            "with distinct names: one weight per loss term"
        )
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise ConfigError(f"LOSS.WEIGHTS must be >= 0 with at least one > 0; got {weights}")
    for key in ("DATASETS.NAMES", "DATASETS.TESTS"):
        sets = _get(cfg, key)
        if not all(isinstance(n, str) and n for n in sets) or len(set(sets)) != len(sets):
            raise ConfigError(f"{key} must list distinct dataset names; got {sets}")
    if not cfg.DATASETS.NAMES:
        raise ConfigError("DATASETS.NAMES is empty; expected the datasets to train on")
    pairwise = [n for n, w in zip(names, weights, strict=True) if n in PAIRWISE_LOSSES and w > 0]
    if k < 2 and pairwise:
        raise ConfigError(
            f"DATALOADER.NUM_INSTANCES 1 gives the {pairwise[0]} loss no positive pairs: "
            "expected K >= 2 images per identity"
        )


def _at_least(low: float) -> tuple[Callable[[float], bool], str]:
    return (lambda value: value >= low), f">= {low}"


def _between(low: float, high: float) -> tuple[Callable[[float], bool], str]:
    return (lambda value: low <= value <= high), f"in [{low}, {high}]"


_POSITIVE: tuple[Callable[[float], bool], str] = ((lambda value: value > 0), "> 0")
_SEED = ((lambda value: 0 <= value < 2**32), "in [0, 2**32)")

# The allowed values of each numeric key, with their description for the error.
RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "SEED": _SEED,
    "MODEL.LAST_STRIDE": _between(1, 2),
    "INPUT.FLIP_PROB": _between(0, 1),
    "INPUT.RE_PROB": _between(0, 1),
    "INPUT.PADDING": _at_least(0),
    "DATASETS.SYNTHETIC.NUM_IDENTITIES": _at_least(2),
    "DATASETS.SYNTHETIC.NUM_CAMERAS": _between(2, 9),
    "DATASETS.SYNTHETIC.SEED": _SEED,
    "DATASETS.VEHICLEID_TEST_SIZE": (
        (lambda value: value in (800, 1600, 2400)),
        "800, 1600 or 2400",
    ),
    "DATALOADER.NUM_WORKERS": _at_least(0),
    "DATALOADER.NUM_INSTANCES": _at_least(1),
    "DATALOADER.PREFETCH_FACTOR": _at_least(1),
    "SOLVER.LOG_PERIOD": _at_least(1),
    "SOLVER.MAX_EPOCHS": _at_least(1),
    "SOLVER.BASE_LR": _POSITIVE,
    "SOLVER.BIAS_LR_FACTOR": _at_least(0),
    "SOLVER.MOMENTUM": ((lambda value: 0 <= value < 1), "in [0, 1)"),
    "SOLVER.WEIGHT_DECAY": _at_least(0),
    "SOLVER.WEIGHT_DECAY_BIAS": _at_least(0),
    "SOLVER.IMS_PER_BATCH": _at_least(2),
    "SOLVER.GAMMA": _POSITIVE,
    "SOLVER.WARMUP_FACTOR": _between(0, 1),
    "SOLVER.WARMUP_EPOCHS": _at_least(0),
    "SOLVER.CENTER_LR": _POSITIVE,
    "SOLVER.DELAY_EPOCHS": _at_least(0),
    "SOLVER.ETA_MIN_LR": _at_least(0),
    "SOLVER.WARMUP_ITERS": _at_least(0),
    "SOLVER.FREEZE_ITERS": _at_least(0),
    "SOLVER.CLIP_GRAD_NORM": _at_least(0),
    "MODEL.VIT_STRIDE": _at_least(0),
    "MODEL.DROP_PATH": ((lambda value: 0 <= value < 1), "in [0, 1)"),
    "INPUT.AUTOAUGMENT_PROB": _between(0, 1),
    "LOSS.CIRCLE_SOFTMAX_MARGIN": _between(0, 1),
    "LOSS.CIRCLE_SOFTMAX_SCALE": _POSITIVE,
    "LOSS.LABEL_SMOOTH": ((lambda value: 0 <= value < 1), "in [0, 1)"),
    "LOSS.TRIPLET_MARGIN": _at_least(0),
    "LOSS.CIRCLE_MARGIN": _between(0, 1),
    "LOSS.CIRCLE_SCALE": _POSITIVE,
    "LOSS.MS_ALPHA": _POSITIVE,
    "LOSS.MS_BETA": _POSITIVE,
    "LOSS.MS_LAMBDA": _between(-1, 1),
    "LOSS.MS_EPSILON": _at_least(0),
    "LOSS.COSFACE_MARGIN": _at_least(0),
    "LOSS.COSFACE_SCALE": _POSITIVE,
    "LOSS.ARCFACE_MARGIN": _between(0, 1.5),
    "LOSS.ARCFACE_SCALE": _POSITIVE,
    "DISTRIBUTED.TIMEOUT_MINUTES": _POSITIVE,
    "TEST.IMS_PER_BATCH": _at_least(1),
    "TEST.EVAL_PERIOD": _at_least(1),
    "TEST.RERANK_K1": _at_least(1),
    "TEST.RERANK_K2": _at_least(1),
    "TEST.RERANK_LAMBDA": _between(0, 1),
    "TEST.VISUALIZE_QUERIES": _at_least(0),
    "TEST.EMBEDDING_PLOT": _at_least(0),
    "TEST.AQE_K": _at_least(1),
    "TEST.AQE_ALPHA": _at_least(0),
}


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
    "DATALOADER.CACHE",
    "DATALOADER.PIN_MEMORY",
    "DATALOADER.PERSISTENT_WORKERS",
    "DATALOADER.PREFETCH_FACTOR",
    "SOLVER.LOG_PERIOD",
    "SOLVER.MAX_EPOCHS",
    "MODEL.DEVICE",
    "MODEL.PRETRAINED",
    "MODEL.PRETRAIN_PATH",
    "TEST.",
)


# ... except these, which change what a resumed run would compare or keep.
RESUME_UNSAFE_KEYS = ("TEST.BEST_METRIC",)


def resume_conflicts(saved_yaml: str, cfg: CN) -> list[str]:
    """Differences between a checkpoint's config and ``cfg`` that forbid resuming.

    Args:
        saved_yaml: the checkpoint's resolved config (``cfg.dump()`` text); keys of
            earlier versions are read as today's, and keys added since take their
            defaults.

    Returns:
        ``"KEY: old -> new"`` lines, empty when the run can continue.

    Raises:
        ConfigError: the saved config holds a key this version does not know.
    """
    source = "the checkpoint's config"
    saved = get_default_cfg()
    _merge(saved, _migrate(flatten(yaml.safe_load(saved_yaml) or {}), source), source)
    return [
        d
        for d in config_differences(saved, cfg)
        if d.startswith(RESUME_UNSAFE_KEYS) or not d.startswith(RESUME_SAFE_KEYS)
    ]
