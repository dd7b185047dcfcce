"""Plots people would rather see than read: loss curves, a recall chart, query → top-k image grids, and each
method's own pictures (FDT's activated tokens; CODIS's codebook usage and prototype gallery; SIMLA's predicted
keywords)."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import torch

from .evaluation.retrieval import encode_images, encode_texts, flatten_captions

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

LOSS_STYLES = ("-", "--", ":", "-.")

logger = logging.getLogger(__name__)


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


def fdt_example_plots(
    model, processor, dataset, output_dir: str | Path, log_history: list[dict] | None = None, examples: int = 2
) -> list[Path]:
    """`plot_fdt_token_overlap` for the first `examples` images of `dataset` and their first captions (the
    `Method.example_plots` contract; `log_history` is not used)."""
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


#: what a CODIS training model logs about its codebook at every logging step (`training_log_values`)
CODEBOOK_STATS = ("codebook_usage_image", "codebook_usage_text", "assignment_entropy", "code_agreement")


def has_codebook_stats(log_history: list[dict]) -> bool:
    """Whether a `trainer.state.log_history` holds CODIS codebook statistics at some step."""
    return any("step" in entry and any(name in entry for name in CODEBOOK_STATS) for entry in log_history)


def plot_codebook_usage(log_history: list[dict], path: str | Path, codebook_size: int | None = None) -> Path:
    """CODIS codebook health over training (from `trainer.state.log_history`): the share of prototypes that are some
    sample's most likely code, per modality, and the share of image-caption pairs given the same code (top panel,
    percent); the mean entropy of the teacher assignments (bottom panel, nats; with `codebook_size`, its ceiling
    ln K is marked). Usage is measured per (global) batch, so it cannot exceed batch size / K. Raises ValueError when
    the history has no codebook statistics (a run whose code loss and teacher-plan OT loss are off, or that stopped
    before its first logging step)."""
    if not has_codebook_stats(log_history):
        raise ValueError(
            "The log history has no codebook statistics (" + ", ".join(CODEBOOK_STATS) + "). CODIS logs them at "
            "each logging step when it computes teacher plans (code_loss_weight > 0, or ot_plan_source='teacher'); "
            "this run had both off, or ended before its first logging step."
        )

    def series(name: str, scale: float = 1.0) -> tuple[list, list]:
        entries = [entry for entry in log_history if name in entry and "step" in entry]
        return [entry["step"] for entry in entries], [entry[name] * scale for entry in entries]

    of_k = f"% of K={codebook_size}" if codebook_size else "% of prototypes"
    figure, (usage_axis, entropy_axis) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    highest = 0.0
    for name, label, style in (
        ("codebook_usage_image", f"prototypes used by images ({of_k})", "-"),
        ("codebook_usage_text", f"prototypes used by captions ({of_k})", "--"),
        ("code_agreement", "image and caption share their code (% of pairs)", ":"),
    ):
        steps, values = series(name, 100.0)
        if steps:
            usage_axis.plot(steps, values, style, marker="o", markersize=3, label=label)
            highest = max(highest, *values)
    usage_axis.set_ylabel("percent")
    usage_axis.set_ylim(0, min(105.0, 1.25 * highest + 1.0))
    usage_axis.set_title("CODIS codebook usage during training (teacher assignments of each batch)")
    usage_axis.legend(fontsize=8, loc="best")
    usage_axis.grid(alpha=0.3)

    steps, values = series("assignment_entropy")
    if steps:
        entropy_axis.plot(steps, values, "-", marker="o", markersize=3, color="tab:purple", label="mean entropy")
    if codebook_size:
        entropy_axis.axhline(
            math.log(codebook_size), color="gray", linestyle="--", label=f"ln K (uniform over {codebook_size})"
        )
    entropy_axis.set_ylabel("assignment entropy (nats)")
    entropy_axis.set_xlabel("optimizer step")
    entropy_axis.set_ylim(bottom=0)
    if entropy_axis.lines:
        entropy_axis.legend(fontsize=8, loc="best")
    entropy_axis.grid(alpha=0.3)
    return _save(figure, path)


def prototype_assignments(model, processor, dataset, batch_size: int = 64) -> dict[int, dict[str, list[int]]]:
    """Which prototype each image and each caption of an evaluation-layout `dataset` (`image`, `captions` lists) is
    assigned to by a `CodisModel`: the argmax of `model.code_probabilities` of its projected embedding, encoded
    exactly as retrieval evaluation encodes (`encode_images` / `encode_texts`: the processor's image transform and
    `preset="eval"` captions, in batches of `batch_size`, without gradients).

    Returns `{prototype: {"images": [row indices], "captions": [caption indices]}}` for every prototype that some image
    or caption is assigned to; caption indices count the captions in dataset order (row 0's captions first)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    texts, _, _ = flatten_captions(dataset)
    model.eval()
    _, image_embeds = encode_images(model, processor, dataset, batch_size, keep_states=False, show_progress=False)
    _, _, text_embeds = encode_texts(model, processor, texts, batch_size, keep_states=False, show_progress=False)
    with torch.no_grad():
        image_codes = model.code_probabilities(image_embeds).argmax(dim=-1).tolist()
        text_codes = model.code_probabilities(text_embeds).argmax(dim=-1).tolist()
    assignments: dict[int, dict[str, list[int]]] = {}
    for kind, codes in (("images", image_codes), ("captions", text_codes)):
        for index, code in enumerate(codes):
            assignments.setdefault(code, {"images": [], "captions": []})[kind].append(index)
    return dict(sorted(assignments.items()))


def most_used_prototypes(assignments: dict[int, dict[str, list[int]]], count: int) -> list[int]:
    """The `count` prototypes of `prototype_assignments` with the most images + captions (ties: lower index first)."""
    ranked = sorted(
        assignments, key=lambda code: (-len(assignments[code]["images"]) - len(assignments[code]["captions"]), code)
    )
    return ranked[:count]


def plot_prototype_gallery(
    model, processor, dataset, path: str | Path, prototypes: int = 4, per_prototype: int = 4, batch_size: int = 64
) -> Path:
    """What a CODIS codebook's prototypes stand for: one row per prototype (the `prototypes` most used on `dataset`,
    see `prototype_assignments`), with up to `per_prototype` of the images assigned to it, then up to `per_prototype`
    of the captions assigned to it. Images are labelled with their row index, captions with the index of their own
    image, so a caption whose image sits in the same row shows the two modalities agreeing on the code."""
    if prototypes <= 0 or per_prototype <= 0:
        raise ValueError(f"prototypes and per_prototype must be positive, got {prototypes} and {per_prototype}.")
    assignments = prototype_assignments(model, processor, dataset, batch_size)
    texts, _, caption_images = flatten_captions(dataset)
    chosen = most_used_prototypes(assignments, prototypes)
    figure, axes = plt.subplots(
        len(chosen), per_prototype + 1, figsize=(1.6 * per_prototype + 5.5, 1.9 * len(chosen)), squeeze=False,
        gridspec_kw={"width_ratios": [1] * per_prototype + [3.4]},
    )  # fmt: skip
    for row, code in enumerate(chosen):
        images, captions = assignments[code]["images"], assignments[code]["captions"]
        for column in range(per_prototype):
            axis = axes[row][column]
            axis.set_xticks([])
            axis.set_yticks([])
            if column < len(images):
                axis.imshow(dataset[images[column]]["image"])
                axis.set_xlabel(f"image #{images[column]}", fontsize=7)
            else:
                for spine in axis.spines.values():
                    spine.set_visible(False)
                if column == 0:
                    axis.text(0.5, 0.5, "(no image)", fontsize=7, ha="center", va="center", transform=axis.transAxes)
        axes[row][0].set_ylabel(
            f"prototype {code}\n{len(images)} image{'s' * (len(images) != 1)}\n"
            f"{len(captions)} caption{'s' * (len(captions) != 1)}",
            fontsize=8, rotation=0, ha="right", va="center",
        )  # fmt: skip
        text_axis = axes[row][-1]
        text_axis.axis("off")
        lines = [
            "\n   ".join(_wrap(f"#{caption_images[index]}: {texts[index]}", 52)) for index in captions[:per_prototype]
        ]
        if len(captions) > per_prototype:
            lines.append(f"(+{len(captions) - per_prototype} more)")
        text_axis.text(0, 0.5, "\n".join(lines) or "(no caption)", fontsize=7, va="center", ha="left",
                       transform=text_axis.transAxes)  # fmt: skip
    figure.suptitle(
        f"CODIS prototypes most used on {len(dataset)} images / {len(texts)} captions: the images and captions "
        "assigned to each\n(argmax of code_probabilities; #n: an image's index, or a caption's own image's)",
        fontsize=9,
    )
    return _save(figure, path)


def codis_example_plots(
    model, processor, dataset, output_dir: str | Path, log_history: list[dict] | None = None
) -> list[Path]:
    """CODIS's `Method.example_plots`: `codebook_usage.png` (`plot_codebook_usage` of the training log) and
    `prototype_gallery.png` (`plot_prototype_gallery` of `dataset`). The usage plot is skipped with a warning when the
    log has no codebook statistics (code loss off, or a run shorter than its logging interval)."""
    output_dir = Path(output_dir)
    paths = []
    if log_history and has_codebook_stats(log_history):
        paths.append(plot_codebook_usage(log_history, output_dir / "codebook_usage.png", model.config.codebook_size))
    else:
        warnings.warn(
            "No codebook statistics in the training log (code loss and teacher-plan OT off, or the run ended before "
            "its first logging step); skipping codebook_usage.png.",
            stacklevel=2,
        )
    paths.append(plot_prototype_gallery(model, processor, dataset, output_dir / "prototype_gallery.png"))
    return paths


def psl_keywords(model, processor, images, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """The `top_k` keywords a SIMLA model with pretraining heads predicts for each image (PSL, pseudo-labelled keyword
    prediction): the highest `model.keyword_logits` over the word-piece vocabulary, with their sigmoid
    probabilities, best first. Images go through the processor's image transform; the tokenizer's special tokens
    ([PAD], [CLS], [SEP], [MASK], [UNK], ...) and ids the tokenizer does not have are left out of the ranking.

    Returns one `[(word piece, probability), ...]` list per image. Raises ValueError when `top_k` is not positive or
    the model has no pretraining heads (`config.use_pretraining_heads=False`)."""
    if top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}.")
    tokenizer = processor.tokenizer
    pixel_values = processor(images=list(images))["pixel_values"].to(model.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model.keyword_logits(pixel_values).float().cpu()
    finally:
        model.train(was_training)
    vocab_size = logits.shape[-1]
    excluded = torch.zeros(vocab_size, dtype=torch.bool)
    excluded[[i for i in tokenizer.all_special_ids if 0 <= i < vocab_size]] = True
    excluded[len(tokenizer) :] = True  # model rows without a word (a vocabulary padded beyond the tokenizer's)
    ranked = logits.masked_fill(excluded, float("-inf")).topk(min(top_k, int((~excluded).sum())), dim=-1)
    probabilities = torch.sigmoid(ranked.values)
    return [
        list(zip(tokenizer.convert_ids_to_tokens(ids.tolist()), probs.tolist(), strict=True))
        for ids, probs in zip(ranked.indices, probabilities, strict=True)
    ]


def plot_psl_keywords(model, processor, images, captions: Sequence[str], path: str | Path, top_k: int = 5) -> Path:
    """SIMLA's keyword predictions (PSL), one row per image: the image, its caption, and the `top_k` keywords the
    model predicts from the image alone (`psl_keywords`) as sigmoid-probability bars; keywords that also occur in the
    caption's tokens are orange. Needs a model with pretraining heads."""
    images = list(images)
    captions = list(captions)
    if len(images) != len(captions):
        raise ValueError(f"Got {len(images)} images but {len(captions)} captions.")
    if not images:
        raise ValueError("plot_psl_keywords needs at least one image.")
    keywords = psl_keywords(model, processor, images, top_k)
    tokenizer = processor.tokenizer
    figure, axes = plt.subplots(
        len(images), 3, figsize=(11, 1.9 * len(images) + 0.6), squeeze=False,
        gridspec_kw={"width_ratios": [1, 2.2, 2.4]},
    )  # fmt: skip
    for row, (image, caption, ranked) in enumerate(zip(images, captions, keywords, strict=True)):
        image_axis, caption_axis, bar_axis = axes[row]
        image_axis.imshow(image)
        image_axis.set_xticks([])
        image_axis.set_yticks([])
        caption_axis.axis("off")
        caption_axis.text(0, 0.5, "\n".join(_wrap(caption, 40)), fontsize=8, va="center", ha="left",
                          parse_math=False, transform=caption_axis.transAxes)  # fmt: skip
        caption_tokens = set(tokenizer.tokenize(caption))
        words = [word for word, _ in ranked]
        colors = ["tab:orange" if word in caption_tokens else "tab:blue" for word in words]
        bars = bar_axis.barh(range(len(ranked)), [probability for _, probability in ranked], color=colors)
        bar_axis.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
        bar_axis.set_yticks(range(len(ranked)), words, fontsize=8)
        bar_axis.invert_yaxis()
        bar_axis.set_xlim(0, 1)
        bar_axis.tick_params(axis="x", labelsize=7)
        if row == len(images) - 1:
            bar_axis.set_xlabel("sigmoid(keyword logit)", fontsize=8)
    axes[0][1].set_title("caption", fontsize=9)
    axes[0][2].set_title(f"top {top_k} predicted keywords (orange: in the caption)", fontsize=9)
    figure.suptitle("SIMLA keyword prediction (PSL) from the image alone", fontsize=10)
    return _save(figure, path)


def simla_example_plots(
    model, processor, dataset, output_dir: str | Path, log_history: list[dict] | None = None, examples: int = 6
) -> list[Path]:
    """SIMLA's `Method.example_plots`: `psl_keywords.png`, `plot_psl_keywords` for the first `examples` images of
    `dataset` with their first captions (`log_history` is not used). A model without pretraining heads
    (`config.use_pretraining_heads=False`, e.g. a fine-tuned retrieval model) has no keyword head: nothing is drawn
    and the reason is logged."""
    if not model.config.use_pretraining_heads:
        logger.warning(
            "This SIMLA model has no pretraining heads (config.use_pretraining_heads=False), so it predicts no PSL "
            "keywords; skipping psl_keywords.png."
        )
        return []
    rows = [dataset[index] for index in range(min(examples, len(dataset)))]
    if not rows:
        logger.warning("The dataset is empty; skipping psl_keywords.png.")
        return []
    return [
        plot_psl_keywords(
            model, processor, [row["image"] for row in rows], [row["captions"][0] for row in rows],
            Path(output_dir) / "psl_keywords.png",
        )
    ]  # fmt: skip


def plot_vqa_answers(
    images,
    questions: Sequence[str],
    answers: Sequence[dict],
    path: str | Path,
    truths: Sequence[str] | None = None,
    title: str = "VQA on synthetic test images: predicted answer (score)",
) -> Path:
    """A grid of test images, each with its question and the predicted answer and score (`answers`: the VQA
    pipeline's best `{"answer", "score"}` per question); with `truths`, right answers in green, wrong ones in red with
    the true answer beside them. Classifiers of an image and a text (visual entailment, NLVR2 with the pair drawn as one
    image) draw their predicted labels the same way, under their own `title`."""
    columns = min(4, len(questions))
    rows = math.ceil(len(questions) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 3.5 * rows), squeeze=False)
    for position, axis in enumerate(axes.flat):
        if position >= len(questions):
            axis.axis("off")
            continue
        axis.set_xticks([])
        axis.set_yticks([])
        axis.imshow(images[position])
        predicted = answers[position]
        label = f"{predicted['answer']} ({predicted['score']:.2f})"
        colour = "black"
        if truths is not None:
            right = predicted["answer"] == truths[position]
            colour = "green" if right else "red"
            label += "" if right else f"  [true: {truths[position]}]"
        axis.set_title("\n".join(_wrap(questions[position], 28)), fontsize=8)
        axis.set_xlabel(label, fontsize=9, color=colour)  # a label, so that tight_layout makes room for it
    figure.suptitle(title)
    return _save(figure, path)


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
    "CODEBOOK_STATS",
    "codis_example_plots",
    "fdt_example_plots",
    "fdt_token_overlap",
    "has_codebook_stats",
    "most_used_prototypes",
    "plot_codebook_usage",
    "plot_fdt_token_overlap",
    "plot_losses",
    "plot_prototype_gallery",
    "plot_psl_keywords",
    "plot_recalls",
    "plot_text_to_image_results",
    "plot_vqa_answers",
    "prototype_assignments",
    "psl_keywords",
    "simla_example_plots",
]
