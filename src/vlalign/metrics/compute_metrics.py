"""`compute_metrics` adapters: the vlalign metrics as `transformers.Trainer(compute_metrics=...)` functions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import EvalPrediction

from .retrieval_recall.retrieval_recall import RECALL_KS, recall_metrics


def retrieval_compute_metrics(eval_pred: EvalPrediction, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Retrieval recalls (`retrieval_recall`'s keys, percent) of an evaluation that yields score matrices.

    Expected layout:
        - `eval_pred.predictions`: `score_i2t` [images, texts], or a pair `(score_i2t, score_t2i)` with `score_t2i`
          [texts, images] (what `evaluate_retrieval(..., return_scores=True)` returns); with one matrix, image
          retrieval ranks its transpose (a dual encoder's similarities).
        - `eval_pred.label_ids`: [texts], the index of each text's image (row of `score_i2t`); an image's correct texts
          are those that name it, so every image needs at least one.
    """
    predictions = eval_pred.predictions
    score_i2t, score_t2i = predictions if isinstance(predictions, (tuple, list)) else (predictions, None)
    score_i2t = torch.as_tensor(np.asarray(score_i2t))
    score_t2i = score_i2t.t() if score_t2i is None else torch.as_tensor(np.asarray(score_t2i))
    txt2img = np.asarray(eval_pred.label_ids).reshape(-1).tolist()
    if score_i2t.ndim != 2 or score_t2i.shape != score_i2t.t().shape or score_i2t.shape[1] != len(txt2img):
        raise ValueError(
            f"Expected predictions score_i2t [images, texts] (and score_t2i [texts, images]) and label_ids [texts]; "
            f"got {tuple(score_i2t.shape)}, {tuple(score_t2i.shape)} and {len(txt2img)} labels."
        )
    img2txt = [[] for _ in range(score_i2t.shape[0])]
    for text, image in enumerate(txt2img):
        if not 0 <= image < len(img2txt):
            raise ValueError(f"label_ids[{text}] = {image} names no image row of score_i2t (0..{len(img2txt) - 1}).")
        img2txt[image].append(text)
    return recall_metrics(score_i2t.float(), score_t2i.float(), img2txt, txt2img, ks)


__all__ = ["retrieval_compute_metrics"]
