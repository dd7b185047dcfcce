"""`evaluate` metrics shipped with vlalign, loadable offline by path:
``evaluate.load(vlalign.metrics.path("retrieval_recall"))``."""

from __future__ import annotations

from pathlib import Path

METRICS = ("retrieval_recall",)


def path(name: str) -> str:
    """The folder of the metric `name`, for `evaluate.load`."""
    if name not in METRICS:
        raise ValueError(f"Unknown vlalign metric {name!r}; choose one of {list(METRICS)}.")
    return str(Path(__file__).parent / name)


__all__ = ["METRICS", "path"]
