"""Plots people would rather see than read: loss curves, a recall chart, and query → top-k image grids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

LOSS_STYLES = ("-", "--", ":", "-.")


def plot_losses(log_history: list[dict], path: str | Path) -> Path:
    """Training loss and each named objective's loss (`loss_*`) against the optimizer step (from
    `trainer.state.log_history`)."""
    figure, axis = plt.subplots(figsize=(7, 4))
    names = ["loss", *sorted({key for entry in log_history for key in entry if key.startswith("loss_")})]
    for index, name in enumerate(names):
        style = LOSS_STYLES[index % len(LOSS_STYLES)]
        points = [(entry["step"], entry[name]) for entry in log_history if name in entry and "step" in entry]
        if points:
            axis.plot(*zip(*points, strict=True), style, label=name)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss")
    axis.set_title("Pretraining losses")
    if axis.lines:
        axis.legend()
    else:
        axis.text(0.5, 0.5, "no losses logged (run shorter than logging_steps)", ha="center", transform=axis.transAxes)
    axis.grid(alpha=0.3)
    return _save(figure, path)


def plot_recalls(metrics: dict, chance: dict[str, float], path: str | Path, protocol: str = "ITC ranking") -> Path:
    """Grouped bars of R@1/5/10 for text and image retrieval, with the R@1 chance level marked."""
    figure, axis = plt.subplots(figsize=(7, 4))
    ks = (1, 5, 10)
    width = 0.38
    for offset, (prefix, label) in enumerate((("txt", "text retrieval (image → text)"),
                                              ("img", "image retrieval (text → image)"))):  # fmt: skip
        values = [metrics[f"{prefix}_r{k}"] for k in ks]
        positions = [index + (offset - 0.5) * width for index in range(len(ks))]
        bars = axis.bar(positions, values, width, label=label)
        axis.bar_label(bars, fmt="%.1f", fontsize=8)
        axis.hlines(chance[f"{prefix}_r1"], positions[0] - width / 2, positions[0] + width / 2, colors="black")
    axis.set_xticks(range(len(ks)), [f"R@{k}" for k in ks])
    axis.set_ylabel("recall (%)")
    axis.set_ylim(0, 105)
    axis.set_title(f"Test retrieval ({protocol}); black ticks: R@1 chance")
    axis.legend(loc="upper left")
    return _save(figure, path)


def plot_text_to_image_results(
    queries: Sequence[str], results: Sequence[Sequence[dict]], images, path, ground_truth=None
):
    """One row per text query: its top-k retrieved images, the ground-truth image framed in green."""
    top_k = max(len(row) for row in results)
    figure, axes = plt.subplots(len(queries), top_k, figsize=(1.9 * top_k, 2.1 * len(queries)), squeeze=False)
    for row, (query, ranked) in enumerate(zip(queries, results, strict=True)):
        for column in range(top_k):
            axis = axes[row][column]
            axis.set_xticks([])
            axis.set_yticks([])
            if column >= len(ranked):
                axis.axis("off")
                continue
            hit = ranked[column]
            axis.imshow(images[hit["image_index"]])
            axis.set_xlabel(f"#{column + 1}  {hit['score']:.2f}", fontsize=8)
            if ground_truth is not None and hit["image_index"] == ground_truth[row]:
                for spine in axis.spines.values():
                    spine.set_edgecolor("limegreen")
                    spine.set_linewidth(4)
        axes[row][0].set_ylabel("\n".join(_wrap(query, 22)), fontsize=8, rotation=0, ha="right", va="center")
    figure.suptitle("Text → image retrieval (green: the query's own image)")
    return _save(figure, path)


def fdt_token_overlap(image_weights, text_weights, top_k: int = 10) -> dict:
    """The top-`top_k` activated FDT tokens of an image and of a caption (`[K]` sparsemax weights each), and how they
    overlap: shared top tokens, Jaccard index of the two supports (non-zero weights), and the cosine of the weights."""
    image_weights, text_weights = image_weights.detach().float().cpu(), text_weights.detach().float().cpu()
    image_top = image_weights.topk(min(top_k, image_weights.numel()))
    text_top = text_weights.topk(min(top_k, text_weights.numel()))
    image_support, text_support = image_weights > 0, text_weights > 0
    union = (image_support | text_support).sum().item()
    return {
        "image_tokens": image_top.indices.tolist(),
        "image_weights": image_top.values.tolist(),
        "text_tokens": text_top.indices.tolist(),
        "text_weights": text_top.values.tolist(),
        "shared_top_tokens": sorted(set(image_top.indices.tolist()) & set(text_top.indices.tolist())),
        "image_support": int(image_support.sum()),
        "text_support": int(text_support.sum()),
        "support_jaccard": (image_support & text_support).sum().item() / union if union else 0.0,
        "weight_cosine": torch.nn.functional.cosine_similarity(image_weights, text_weights, dim=0).item(),
    }


def plot_fdt_token_overlap(image, caption: str, image_weights, text_weights, path, top_k: int = 10) -> Path:
    """For an image and its caption: the image, and the top activated FDT codebook tokens of each side as bars
    (tokens both sides share in orange), with their overlap in the title (see `fdt_token_overlap`)."""
    overlap = fdt_token_overlap(image_weights, text_weights, top_k)
    shared = set(overlap["shared_top_tokens"])
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.6), gridspec_kw={"width_ratios": [1, 1.5, 1.5]})
    axes[0].imshow(image)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    axes[0].set_xlabel("\n".join(_wrap(caption, 30)), fontsize=8)
    for axis, side, title in ((axes[1], "image", "image"), (axes[2], "text", "caption")):
        tokens, weights = overlap[f"{side}_tokens"], overlap[f"{side}_weights"]
        colors = ["tab:orange" if token in shared else "tab:blue" for token in tokens]
        axis.barh(range(len(tokens)), weights, color=colors)
        axis.set_yticks(range(len(tokens)), [f"#{token}" for token in tokens], fontsize=8)
        axis.invert_yaxis()
        axis.set_xlabel("sparsemax weight")
        axis.set_title(f"top FDT tokens of the {title} ({overlap[f'{side}_support']} active)", fontsize=9)
    figure.suptitle(
        f"Shared top-{top_k} tokens (orange): {len(shared)}; support Jaccard {overlap['support_jaccard']:.2f}; "
        f"weight cosine {overlap['weight_cosine']:.2f}",
        fontsize=10,
    )
    return _save(figure, path)


def fdt_example_plots(model, processor, dataset, output_dir: str | Path, examples: int = 2) -> list[Path]:
    """`plot_fdt_token_overlap` for the first `examples` images of `dataset` and their first captions."""
    model.eval()
    paths = []
    for index in range(min(examples, len(dataset))):
        row = dataset[index]
        inputs = processor(images=[row["image"]], text=[row["captions"][0]]).to(model.device)
        with torch.no_grad():
            outputs = model(**inputs)
        paths.append(
            plot_fdt_token_overlap(
                row["image"], row["captions"][0], outputs.image_fdt_weights[0], outputs.text_fdt_weights[0],
                Path(output_dir) / f"fdt_tokens_{index}.png",
            )
        )  # fmt: skip
    return paths


def _wrap(text: str, width: int) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        if current and len(current) + len(word) + 1 > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    return [*lines, current]


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


__all__ = [
    "fdt_example_plots",
    "fdt_token_overlap",
    "plot_fdt_token_overlap",
    "plot_losses",
    "plot_recalls",
    "plot_text_to_image_results",
]
