"""The chart the benchmarks share: two measurements side by side for each configuration, as paired bars."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def paired_bars(path: Path, labels: list[str], series: dict[str, list[float]], ylabel: str, title: str) -> None:
    """Write a PNG with one group of bars per label, one bar per series (e.g. official vs vlalign)."""
    figure, axis = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(series)
    for index, (name, values) in enumerate(series.items()):
        offset = (index - (len(series) - 1) / 2) * width
        axis.bar([position + offset for position in range(len(labels))], values, width, label=name)
    axis.set_xticks(list(range(len(labels))), labels)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
