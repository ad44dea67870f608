"""The recipes in configs/, each resolved config checked key by key against its source.

The expected values are written here by hand from the sources, not read from the YAML
files: FastReID's configs/Market1501/sbs_R50.yml over Base-SBS.yml and Base-bagtricks.yml,
configs/Market1501/bagtricks_vit.yml and fastreid/config/defaults.py (JDAI-CV/fast-reid), and
the Bag-of-Tricks paper (Luo et al. 2019) for configs/market_triplet.yml. Every key a source
does not name must stay at this framework's default, so nothing slips into a recipe unseen.

The Bag-of-Tricks recipe must also resolve exactly as it did before the keys of issue 19
(non-local blocks, ViT options, AutoAugment, delayed cosine, warmup in iterations, freezing,
clipping, circle-softmax) were added: every key it had then keeps its value, and every key
added since is at the value that leaves training as it was.
"""

import math
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from yacs.config import CfgNode

from reid.config import flatten, get_default_cfg, load_cfg
from reid.losses import build_loss
from reid.models import build_model

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# OpenAI CLIP's normalisation (its preprocessing, and timm's pretrained config of the encoder).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Market-1501's training images; FastReID counts an epoch as len(train) // IMS_PER_BATCH.
MARKET_TRAIN_IMAGES = 12936

# The evaluation FastReID uses for every recipe: the BNNeck's output (its EmbeddingHead
# returns it at test whatever HEADS.NECK_FEAT says), L2-normalised, cosine distance.
FASTREID_TEST = {
    "TEST.NECK_FEAT": "after",
    "TEST.FEAT_NORM": True,
    "TEST.METRIC": "cosine",
    "TEST.IMS_PER_BATCH": 128,
}

# configs/Market1501/sbs_R50.yml -> Base-SBS.yml -> Base-bagtricks.yml (and FastReID defaults).
SBS = {
    "DATASETS.NAMES": ["market1501"],
    "MODEL.BACKBONE": "resnet50",  # DEPTH 50x, WITH_IBN False
    "MODEL.LAST_STRIDE": 1,
    "MODEL.PRETRAINED": True,
    "MODEL.NON_LOCAL": True,  # WITH_NL
    "MODEL.POOLING": "gem",  # GeneralizedMeanPoolingP
    "MODEL.BNNECK": True,
    "INPUT.SIZE_TRAIN": [384, 128],
    "INPUT.SIZE_TEST": [384, 128],
    "INPUT.FLIP_PROB": 0.5,
    "INPUT.PADDING": 10,
    "INPUT.RE_PROB": 0.5,
    "INPUT.AUTOAUGMENT_PROB": 0.1,
    "INPUT.PIXEL_MEAN": IMAGENET_MEAN,  # FastReID's PIXEL_MEAN default, / 255
    "INPUT.PIXEL_STD": IMAGENET_STD,
    "DATALOADER.NUM_INSTANCES": 16,
    "SOLVER.IMS_PER_BATCH": 64,
    "SOLVER.AMP": True,
    "SOLVER.OPTIMIZER": "adam",
    "SOLVER.BASE_LR": 3.5e-4,
    "SOLVER.WEIGHT_DECAY": 5e-4,
    "SOLVER.WEIGHT_DECAY_BIAS": 5e-4,
    "SOLVER.BIAS_LR_FACTOR": 1.0,
    "SOLVER.MAX_EPOCHS": 60,
    "SOLVER.SCHEDULER": "cosine",
    "SOLVER.DELAY_EPOCHS": 30,
    "SOLVER.ETA_MIN_LR": 7e-7,
    "SOLVER.WARMUP_EPOCHS": 0,
    "SOLVER.WARMUP_ITERS": 2000,
    "SOLVER.WARMUP_FACTOR": 0.1,
    "SOLVER.FREEZE_ITERS": 1000,
    "SOLVER.CLIP_GRAD_NORM": 0.0,
    "LOSS.NAMES": ["circle_softmax", "triplet"],
    "LOSS.WEIGHTS": [1.0, 1.0],
    "LOSS.CIRCLE_SOFTMAX_SCALE": 64.0,
    "LOSS.CIRCLE_SOFTMAX_MARGIN": 0.35,
    "LOSS.LABEL_SMOOTH": 0.1,
    "LOSS.TRIPLET_MARGIN": 0.0,  # soft margin
    "LOSS.TRIPLET_MINING": "hard",
    "LOSS.TRIPLET_NORM_FEAT": False,
    "TEST.EVAL_PERIOD": 10,
    **FASTREID_TEST,
}

# configs/Market1501/bagtricks_vit.yml (and FastReID defaults). FastReID's cosine spans
# MAX_EPOCH - ceil(WARMUP_ITERS / iterations per epoch) epochs after the warmup.
VIT_ITERS_PER_EPOCH = MARKET_TRAIN_IMAGES // 64
VIT = {
    "DATASETS.NAMES": ["market1501"],
    "MODEL.BACKBONE": "timm/vit_base_patch16_224.orig_in21k_ft_in1k",  # jx_vit_base_p16_224
    "MODEL.PRETRAINED": True,
    "MODEL.VIT_POOL": "token",  # POOL_LAYER Identity on the class token
    "MODEL.VIT_STRIDE": 0,  # STRIDE_SIZE (16, 16): the patch size
    "MODEL.DROP_PATH": 0.1,
    "MODEL.NON_LOCAL": False,
    "MODEL.BNNECK": True,
    "INPUT.SIZE_TRAIN": [256, 128],
    "INPUT.SIZE_TEST": [256, 128],
    "INPUT.FLIP_PROB": 0.5,
    "INPUT.PADDING": 10,
    "INPUT.RE_PROB": 0.5,
    "INPUT.AUTOAUGMENT_PROB": 0.0,
    "INPUT.PIXEL_MEAN": [127.5 / 255] * 3,
    "INPUT.PIXEL_STD": [127.5 / 255] * 3,
    "DATALOADER.NUM_INSTANCES": 4,
    "SOLVER.IMS_PER_BATCH": 64,
    "SOLVER.AMP": False,
    "SOLVER.OPTIMIZER": "sgd",
    "SOLVER.BASE_LR": 0.008,
    "SOLVER.MOMENTUM": 0.9,
    "SOLVER.WEIGHT_DECAY": 1e-4,
    "SOLVER.WEIGHT_DECAY_BIAS": 5e-4,  # FastReID's default, not following WEIGHT_DECAY
    "SOLVER.BIAS_LR_FACTOR": 1.0,
    "SOLVER.MAX_EPOCHS": 120,
    "SOLVER.SCHEDULER": "cosine",
    "SOLVER.DELAY_EPOCHS": math.ceil(1000 / VIT_ITERS_PER_EPOCH),
    "SOLVER.ETA_MIN_LR": 1.6e-5,
    "SOLVER.WARMUP_EPOCHS": 0,
    "SOLVER.WARMUP_ITERS": 1000,
    "SOLVER.WARMUP_FACTOR": 0.01,
    "SOLVER.FREEZE_ITERS": 0,
    "SOLVER.CLIP_GRAD_NORM": 5.0,  # CLIP_GRADIENTS: norm, CLIP_VALUE 5.0
    "SOLVER.CLIP_GRAD_PER_PARAM": True,  # detectron2's per-parameter clipper
    "LOSS.NAMES": ["cross_entropy", "triplet"],
    "LOSS.WEIGHTS": [1.0, 1.0],
    "LOSS.LABEL_SMOOTH": 0.0,
    "LOSS.TRIPLET_MARGIN": 0.0,
    "LOSS.TRIPLET_MINING": "hard",
    "LOSS.TRIPLET_NORM_FEAT": False,
    "TEST.EVAL_PERIOD": 5,
    **FASTREID_TEST,
}

# The ViT recipe on OpenAI's CLIP ViT-B/16 image encoder, with CLIP's pixel statistics.
CLIP = {
    **VIT,
    "MODEL.BACKBONE": "timm/vit_base_patch16_clip_224.openai",
    "INPUT.PIXEL_MEAN": CLIP_MEAN,
    "INPUT.PIXEL_STD": CLIP_STD,
}

# Bag-of-Tricks (Luo et al. 2019), as configs/market_triplet.yml's header lists it.
BOT = {
    "DATASETS.NAMES": ["market1501"],
    "MODEL.BACKBONE": "resnet50",
    "MODEL.LAST_STRIDE": 1,
    "MODEL.PRETRAINED": True,
    "MODEL.POOLING": "avg",
    "MODEL.BNNECK": True,
    "INPUT.SIZE_TRAIN": [256, 128],
    "INPUT.SIZE_TEST": [256, 128],
    "INPUT.FLIP_PROB": 0.5,
    "INPUT.PADDING": 10,
    "INPUT.RE_PROB": 0.5,
    "INPUT.PIXEL_MEAN": IMAGENET_MEAN,
    "INPUT.PIXEL_STD": IMAGENET_STD,
    "DATALOADER.NUM_INSTANCES": 4,
    "SOLVER.IMS_PER_BATCH": 64,
    "SOLVER.OPTIMIZER": "adam",
    "SOLVER.BASE_LR": 3.5e-4,
    "SOLVER.WEIGHT_DECAY": 5e-4,
    "SOLVER.MAX_EPOCHS": 120,
    "SOLVER.SCHEDULER": "multistep",
    "SOLVER.STEPS": [40, 70],
    "SOLVER.GAMMA": 0.1,
    "SOLVER.WARMUP_EPOCHS": 10,
    "SOLVER.WARMUP_FACTOR": 0.01,
    "LOSS.NAMES": ["cross_entropy", "triplet"],
    "LOSS.WEIGHTS": [1.0, 1.0],
    "LOSS.LABEL_SMOOTH": 0.1,
    "LOSS.TRIPLET_MARGIN": 0.3,
    "TEST.NECK_FEAT": "after",
    "TEST.FEAT_NORM": True,
    "TEST.METRIC": "cosine",
}

# Keys added after revision BEFORE_ISSUE_19, each with the value that leaves the Bag-of-Tricks
# recipe training as it did (a new key must be listed here with such a value).
NEW_KEYS_OFF = {
    "MODEL.NON_LOCAL": False,
    "MODEL.VIT_POOL": "token",
    "MODEL.VIT_STRIDE": 0,
    "MODEL.DROP_PATH": 0.0,
    "INPUT.AUTOAUGMENT_PROB": 0.0,
    "SOLVER.DELAY_EPOCHS": 0,
    "SOLVER.ETA_MIN_LR": 0.0,
    "SOLVER.WARMUP_ITERS": 0,
    "SOLVER.FREEZE_ITERS": 0,
    "SOLVER.CLIP_GRAD_NORM": 0.0,
    "SOLVER.CLIP_GRAD_PER_PARAM": False,
    "LOSS.CIRCLE_SOFTMAX_MARGIN": 0.35,  # unused: circle_softmax is not a term of the recipe
    "LOSS.CIRCLE_SOFTMAX_SCALE": 64.0,
    # Issue 21's keys change how fast a recipe trains, never what it computes.
    "INPUT.BATCH_AUGMENT": False,
    "DATALOADER.CACHE": "none",
    "DATALOADER.PIN_MEMORY": True,
    "DATALOADER.PERSISTENT_WORKERS": True,
    "DATALOADER.PREFETCH_FACTOR": 2,
    "SOLVER.LOG_PERIOD": 20,
}
# The parent of the commit that added issue 19's keys.
BEFORE_ISSUE_19 = "0dbf616"

RECIPES = {"market_sbs": SBS, "market_vit": VIT, "market_clip": CLIP, "market_triplet": BOT}


def _resolved(name: str) -> dict[str, Any]:
    return flatten(load_cfg(CONFIGS / f"{name}.yml"))


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, float):
        return isinstance(actual, float) and actual == pytest.approx(expected, rel=1e-9)
    if isinstance(expected, list) and expected and isinstance(expected[0], float):
        return list(actual) == pytest.approx(expected, rel=1e-9)
    return type(actual) is type(expected) and actual == expected


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_resolves_to_its_sources_values_key_by_key(name: str) -> None:
    resolved, expected = _resolved(name), RECIPES[name]
    wrong = {
        key: (resolved.get(key), value)
        for key, value in expected.items()
        if not _same(resolved.get(key), value)
    }
    assert not wrong, f"{name}: key: (resolved, expected): {wrong}"


@pytest.mark.parametrize("name", RECIPES)
def test_keys_a_source_does_not_name_stay_at_their_defaults(name: str) -> None:
    """Except where the run is written and where the datasets are."""
    resolved, defaults = _resolved(name), flatten(get_default_cfg())
    changed = {
        key: value
        for key, value in resolved.items()
        if key not in RECIPES[name] and key not in ("OUTPUT_DIR", "DATASETS.ROOT")
        and value != defaults[key]
    }  # fmt: skip
    assert not changed, f"{name} sets keys its source does not: {changed}"


def test_clip_takes_its_pixel_statistics_from_the_backbone() -> None:
    """The YAML leaves them empty; load_cfg fills CLIP's own from the backbone (checked
    above), so the run's config.yaml records them."""
    text = yaml.safe_load((CONFIGS / "market_clip.yml").read_text(encoding="utf-8"))
    assert not {"INPUT.PIXEL_MEAN", "INPUT.PIXEL_STD"} & set(flatten(text))


@pytest.mark.slow  # model building: in the full suite, kept out of the quick loop
@pytest.mark.parametrize("name", ["market_sbs", "market_vit", "market_clip"])
def test_the_recipes_build_their_model_and_loss(name: str) -> None:
    """Backbone and loss names resolve only at build time: build each (no weights loaded),
    with the part the freezing trainer freezes by default."""
    if "timm/" in RECIPES[name]["MODEL.BACKBONE"]:
        pytest.importorskip("timm")
    cfg = load_cfg(CONFIGS / f"{name}.yml")
    model = build_model(cfg, num_classes=751, load_pretrained_weights=False)
    loss = build_loss(cfg, num_classes=751, feat_dim=model.feat_dim)
    assert list(loss.terms) == list(cfg.LOSS.NAMES)
    assert hasattr(model, "backbone")


def test_the_bag_of_tricks_recipe_has_every_new_key_off() -> None:
    resolved = _resolved("market_triplet")
    wrong = {
        key: (resolved[key], value)
        for key, value in NEW_KEYS_OFF.items()
        if not _same(resolved[key], value)
    }
    assert not wrong, f"key: (resolved, expected): {wrong}"
    assert "circle_softmax" not in resolved["LOSS.NAMES"]


def _git_show(path: str) -> str:
    try:
        shown = subprocess.run(
            ["git", "show", f"{BEFORE_ISSUE_19}:{path}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        pytest.skip(f"git history with revision {BEFORE_ISSUE_19} is not available here")
    return shown.stdout


def test_the_bag_of_tricks_recipe_resolves_as_before_the_new_keys() -> None:
    """That revision's own defaults.py text and market_triplet.yml, merged by yacs, against
    today's load_cfg: the same value for every key it had (its explicit ImageNet statistics
    against the ones taken from the backbone now), and only NEW_KEYS_OFF added."""
    namespace: dict[str, Any] = {}
    exec(compile(_git_show("reid/config/defaults.py"), "defaults.py", "exec"), namespace)
    before = namespace["get_default_cfg"]()
    before.merge_from_other_cfg(CfgNode(yaml.safe_load(_git_show("configs/market_triplet.yml"))))
    before, now = flatten(before), _resolved("market_triplet")
    assert set(now) - set(before) == set(NEW_KEYS_OFF)
    assert set(before) <= set(now)
    assert {key: now[key] for key in before} == before
