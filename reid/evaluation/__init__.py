"""Evaluation: ranking metrics (pure functions), feature extraction, reports."""

from reid.evaluation.evaluator import evaluate_model, extract_features
from reid.evaluation.metrics import evaluate_rank

__all__ = ["evaluate_model", "evaluate_rank", "extract_features"]
