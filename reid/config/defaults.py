"""The one configuration tree. Every key is listed here with its default.

YAML files in ``configs/`` override only what differs; command-line
``KEY VALUE`` pairs override the YAML. Keys are validated once by
:func:`reid.config.load_cfg`, then the tree is frozen.
"""

from yacs.config import CfgNode as CN

_C = CN()

# Python modules imported before anything is built (e.g. [my_project.backbones]): plugins
# that register backbones, datasets, poolings or losses. Found from the current folder
# or PYTHONPATH. Importing runs their code, so only tools/train.py imports the list of its
# --config file; test, export, search and FeatureExtractor read files that may come from
# someone else and import only the modules given on their command line or in `imports=`.
_C.IMPORTS = []
# Where logs, checkpoints, the resolved config and metrics.json are written.
_C.OUTPUT_DIR = "output"
# Seed for Python, NumPy, torch and the PK sampler.
_C.SEED = 0

# ---------------------------------------------------------------------------
_C.MODEL = CN()
# "auto" picks cuda when available, else cpu.
_C.MODEL.DEVICE = "auto"
# Name in reid.models.BACKBONES (resnet18, resnet50, resnet50_ibn_a, ...).
_C.MODEL.BACKBONE = "resnet50"
# Stride of the last ResNet stage: 1 doubles the final feature map (Bag-of-Tricks).
_C.MODEL.LAST_STRIDE = 1
# Start from ImageNet weights: MODEL.PRETRAIN_PATH if set, else the library's cache (torch
# hub's for torchvision / IBN-a / OSNet files, timm's hub for timm/<name>), else downloaded
# there on first use; offline with nothing cached, one line says which file to put where.
_C.MODEL.PRETRAINED = False
# A local weights file (torchvision- or timm-style state dict, Torchreid's OSNet file, or a
# reid checkpoint).
_C.MODEL.PRETRAIN_PATH = ""
# Global pooling of the backbone map: "avg", "max" or "gem" (learnable p).
_C.MODEL.POOLING = "avg"
# BNNeck: BatchNorm1d between the pooled feature and the classifier.
_C.MODEL.BNNECK = True
# Non-local blocks (Wang et al. 2018) after the last residual blocks of layer2 and layer3, as
# FastReID's WITH_NL: 2 and 3 in resnet50 and resnet50_ibn_a, 2 and 9 in resnet101 / 152.
_C.MODEL.NON_LOCAL = False
# Vision transformers (timm/<vit name>): the global feature, "token" (the class token) or
# "mean" (the mean of the patch tokens).
_C.MODEL.VIT_POOL = "token"
# Vision transformers: the patch embedding's stride; 0 = the patch size (no overlap),
# TransReID's overlapping patches use 12 with 16-pixel patches.
_C.MODEL.VIT_STRIDE = 0
# Stochastic depth (drop path) rate of backbones that have it (timm models), in [0, 1).
_C.MODEL.DROP_PATH = 0.0

# ---------------------------------------------------------------------------
_C.INPUT = CN()
# Training image size [H, W].
_C.INPUT.SIZE_TRAIN = [256, 128]
# Test image size [H, W].
_C.INPUT.SIZE_TEST = [256, 128]
# Probability of a horizontal flip (0 disables).
_C.INPUT.FLIP_PROB = 0.5
# Zero padding before the random crop back to SIZE_TRAIN (0 disables both).
_C.INPUT.PADDING = 10
# Probability of random erasing (0 disables).
_C.INPUT.RE_PROB = 0.5
# Normalisation statistics, RGB in [0, 1]; [] takes the backbone's own (ImageNet's for
# ResNets, e.g. 0.5 for timm's ViTs, CLIP's for CLIP encoders). The run's config.yaml
# records the values used, and export and FeatureExtractor apply them.
_C.INPUT.PIXEL_MEAN = []
_C.INPUT.PIXEL_STD = []
# Probability of torchvision's AutoAugment ImageNet policy per training image (0 disables).
_C.INPUT.AUTOAUGMENT_PROB = 0.0
# Flip, pad-and-crop, normalisation and random erasing applied to the whole batch as
# tensor operations on the training device, each sample's parameters drawn from its own
# seed exactly as the per-image transforms draw them (the loader only decodes and
# resizes). Cannot be combined with INPUT.AUTOAUGMENT_PROB > 0.
_C.INPUT.BATCH_AUGMENT = False

# ---------------------------------------------------------------------------
_C.DATASETS = CN()
# Datasets trained on together, by name in reid.data.DATASETS: market1501, dukemtmc, msmt17,
# cuhk03, veri776, vehicleid, market_folder, image_folder, synthetic. Their identities are
# relabelled into one range and their cameras kept apart. (Earlier versions' DATASETS.NAME x
# is read as NAMES [x].)
_C.DATASETS.NAMES = ["market1501"]
# Datasets evaluated, each under its own protocol and reported on its own (a table, an entry
# of metrics.json, TensorBoard tags eval/<name>/...); [] evaluates the NAMES.
_C.DATASETS.TESTS = []
# Train on the train, query and gallery images of the NAMES (test identities as new classes,
# distractors and junk left out): for a final model, when nothing of NAMES is left to test.
_C.DATASETS.COMBINEALL = False
# The folder holding each dataset under its usual name (market_folder, image_folder: the
# dataset folder itself).
_C.DATASETS.ROOT = "datasets"
# cuhk03 (CUHK03-NP): the hand-labelled crops instead of the detected ones.
_C.DATASETS.CUHK03_LABELED = False
# vehicleid: the test list evaluated, 800, 1600 or 2400 vehicles.
_C.DATASETS.VEHICLEID_TEST_SIZE = 800
# Built-in synthetic pedestrians, generated under ROOT on first use.
_C.DATASETS.SYNTHETIC = CN()
# Identities in all; half train, half test.
_C.DATASETS.SYNTHETIC.NUM_IDENTITIES = 300
_C.DATASETS.SYNTHETIC.NUM_CAMERAS = 6
_C.DATASETS.SYNTHETIC.SEED = 0

# ---------------------------------------------------------------------------
_C.DATALOADER = CN()
# Worker processes per loader (0 loads in the main process).
_C.DATALOADER.NUM_WORKERS = 4
# K: images per identity in a training batch (P = SOLVER.IMS_PER_BATCH / K).
_C.DATALOADER.NUM_INSTANCES = 4
# Training images decoded once: "none" decodes and resizes every image at every epoch;
# "ram" decodes and resizes them to INPUT.SIZE_TRAIN once, into one uint8 array that
# every worker and local process maps (a cache file beside the dataset, or under
# ~/.cache/reid/decoded when the dataset folder is read-only), reused while the image
# files are unchanged. The resize being the recipe's first step, the batches are the
# same either way; it cannot be combined with INPUT.AUTOAUGMENT_PROB > 0, which sees
# the image before the resize.
_C.DATALOADER.CACHE = "none"
# Copy batches into page-locked memory for faster transfers to the GPU (CUDA only).
_C.DATALOADER.PIN_MEMORY = True
# Keep the worker processes between epochs instead of starting them again.
_C.DATALOADER.PERSISTENT_WORKERS = True
# Batches each worker prepares ahead.
_C.DATALOADER.PREFETCH_FACTOR = 2

# ---------------------------------------------------------------------------
_C.SOLVER = CN()
# "adam", "adamw" (decoupled weight decay) or "sgd".
_C.SOLVER.OPTIMIZER = "adam"
_C.SOLVER.MAX_EPOCHS = 120
_C.SOLVER.BASE_LR = 3.5e-4
# Learning rate of bias parameters = BASE_LR * BIAS_LR_FACTOR.
_C.SOLVER.BIAS_LR_FACTOR = 1.0
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.WEIGHT_DECAY = 5e-4
_C.SOLVER.WEIGHT_DECAY_BIAS = 5e-4
# P x K images per training batch.
_C.SOLVER.IMS_PER_BATCH = 64
# "multistep" (decay by GAMMA at STEPS) or "cosine" (to 0 at MAX_EPOCHS). The learning rate
# is set after every iteration from the true position in training (epoch + fraction done),
# so decays fall exactly on STEPS although PK epochs differ in length.
_C.SOLVER.SCHEDULER = "multistep"
# cosine: hold the learning rate flat for the first DELAY_EPOCHS, then decay it to ETA_MIN_LR
# at MAX_EPOCHS (FastReID's CosineAnnealing with DELAY_EPOCHS).
_C.SOLVER.DELAY_EPOCHS = 0
_C.SOLVER.ETA_MIN_LR = 0.0
# Epochs at which the learning rate is multiplied by GAMMA.
_C.SOLVER.STEPS = [40, 70]
_C.SOLVER.GAMMA = 0.1
# Linear warmup from BASE_LR * WARMUP_FACTOR over WARMUP_EPOCHS (0 disables).
_C.SOLVER.WARMUP_FACTOR = 0.01
_C.SOLVER.WARMUP_EPOCHS = 10
# Linear warmup from BASE_LR * WARMUP_FACTOR over this many iterations instead (0 disables;
# not together with WARMUP_EPOCHS).
_C.SOLVER.WARMUP_ITERS = 0
# Train only the head (neck, classifier, loss parameters) for the first FREEZE_ITERS
# iterations, then the whole model (0 disables).
_C.SOLVER.FREEZE_ITERS = 0
# Clip the gradients' global L2 norm to this value before each step (0 disables).
_C.SOLVER.CLIP_GRAD_NORM = 0.0
# Clip each parameter's gradient norm on its own instead of the global norm (FastReID's
# CLIP_TYPE norm, a per-parameter clipper).
_C.SOLVER.CLIP_GRAD_PER_PARAM = False
# Iterations per logging period: the progress bar, log.txt and TensorBoard get the
# period's mean of each logged value, computed on the device in between, so the host
# waits for the device once per period (and under torchrun, one reduction per period).
# The non-finite check runs then too: a NaN is seen up to one period late, and never
# saved.
_C.SOLVER.LOG_PERIOD = 20
# SGD learning rate of the center-loss centers (Bag-of-Tricks).
_C.SOLVER.CENTER_LR = 0.5
# Mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); no effect on CPU.
_C.SOLVER.AMP = True
# channels-last memory format on CUDA (faster convolutions with AMP); no effect on CPU.
_C.SOLVER.CHANNELS_LAST = True

# ---------------------------------------------------------------------------
_C.LOSS = CN()
# The loss: terms by name in reid.losses.LOSSES (cross_entropy, triplet, center, circle,
# multi_similarity, cosface, arcface, or a plugin's), summed with the weights in WEIGHTS.
_C.LOSS.NAMES = ["cross_entropy", "triplet"]
_C.LOSS.WEIGHTS = [1.0, 1.0]
# cross_entropy: label-smoothing epsilon (0 disables).
_C.LOSS.LABEL_SMOOTH = 0.1
# triplet: batch-hard margin; 0 uses the soft margin (softplus).
_C.LOSS.TRIPLET_MARGIN = 0.3
# triplet: L2-normalise features before the distances.
_C.LOSS.TRIPLET_NORM_FEAT = False
# triplet: which triplets of the batch: "hard" (batch-hard), "semi_hard" or "all".
_C.LOSS.TRIPLET_MINING = "hard"
# circle (Sun et al. 2020, pairwise form): relaxation margin m and scale gamma.
_C.LOSS.CIRCLE_MARGIN = 0.25
_C.LOSS.CIRCLE_SCALE = 128.0
# multi_similarity (Wang et al. 2019): scales alpha (positives) and beta (negatives),
# similarity margin lambda, and the pair-mining slack epsilon.
_C.LOSS.MS_ALPHA = 2.0
_C.LOSS.MS_BETA = 50.0
_C.LOSS.MS_LAMBDA = 0.5
_C.LOSS.MS_EPSILON = 0.1
# cosface (Wang et al. 2018): additive cosine margin and scale.
_C.LOSS.COSFACE_MARGIN = 0.35
_C.LOSS.COSFACE_SCALE = 64.0
# arcface (Deng et al. 2019): additive angular margin (radians) and scale.
_C.LOSS.ARCFACE_MARGIN = 0.5
_C.LOSS.ARCFACE_SCALE = 64.0
# circle_softmax (Sun et al. 2020, classification form; FastReID's CircleSoftmax): relaxation
# margin m and scale gamma.
_C.LOSS.CIRCLE_SOFTMAX_MARGIN = 0.35
_C.LOSS.CIRCLE_SOFTMAX_SCALE = 64.0

# ---------------------------------------------------------------------------
# Multi-process training under torchrun (no effect in a single process).
_C.DISTRIBUTED = CN()
# SyncBatchNorm: BatchNorm statistics over the global batch, as in one process
# (torch's on GPUs, reid.models.sync_bn.CpuSyncBatchNorm on CPUs).
_C.DISTRIBUTED.SYNC_BN = True
# A collective waiting longer than this (a dead or stuck rank) ends the job, in minutes.
# Ranks wait for rank 0's ranking at every evaluation, so keep it above that time.
_C.DISTRIBUTED.TIMEOUT_MINUTES = 30.0

# ---------------------------------------------------------------------------
_C.TEST = CN()
# Images per evaluation batch.
_C.TEST.IMS_PER_BATCH = 128
# Checkpoint evaluated by tools/test.py.
_C.TEST.WEIGHT = ""
# Evaluate every EVAL_PERIOD epochs during training (and always at the end).
_C.TEST.EVAL_PERIOD = 10
# The metric that picks best.pth (rank1, rank5, rank10, mAP or mINP); with several test sets,
# its mean over them.
_C.TEST.BEST_METRIC = "mAP"
# Test feature: "before" or "after" the BNNeck.
_C.TEST.NECK_FEAT = "after"
# L2-normalise test features.
_C.TEST.FEAT_NORM = True
# Average each image's features with those of its horizontal mirror.
_C.TEST.FLIP = False
# Gallery ranking distance: "cosine" or "euclidean".
_C.TEST.METRIC = "cosine"
# Average precision: "standard" (Bag-of-Tricks, FastReID, Torchreid) or "official" (the
# Market-1501 MATLAB code's trapezoid, lower by 0.5-1 mAP).
_C.TEST.AP = "standard"
# Alpha query expansion (Radenovic et al. 2018) of query and gallery features, over
# each feature's AQE_K nearest with weights similarity ** AQE_ALPHA.
_C.TEST.AQE = False
_C.TEST.AQE_K = 5
_C.TEST.AQE_ALPHA = 3.0
# k-reciprocal re-ranking (Zhong et al. 2017) and its parameters.
_C.TEST.RE_RANKING = False
_C.TEST.RERANK_K1 = 20
_C.TEST.RERANK_K2 = 6
_C.TEST.RERANK_LAMBDA = 0.3
# tools/test.py: save ranked-list images of this many queries and a CMC curve (0 disables).
_C.TEST.VISUALIZE_QUERIES = 0
# tools/test.py: a t-SNE picture of the test features of this many identities,
# OUTPUT_DIR/visual/embedding.png, and the same in TensorBoard's projector (0 disables).
_C.TEST.EMBEDDING_PLOT = 0


def get_default_cfg() -> CN:
    """A fresh, mutable copy of the default tree."""
    return _C.clone()
