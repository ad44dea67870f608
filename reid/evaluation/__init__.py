"""Evaluation: ranking metrics (pure functions), distances, re-ranking, model evaluation."""

from reid.evaluation.evaluator import (
    AqeOptions,
    EvalOptions,
    ProtocolRanking,
    Ranking,
    RerankOptions,
    build_eval_options,
    check_test_set,
    evaluate_model,
    extract_features,
)
from reid.evaluation.feature_ranking import evaluate_features, nearest_gallery, pairwise_distance
from reid.evaluation.metrics import check_gallery_matches, evaluate_rank
from reid.evaluation.rerank import alpha_query_expansion, re_ranking

__all__ = [
    "AqeOptions",
    "EvalOptions",
    "ProtocolRanking",
    "Ranking",
    "RerankOptions",
    "alpha_query_expansion",
    "build_eval_options",
    "check_gallery_matches",
    "check_test_set",
    "evaluate_features",
    "evaluate_model",
    "evaluate_rank",
    "extract_features",
    "nearest_gallery",
    "pairwise_distance",
    "re_ranking",
]
