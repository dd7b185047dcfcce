"""Image–text retrieval recall (R@K), as an `evaluate` metric.

Each example is one retrieval query: its scores over all candidates (`predictions`), the indices of its correct
candidates (`references`) and which modality the query is (`query_modality`: ``"image"`` for text retrieval, an image
asking for its captions; ``"text"`` for image retrieval, a caption asking for its image). A query is a hit at K when
any of its correct candidates ranks within the top K.

Ties: candidates are sorted by descending score, and among equal scores the one with the higher index ranks first —
the official ALBEF evaluation's ``np.argsort(scores)[::-1]`` made stable, so ranks do not depend on the platform's sort.

This file is self-contained (no vlalign import) so it also works as a standalone metric; `vlalign.evaluation` uses
the same functions, so there is one implementation of the protocol.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate
import torch

_DESCRIPTION = """Recall@K of image-text retrieval (text retrieval `txt_r@k`: image queries; image retrieval
`img_r@k`: text queries), in percent, with the per-direction means over K and `r_mean`, their average."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one list of scores per query, over all candidates of the other modality.
    references: one list of correct candidate indices per query (an image has several captions).
    query_modality: "image" or "text" per query.
    ks: the K of recall@K (default 1, 5, 10).
Returns:
    `txt_r{k}` / `img_r{k}` for each K (when the direction has queries), `txt_r_mean` / `img_r_mean`, and `r_mean`
    when both directions are present.
Examples:
    >>> recall = evaluate.load(vlalign.metrics.path("retrieval_recall"))
    >>> recall.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[[0], [0]], query_modality=["image", "image"],
    ...                ks=[1])
    {'txt_r1': 50.0, 'txt_r_mean': 50.0}
"""

_CITATION = """@inproceedings{li2021align,
  title={Align before Fuse: Vision and Language Representation Learning with Momentum Distillation},
  author={Li, Junnan and Selvaraju, Ramprasaath R. and Gotmare, Akhilesh Deepak and Joty, Shafiq and Xiong, Caiming
          and Hoi, Steven},
  booktitle={NeurIPS}, year={2021}
}"""

RECALL_KS = (1, 5, 10)
#: query modality -> prefix of its recalls (an image query retrieves texts)
DIRECTIONS = {"image": "txt", "text": "img"}


def retrieval_ranks(scores: torch.Tensor, ground_truth: Sequence[Sequence[int]]) -> torch.Tensor:
    """Best 0-based rank of each query's ground-truth candidates (`scores`: [queries, candidates]); ties as above."""
    if scores.ndim != 2 or scores.shape[0] != len(ground_truth):
        raise ValueError(
            f"scores must be [queries, candidates] with one ground-truth list per query; got scores of shape "
            f"{tuple(scores.shape)} and {len(ground_truth)} ground-truth lists."
        )
    order = torch.sort(scores, dim=1, stable=True).indices.flip(dims=[1])  # stable ascending, flipped: ties high-first
    positions = torch.empty_like(order)
    positions.scatter_(1, order, torch.arange(scores.shape[1]).expand_as(order).contiguous())
    ranks = torch.empty(scores.shape[0], dtype=torch.long)
    for query, targets in enumerate(ground_truth):
        targets = list(targets)
        if not targets:
            raise ValueError(f"Query {query} has no ground-truth candidate; every query needs at least one.")
        if min(targets) < 0 or max(targets) >= scores.shape[1]:
            raise ValueError(f"Query {query} names candidate {targets} outside 0..{scores.shape[1] - 1}.")
        ranks[query] = positions[query, targets].min()
    return ranks


def recall_at(ranks: torch.Tensor, prefix: str, ks: Sequence[int]) -> dict[str, float]:
    """`{prefix}_r{k}` (percent of queries ranked within K) and `{prefix}_r_mean`."""
    metrics = {f"{prefix}_r{k}": 100.0 * (ranks < k).double().mean().item() for k in ks}
    metrics[f"{prefix}_r_mean"] = sum(metrics.values()) / len(ks)
    return metrics


def recall_metrics(
    score_i2t: torch.Tensor,
    score_t2i: torch.Tensor,
    img2txt: Sequence[Sequence[int]],
    txt2img: Sequence[int],
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, float]:
    """Both directions from the two score matrices: text retrieval (per image: any of its captions within the top K)
    and image retrieval (per caption: its image within the top K), their means and `r_mean`."""
    metrics = recall_at(retrieval_ranks(score_i2t, img2txt), "txt", ks)
    metrics.update(recall_at(retrieval_ranks(score_t2i, [[image] for image in txt2img]), "img", ks))
    metrics["r_mean"] = (metrics["txt_r_mean"] + metrics["img_r_mean"]) / 2
    return metrics


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    """Image–text retrieval recall@K over queries of both directions (see the module docstring)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                    "query_modality": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, references, query_modality, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
        unknown = sorted(set(query_modality) - set(DIRECTIONS))
        if unknown:
            raise ValueError(f"query_modality must be 'image' or 'text', got {unknown}.")
        metrics: dict[str, float] = {}
        for modality, prefix in DIRECTIONS.items():
            rows = [i for i, value in enumerate(query_modality) if value == modality]
            if not rows:
                continue
            widths = {len(predictions[i]) for i in rows}
            if len(widths) != 1:
                raise ValueError(f"{modality} queries score different numbers of candidates: {sorted(widths)}.")
            scores = torch.tensor([list(predictions[i]) for i in rows], dtype=torch.float32)
            metrics.update(recall_at(retrieval_ranks(scores, [references[i] for i in rows]), prefix, ks))
        if "txt_r_mean" in metrics and "img_r_mean" in metrics:
            metrics["r_mean"] = (metrics["txt_r_mean"] + metrics["img_r_mean"]) / 2
        return metrics
