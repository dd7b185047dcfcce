"""Evaluation protocols."""

from .retrieval import evaluate_retrieval, recall_metrics, retrieval_ranks

__all__ = ["evaluate_retrieval", "recall_metrics", "retrieval_ranks"]
