"""Image-text retrieval evaluation, the standard protocol for every vlalign method: rank all candidates by the cosine
of the projected embeddings (`get_image_features` / `get_text_features`), re-rank each query's top-k with the
image-text matching head where the model has one (ALBEF's `evaluation()` + `itm_eval()`), report R@1/5/10.

Dual encoders (FDT) stop after the ranking, as their official evaluators do. For ITM models three changes against
the official code leave the scores unchanged and make it fast and reproducible:

* the ITM re-rank is batched (many image-text pairs per fusion forward) and a pair that is in both an image's
  top-k texts and a text's top-k images is scored once;
* the re-rank work is sharded over processes (when `torch.distributed` is initialised) and the scores gathered,
  instead of every rank summing -100-filled matrices;
* ranks break score ties deterministically (see `retrieval_ranks`), where the official NumPy sort is
  platform-dependent.

The recalls come from the `retrieval_recall` `evaluate` metric's functions (`vlalign.metrics`), one implementation
for both.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import datasets
import PIL.Image
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..metrics.retrieval_recall.retrieval_recall import RECALL_KS, recall_metrics, retrieval_ranks
from ..models.input_checks import image_file, open_image, to_rgb
from ..models.losses import distributed_rank_and_world, gather_without_grad
from .duplicates import warn_duplicate_rows

#: the fix named when an evaluation image cannot be read
_CHECK_HINT = (
    "Repair or remove this image, or find every such image first: load the data with vlalign.data.loaders "
    "(load_karpathy_json / load_image_text_dataset) with check_images='decode' and on_error='skip', which drops "
    "them, counted and reported."
)


def flatten_captions(dataset) -> tuple[list[str], list[list[int]], list[int]]:
    texts, img2txt, txt2img = [], [], []
    for image_index, captions in enumerate(dataset["captions"]):
        if isinstance(captions, str):
            raise ValueError(
                "The evaluation dataset needs one row per image with a `captions` list; got a string. Use "
                "vlalign.data.loaders.load_karpathy_json(..., split_layout='eval') or group captions per image."
            )
        img2txt.append(list(range(len(texts), len(texts) + len(captions))))
        texts.extend(captions)
        txt2img.extend([image_index] * len(captions))
    return texts, img2txt, txt2img


def _embedding_and_states(output) -> tuple[torch.Tensor, torch.Tensor]:
    """(projected embedding, tower token states) of a `get_image_features` / `get_text_features` output."""
    return output.pooler_output, output.last_hidden_state


@torch.no_grad()
def encode_texts(model, processor, texts: list[str], batch_size: int, keep_states: bool, show_progress: bool):
    """Normalised ranking features of all captions (official eval preset) and, for re-ranking, the text tower's
    token states and attention masks (None otherwise)."""
    device = model.device
    states, masks, features = [], [], []
    for start in tqdm(range(0, len(texts), batch_size), desc="encoding texts", disable=not show_progress):
        batch = processor(text=texts[start : start + batch_size], preset="eval").to(device)
        output = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        embedding, hidden = _embedding_and_states(output)
        features.append(F.normalize(embedding, dim=-1))
        if keep_states:
            states.append(hidden)
            masks.append(batch["attention_mask"])
    if not keep_states:
        return None, None, torch.cat(features)
    return torch.cat(states), torch.cat(masks), torch.cat(features)


def _undecoded(dataset: Any) -> Any:
    """`dataset` with its `image` column left encoded (paths/bytes), so that `load_images` opens each image itself."""
    feature = getattr(dataset, "features", {}).get("image")
    if isinstance(feature, datasets.Image) and feature.decode:
        return dataset.cast_column("image", datasets.Image(decode=False))
    return dataset


#: what `load_images` opens itself: no image, a path, encoded bytes, a `datasets.Image(decode=False)` dict, a PIL image
_OPENED_HERE = (type(None), str, os.PathLike, bytes, bytearray, Mapping, PIL.Image.Image)


def load_images(dataset: Any, start: int, stop: int) -> list[Any]:
    """The images of rows `start` to `stop` of `dataset` (an `image` column; see `_undecoded`), each opened with
    `open_image` (the pixel limit applies) and decoded to RGB here, so that an unreadable, truncated or oversized
    image is named by its row and file with the fix; anything else (arrays, tensors, what a custom processor reads) is
    passed on for the processor to check."""
    images = []
    for row, image in enumerate(dataset[start:stop]["image"], start=start):
        if not isinstance(image, _OPENED_HERE):  # arrays, tensors, whatever else the processor takes
            images.append(image)
            continue
        file = image_file(image)
        where = f"Row {row} of the dataset, column 'image'" + (f" (file {file})" if file else "")
        try:
            if image is None:
                raise ValueError("there is no image")
            image = to_rgb(open_image(image, "the image"), "the image")
            image.load()
        except (OSError, ValueError, SyntaxError, TypeError) as err:  # PIL raises SyntaxError for some bad files
            raise ValueError(f"{where}: the image could not be read ({err}). {_CHECK_HINT}") from err
        images.append(image)
    return images


@torch.no_grad()
def encode_images(model, processor, dataset, batch_size: int, keep_states: bool, show_progress: bool):
    """Normalised ranking features of all images and, for re-ranking, the image tower's token states (kept on the
    CPU: for COCO they are ~9 GB; None otherwise). Images are read with `load_images`."""
    device = model.device
    states, features = [], []
    dataset = _undecoded(dataset)
    for start in tqdm(range(0, len(dataset), batch_size), desc="encoding images", disable=not show_progress):
        images = load_images(dataset, start, start + batch_size)
        pixel_values = processor(images=images)["pixel_values"].to(device)
        embedding, hidden = _embedding_and_states(model.get_image_features(pixel_values=pixel_values))
        features.append(F.normalize(embedding, dim=-1))
        if keep_states:
            states.append(hidden.cpu())
    return (torch.cat(states) if keep_states else None), torch.cat(features)


@torch.no_grad()
def self_attend_texts(model, text_hidden: torch.Tensor, text_masks: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Every text's states after the first fusion layer's self-attention, `batch_size` texts per forward."""
    return torch.cat(
        [
            model.fusion_model.self_attend_text(
                text_hidden[start : start + batch_size], text_masks[start : start + batch_size]
            )
            for start in range(0, len(text_hidden), batch_size)
        ]
    )


@torch.no_grad()
def rerank_pairs(
    model,
    pairs: torch.Tensor,
    text_hidden: torch.Tensor,
    text_masks: torch.Tensor,
    image_hidden: torch.Tensor,
    similarities: torch.Tensor,
    score_mode: str,
    batch_size: int,
    show_progress: bool,
) -> torch.Tensor:
    """ITM scores of `pairs` [(image, text), ...], `batch_size` pairs per fusion forward, this process's shard only,
    then gathered so every process returns all scores. The pairs are scored grouped by image, so that each image's
    cross-attention keys and values are computed once per batch for all its texts: at ALBEF-base sizes these
    projections of the 577 image tokens are ~3/4 of a pair's fusion FLOPs. The first fusion layer's self-attention,
    which sees only the text, is computed once per text up front (`self_attend_texts`)."""
    text_hidden = self_attend_texts(model, text_hidden, text_masks, batch_size)
    order = pairs[:, 0].argsort(stable=True)
    pairs = pairs[order]
    rank, world_size = distributed_rank_and_world()
    shard_size = math.ceil(len(pairs) / world_size)
    local_pairs = pairs[rank * shard_size : (rank + 1) * shard_size]
    device = model.device
    scores = torch.zeros(shard_size, device=device)
    for start in tqdm(range(0, len(local_pairs), batch_size), desc="ITM re-rank", disable=not show_progress):
        images, texts = local_pairs[start : start + batch_size].unbind(dim=1)
        unique_images, image_index = images.unique(return_inverse=True)
        scores[start : start + len(images)] = model.itm_score(
            text_hidden[texts.to(text_hidden.device)],
            text_masks[texts.to(text_masks.device)],
            image_hidden[unique_images].to(device),
            itc_similarity=similarities[images, texts],
            score_mode=score_mode,
            image_index=image_index.to(device),
            text_self_attended=True,
        )
    grouped_scores = gather_without_grad(scores)[: len(pairs)].cpu()
    return torch.empty_like(grouped_scores).scatter_(0, order, grouped_scores)


def _top_k_pairs(
    similarities: torch.Tensor, k_i2t: int, k_t2i: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The candidate pairs of both directions' top-k lists, each pair once: (unique pairs, i2t top-k, t2i top-k)."""
    num_texts = similarities.shape[1]
    top_texts = similarities.topk(k_i2t, dim=1).indices
    top_images = similarities.t().topk(k_t2i, dim=1).indices
    i2t_codes = (torch.arange(similarities.shape[0])[:, None] * num_texts + top_texts).flatten()
    t2i_codes = (top_images * num_texts + torch.arange(num_texts)[:, None]).flatten()
    codes = torch.unique(torch.cat([i2t_codes, t2i_codes]))
    pairs = torch.stack([codes // num_texts, codes % num_texts], dim=1)
    return pairs, top_texts, top_images


@torch.no_grad()
def evaluate_retrieval(
    model,
    processor,
    dataset,
    k_test: int | None = None,
    itc_only: bool = False,
    score_mode: str | None = None,
    batch_size: int = 64,
    rerank_batch_size: int = 256,
    return_scores: bool = False,
    show_progress: bool = True,
) -> dict:
    """Evaluate image-text retrieval: ITC ranking, then ITM re-ranking of the top-k where the model has ITM.

    Args:
        model: any vlalign model (`<Method>Model` or a training model holding one).
        processor: its processor.
        dataset: a `datasets.Dataset` with one row per image: `image` and `captions` (list of strings).
        k_test: candidates re-ranked per query (default `config.k_test`; capped at the candidate count).
        itc_only: rank by the embedding cosine alone (no fusion pass); always the case for dual encoders.
        score_mode: re-rank score, default `config.itm_score_mode` (`itm_logit` is ALBEF's).
        batch_size: images/captions per encoder forward; `rerank_batch_size`: pairs per fusion forward.
        return_scores: also return `score_matrix_i2t` [images, texts] and `score_matrix_t2i` [texts, images]
            (re-rank scores at each query's top-k, and a fill value below every real score elsewhere).

    Returns:
        `txt_r1/5/10`, `img_r1/5/10`, `txt_r_mean`, `img_r_mean`, `r_mean` (percent), `num_images`, `num_texts`,
        `num_itm_pairs` (fusion forwards actually run), and the score matrices when asked.
    """
    if len(dataset) == 0:
        raise ValueError("The evaluation dataset is empty; pass at least one image with its captions.")
    encoder = model.base_model
    was_training = encoder.training
    encoder.eval()
    texts, img2txt, txt2img = flatten_captions(dataset)
    warn_duplicate_rows(dataset, texts, txt2img)
    if itc_only or not encoder.supports_itm_rerank:
        score_mode = "itc_only"
    score_mode = score_mode or encoder.config.itm_score_mode
    rerank = score_mode != "itc_only"
    text_hidden, text_masks, text_features = encode_texts(encoder, processor, texts, batch_size, rerank, show_progress)
    image_hidden, image_features = encode_images(encoder, processor, dataset, batch_size, rerank, show_progress)
    similarities = (image_features @ text_features.t()).cpu()

    num_pairs = 0
    if not rerank:
        score_i2t, score_t2i = similarities.clone(), similarities.t().clone()
    else:
        k = k_test or encoder.config.k_test
        pairs, top_texts, top_images = _top_k_pairs(similarities, min(k, len(texts)), min(k, len(dataset)))
        num_pairs = len(pairs)
        pair_scores = rerank_pairs(
            encoder,
            pairs,
            text_hidden,
            text_masks,
            image_hidden,
            similarities.to(encoder.device),
            score_mode,
            rerank_batch_size,
            show_progress,
        )
        lookup = torch.full(similarities.shape, float("nan"))
        lookup[pairs[:, 0], pairs[:, 1]] = pair_scores
        fill = min(-100.0, pair_scores.min().item() - 1.0)
        score_i2t = torch.full(similarities.shape, fill)
        score_i2t.scatter_(1, top_texts, lookup.gather(1, top_texts))
        score_t2i = torch.full(similarities.t().shape, fill)
        score_t2i.scatter_(1, top_images, lookup.t().gather(1, top_images))

    encoder.train(was_training)
    metrics = recall_metrics(score_i2t, score_t2i, img2txt, txt2img)
    metrics.update(num_images=len(dataset), num_texts=len(texts), num_itm_pairs=num_pairs)
    if return_scores:
        metrics.update(score_matrix_i2t=score_i2t, score_matrix_t2i=score_t2i, similarities=similarities)
    return metrics


__all__ = [
    "RECALL_KS",
    "encode_images",
    "encode_texts",
    "evaluate_retrieval",
    "flatten_captions",
    "load_images",
    "recall_metrics",
    "retrieval_ranks",
]
