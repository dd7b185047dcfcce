"""Evaluation protocols: image-text retrieval and zero-shot classification with prompt ensembles."""

from .retrieval import evaluate_retrieval, recall_metrics, retrieval_ranks
from .zero_shot import fill_templates, zero_shot_class_embeddings, zero_shot_classify

__all__ = [
    "evaluate_retrieval",
    "fill_templates",
    "recall_metrics",
    "retrieval_ranks",
    "zero_shot_class_embeddings",
    "zero_shot_classify",
]
