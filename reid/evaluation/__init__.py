"""Evaluation: ranking metrics (pure functions), feature extraction, reports."""

from reid.evaluation.evaluator import (
    RerankOptions,
    build_eval_options,
    evaluate_model,
    extract_features,
    rank_gallery,
)
from reid.evaluation.metrics import check_gallery_matches, evaluate_rank

__all__ = [
    "RerankOptions",
    "build_eval_options",
    "check_gallery_matches",
    "evaluate_model",
    "evaluate_rank",
    "extract_features",
    "rank_gallery",
]
