"""Top-K classification accuracy from class scores, as an `evaluate` metric (zero-shot image classification).

Each example is one image: its scores over all classes (`predictions`) and its class index (`references`). It is
correct at K when its class ranks within the top K. Ties rank the higher class index first, as `retrieval_recall`
breaks them, so results do not depend on the platform's sort.

This file is self-contained (no vlalign import) so it also works as a standalone metric; vlalign's zero-shot
evaluator uses the same functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate
import torch

_DESCRIPTION = """Top-K accuracy (`top{k}_accuracy`, percent) of class scores: the share of examples whose class ranks
within the K best-scored classes."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one list of class scores per example (all of the same length).
    references: the class index of each example.
    ks: the K of top-K accuracy (default 1, 5).
Returns:
    `top{k}_accuracy` for each K, in percent.
Examples:
    >>> accuracy = evaluate.load(vlalign.metrics.path("topk_accuracy"))
    >>> accuracy.compute(predictions=[[0.9, 0.1, 0.0], [0.2, 0.3, 0.5]], references=[0, 1], ks=[1, 2])
    {'top1_accuracy': 50.0, 'top2_accuracy': 100.0}
"""

TOPK_KS = (1, 5)


def label_ranks(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """0-based rank of each example's class among its scores (`scores`: [examples, classes]); ties as above."""
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(
            f"scores must be [examples, classes] with one label per example; got scores of shape {tuple(scores.shape)} "
            f"and {labels.shape[0]} labels."
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ValueError(
            f"Labels must be class indices in 0..{scores.shape[1] - 1}; got {labels.min()}..{labels.max()}."
        )
    own = scores.gather(1, labels[:, None])
    classes = torch.arange(scores.shape[1])
    return ((scores > own) | ((scores == own) & (classes > labels[:, None]))).sum(dim=1)


def topk_accuracy(ranks: torch.Tensor, ks: Sequence[int] = TOPK_KS) -> dict[str, float]:
    """`top{k}_accuracy`: percent of examples whose class rank is below K."""
    return {f"top{k}_accuracy": 100.0 * (ranks < k).double().mean().item() for k in ks}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopkAccuracy(evaluate.Metric):
    """Top-K accuracy of class scores (see the module docstring)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, ks: Sequence[int] = TOPK_KS) -> dict[str, float]:
        widths = {len(row) for row in predictions}
        if len(widths) != 1:
            raise ValueError(f"Every example must score the same classes; got rows of lengths {sorted(widths)}.")
        scores = torch.tensor([list(row) for row in predictions], dtype=torch.float32)
        return topk_accuracy(label_ranks(scores, torch.tensor(references, dtype=torch.long)), ks)
