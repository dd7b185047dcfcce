"""`evaluate` metrics shipped with vlalign, loadable offline by path:
``evaluate.load(vlalign.metrics.path("retrieval_recall"))`` (image-text retrieval R@K),
``evaluate.load(vlalign.metrics.path("topk_accuracy"))`` (top-K classification accuracy) and
``evaluate.load(vlalign.metrics.path("vqa_accuracy"))`` (the VQA accuracy); and
`retrieval_compute_metrics`, the recalls as a `Trainer` `compute_metrics` function."""

from __future__ import annotations

from pathlib import Path

from .compute_metrics import retrieval_compute_metrics

METRICS = ("retrieval_recall", "topk_accuracy", "vqa_accuracy")


def path(name: str) -> str:
    """The folder of the metric `name`, for `evaluate.load`."""
    if name not in METRICS:
        raise ValueError(f"Unknown vlalign metric {name!r}; choose one of {list(METRICS)}.")
    return str(Path(__file__).parent / name)


__all__ = ["METRICS", "path", "retrieval_compute_metrics"]
