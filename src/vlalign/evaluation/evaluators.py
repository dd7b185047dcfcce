"""`evaluate` evaluators for every vlalign method: image-text retrieval (`ImageTextRetrievalEvaluator`, the standard
protocol of `evaluate_retrieval`) and zero-shot image classification (`ZeroShotImageClassificationEvaluator`, the
prompt-ensemble protocol of `zero_shot_class_embeddings`), each returning its vlalign metric, with bootstrap intervals.

```python
>>> from vlalign.evaluation import ImageTextRetrievalEvaluator, ZeroShotImageClassificationEvaluator
>>> ImageTextRetrievalEvaluator().compute("path/to/model", eval_dataset, strategy="bootstrap", random_state=0)
{'txt_r1': {'score': 62.0, 'confidence_interval': (52.0, 71.0), 'standard_error': 4.8}, ..., 'num_images': 100, ...}
>>> ZeroShotImageClassificationEvaluator().compute((model, processor), labelled_dataset, templates=["a photo of a {}."])
{'top1_accuracy': 71.4, 'top5_accuracy': 100.0, 'num_images': 56, 'num_classes': 5, 'total_time_in_seconds': ...}
```

Why not evaluate's own: its `image-classification` evaluator needs the Hub's `accuracy` metric and a label mapping,
refuses the `zero-shot-image-classification` pipeline (task check), runs the pipeline once per image (re-encoding
every class prompt each time) and takes no prompt templates; it has no retrieval evaluator.

Bootstrap: evaluate's `Evaluator` calls `metric.compute` once per resample, far too slow for 9999 resamples. Every
key of these metrics averages hit rates (the share of queries ranked within K), and resampling queries leaves each
query's rank unchanged, so the ranks are computed once and `scipy.stats.bootstrap` resamples them, vectorised, all
keys in one call. Image and text queries are different populations: `r_mean`, the average of both directions' means,
resamples each population independently.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset
from evaluate import Evaluator
from scipy.stats import DegenerateDataWarning, bootstrap
from transformers import AutoProcessor, Pipeline, pipeline

from ..metrics import path
from ..metrics.retrieval_recall.retrieval_recall import DIRECTIONS, RECALL_KS, retrieval_ranks
from ..metrics.topk_accuracy.topk_accuracy import TOPK_KS, label_ranks
from ..models.pipeline_retrieval import TASK as RETRIEVAL_TASK
from .retrieval import encode_images, evaluate_retrieval, flatten_captions
from .zero_shot import zero_shot_class_embeddings

ZERO_SHOT_TASK = "zero-shot-image-classification"
DEFAULT_TEMPLATES = ("a photo of a {}.",)

#: per metric key, the (population, K) pairs whose hit rates (percent of the population's ranks below K) it averages
HitRates = dict[str, list[tuple[int, int]]]


def recall_hit_rates(ks: Sequence[int]) -> HitRates:
    """The `retrieval_recall` keys over populations 0 (image queries: text retrieval) and 1 (text queries)."""
    keys: HitRates = {}
    for population, prefix in enumerate(DIRECTIONS.values()):
        keys.update({f"{prefix}_r{k}": [(population, k)] for k in ks})
        keys[f"{prefix}_r_mean"] = [(population, k) for k in ks]
    keys["r_mean"] = keys["txt_r_mean"] + keys["img_r_mean"]  # both directions average the same Ks
    return keys


def bootstrap_intervals(
    ranks: Sequence[torch.Tensor],
    keys: HitRates,
    scores: dict[str, float],
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    random_state: int | np.random.Generator | None = None,
) -> dict[str, dict[str, Any]]:
    """`{key: {"score", "confidence_interval", "standard_error"}}` (evaluate's bootstrap layout) for each key of
    `scores`: `scipy.stats.bootstrap` (BCa) resamples each population of per-query `ranks` independently, one call
    for all keys (a vector-valued statistic of `keys`' hit rates). A key without spread gets the interval (score,
    score), where BCa is undefined."""
    pairs = sorted({pair for key in scores for pair in keys[key]})

    def statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        rates = {(population, k): 100.0 * (samples[population] < k).mean(axis=axis) for population, k in pairs}
        return np.stack([np.mean([rates[pair] for pair in keys[key]], axis=0) for key in scores])

    # ranks beyond the largest K all count as misses: small integers make the resampled copies cheap
    cap = max(k for _, k in pairs)
    samples = [np.minimum(population.numpy(), cap).astype(np.int16) for population in ranks]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=(DegenerateDataWarning, RuntimeWarning))
        result = bootstrap(
            samples,
            statistic,
            vectorized=True,
            axis=-1,
            confidence_level=confidence_level,
            n_resamples=n_resamples,
            rng=random_state,
        )
    intervals = np.stack([result.confidence_interval.low, result.confidence_interval.high], axis=-1)
    results = {}
    for (key, score), interval, error in zip(scores.items(), intervals, result.standard_error, strict=True):
        interval = (score, score) if np.isnan(interval).any() else tuple(float(bound) for bound in interval)
        results[key] = {"score": score, "confidence_interval": interval, "standard_error": float(error)}
    return results


class _RankingEvaluator(Evaluator):
    """What both evaluators share: resolving the model and processor, and the metric with the fast bootstrap."""

    def prepare_model(self, model_or_pipeline, processor=None, device: int | None = None) -> tuple[Any, Any]:
        """`(model, processor)` from a pipeline of this task, a model folder or Hub id (loaded into one), a
        `(model, processor)` pair, or a model and `processor`."""
        if isinstance(model_or_pipeline, tuple):
            model_or_pipeline, processor = model_or_pipeline
        if isinstance(model_or_pipeline, (str, os.PathLike, Pipeline)):
            pipe = self.prepare_pipeline(model_or_pipeline, device=device)
            if processor is None:
                processor = getattr(pipe, "processor", None)
            if processor is None:  # the built-in zero-shot pipeline loads image processor and tokenizer separately
                processor = AutoProcessor.from_pretrained(pipe.model.name_or_path)
            return pipe.model, processor
        if model_or_pipeline is None or processor is None:
            raise ValueError(
                f"Pass a `{self.task}` pipeline, a model folder, or a model with its processor: "
                "compute((model, processor), data) or compute(model, data, processor=processor)."
            )
        return model_or_pipeline, processor

    def prepare_pipeline(self, model_or_pipeline: str | os.PathLike | Pipeline, device: int | None = None) -> Pipeline:
        """A pipeline of this task from a folder or Hub id, or the given one checked (evaluate's version refers to
        transformers' removed TensorFlow classes)."""
        if not isinstance(model_or_pipeline, Pipeline):
            device = self._infer_device() if device is None else device
            return pipeline(self.task, model=str(model_or_pipeline), device=device)
        if model_or_pipeline.task != self.task:
            raise ValueError(f"Expected a `{self.task}` pipeline, got a `{model_or_pipeline.task}` one.")
        return model_or_pipeline

    def prepare(
        self,
        model_or_pipeline,
        processor,
        device: int | None,
        data: str | Dataset,
        subset: str | None,
        split: str | None,
        metric,
        columns: dict[str, str],
    ) -> tuple[Any, Any, Dataset, Any]:
        """The steps before scoring that every `compute` shares: `(model, processor)`, the data loaded with its
        `columns` checked (`{"input_column": name, ...}`), and the metric."""
        model, processor = self.prepare_model(model_or_pipeline, processor, device)
        data = self.load_data(data, subset, split)
        self.check_required_columns(data, columns)
        return model, processor, data, self.prepare_metric(metric)

    @staticmethod
    def rename_columns(data: Dataset, columns: dict[str, str]) -> Dataset:
        """`data` with only the columns the protocol reads, under the names it reads (`columns`: given -> protocol)."""
        return data.select_columns(list(columns)).rename_columns({k: v for k, v in columns.items() if k != v})

    def compute_metric(
        self,
        metric,
        metric_inputs: dict,
        strategy: str = "simple",
        confidence_level: float = 0.95,
        n_resamples: int = 9999,
        random_state: int | None = None,
        metric_kwargs: dict | None = None,
        ranks: Callable[[], Sequence[torch.Tensor]] | None = None,
        keys: HitRates | None = None,
    ) -> dict:
        """The metric's point estimates; with `strategy="bootstrap"` intervals of `keys` from the per-query `ranks()`
        (computed once) instead of the base class's `metric.compute` per resample."""
        result = metric.compute(**metric_inputs, **(metric_kwargs or {}))
        if strategy == "simple":
            return result
        if strategy != "bootstrap":
            raise ValueError(f"strategy must be 'simple' or 'bootstrap', got {strategy!r}.")
        return bootstrap_intervals(ranks(), keys, result, confidence_level, n_resamples, random_state)


class ImageTextRetrievalEvaluator(_RankingEvaluator):
    """Image-text retrieval R@K of any vlalign model over a `datasets` dataset in the evaluation layout (one row per
    image, a list of captions), scored by `evaluate_retrieval` (ITC ranking, ITM re-rank of the top-k where the model
    has ITM), reported by the `retrieval_recall` metric."""

    def __init__(self, task: str = RETRIEVAL_TASK, default_metric_name: str | None = None):
        super().__init__(task, default_metric_name=default_metric_name or path("retrieval_recall"))

    def predictions_processor(self, output: dict, img2txt: list[list[int]], txt2img: list[int]) -> dict[str, list]:
        """`evaluate_retrieval`'s score matrices as the metric's query rows: image queries, then text queries."""
        return {
            "predictions": output["score_matrix_i2t"].tolist() + output["score_matrix_t2i"].tolist(),
            "references": img2txt + [[image] for image in txt2img],
            "query_modality": ["image"] * len(img2txt) + ["text"] * len(txt2img),
        }

    def compute(
        self,
        model_or_pipeline=None,
        data: str | Dataset = None,
        subset: str | None = None,
        split: str | None = None,
        metric=None,
        processor=None,
        strategy: str = "simple",
        confidence_level: float = 0.95,
        n_resamples: int = 9999,
        device: int | None = None,
        random_state: int | None = None,
        input_column: str = "image",
        label_column: str = "captions",
        ks: Sequence[int] = RECALL_KS,
        k_test: int | None = None,
        itc_only: bool = False,
        batch_size: int = 64,
    ) -> dict[str, Any]:
        """Evaluate retrieval; returns the metric's keys (`txt_r1`, ..., `r_mean`; with `strategy="bootstrap"` each a
        dict with `score`, `confidence_interval`, `standard_error`), `num_images`, `num_texts` and timings.

        Args:
            model_or_pipeline: a `zero-shot-image-text-retrieval` pipeline, a model folder or Hub id, or a
                `(model, processor)` pair (or a model, with `processor`).
            data: a `datasets.Dataset` (or a dataset name, with `subset`/`split`) with an image column and a
                captions-list column (`input_column`, `label_column`).
            ks: the K of R@K; `k_test`, `itc_only`, `batch_size`: as in `evaluate_retrieval`.
            strategy, confidence_level, n_resamples, random_state: as in `evaluate.Evaluator.compute`.
        """
        columns = {"input_column": input_column, "label_column": label_column}
        model, processor, data, metric = self.prepare(
            model_or_pipeline, processor, device, data, subset, split, metric, columns
        )
        data = self.rename_columns(data, {input_column: "image", label_column: "captions"})

        start = perf_counter()
        output = evaluate_retrieval(
            model, processor, data, k_test=k_test, itc_only=itc_only, batch_size=batch_size, return_scores=True,
            show_progress=False,
        )  # fmt: skip
        perf = self._compute_time_perf(start, perf_counter(), len(data))
        _, img2txt, txt2img = flatten_captions(data)

        def ranks() -> tuple[torch.Tensor, torch.Tensor]:
            return (
                retrieval_ranks(output["score_matrix_i2t"], img2txt),
                retrieval_ranks(output["score_matrix_t2i"], [[image] for image in txt2img]),
            )

        result = self.compute_metric(
            metric, self.predictions_processor(output, img2txt, txt2img), strategy, confidence_level, n_resamples,
            random_state, metric_kwargs={"ks": list(ks)}, ranks=ranks, keys=recall_hit_rates(ks),
        )  # fmt: skip
        return {**result, "num_images": output["num_images"], "num_texts": output["num_texts"], **perf}


class ZeroShotImageClassificationEvaluator(_RankingEvaluator):
    """Zero-shot top-K accuracy of any vlalign model on a labelled `datasets` dataset: each class is the prompt
    ensemble of `zero_shot_class_embeddings`, each image is ranked against the classes by cosine, and the
    `topk_accuracy` metric reports the share whose class ranks within K."""

    def __init__(self, task: str = ZERO_SHOT_TASK, default_metric_name: str | None = None):
        super().__init__(task, default_metric_name=default_metric_name or path("topk_accuracy"))

    def predictions_processor(self, scores: torch.Tensor, labels: list[int]) -> dict[str, list]:
        """Class scores [images, classes] and labels as the metric's rows."""
        return {"predictions": scores.tolist(), "references": labels}

    @staticmethod
    def class_names_of(data: Dataset, label_column: str) -> list[str]:
        feature = data.features[label_column]
        if not isinstance(feature, ClassLabel):
            raise ValueError(
                f"Column {label_column!r} is {feature}, not a ClassLabel, so the class names are unknown: pass "
                "class_names=[...] (in label order) or cast the column with datasets.ClassLabel(names=[...])."
            )
        return feature.names

    def compute(
        self,
        model_or_pipeline=None,
        data: str | Dataset = None,
        subset: str | None = None,
        split: str | None = None,
        metric=None,
        processor=None,
        strategy: str = "simple",
        confidence_level: float = 0.95,
        n_resamples: int = 9999,
        device: int | None = None,
        random_state: int | None = None,
        input_column: str = "image",
        label_column: str = "label",
        class_names: Sequence[str] | None = None,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        ks: Sequence[int] = TOPK_KS,
        batch_size: int = 64,
    ) -> dict[str, Any]:
        """Evaluate zero-shot classification; returns `top{k}_accuracy` (percent; with `strategy="bootstrap"` each a
        dict with `score`, `confidence_interval`, `standard_error`), `num_images`, `num_classes` and timings.

        Args:
            model_or_pipeline: a `zero-shot-image-classification` pipeline, a model folder or Hub id, or a
                `(model, processor)` pair (or a model, with `processor`).
            data: a `datasets.Dataset` (or a dataset name, with `subset`/`split`) with an image column and an
                integer label column (`input_column`, `label_column`).
            class_names: the name of each label (default: the label column's `ClassLabel` names).
            templates: prompt templates (`{}` marks the class name), averaged per class.
            strategy, confidence_level, n_resamples, random_state: as in `evaluate.Evaluator.compute`.
        """
        columns = {"input_column": input_column, "label_column": label_column}
        model, processor, data, metric = self.prepare(
            model_or_pipeline, processor, device, data, subset, split, metric, columns
        )
        class_names = list(class_names or self.class_names_of(data, label_column))
        labels = list(data[label_column])

        start = perf_counter()
        encoder = model.base_model
        was_training = encoder.training
        encoder.eval()
        class_embeds = zero_shot_class_embeddings(encoder, processor, class_names, templates)
        images = self.rename_columns(data, {input_column: "image"})
        _, image_embeds = encode_images(encoder, processor, images, batch_size, keep_states=False, show_progress=False)
        encoder.train(was_training)
        scores = (image_embeds @ class_embeds.t()).cpu()
        perf = self._compute_time_perf(start, perf_counter(), len(data))

        result = self.compute_metric(
            metric, self.predictions_processor(scores, labels), strategy, confidence_level, n_resamples, random_state,
            metric_kwargs={"ks": list(ks)}, ranks=lambda: [label_ranks(scores, torch.tensor(labels))],
            keys={f"top{k}_accuracy": [(0, k)] for k in ks},
        )  # fmt: skip
        return {**result, "num_images": len(data), "num_classes": len(class_names), **perf}


class _PairClassificationEvaluator(_RankingEvaluator):
    """Base of the evaluators of image-text classification heads (SNLI-VE, NLVR2): accuracy as vlalign's
    `topk_accuracy` at K=1, bootstrap intervals from the per-row ranks, and accuracy per class."""

    def __init__(self, task: str, default_metric_name: str | None = None):
        super().__init__(task, default_metric_name=default_metric_name or path("topk_accuracy"))

    def predictions_processor(self, logits: torch.Tensor, labels: list[int]) -> dict[str, list]:
        """Class scores [pairs, classes] and labels as the metric's rows."""
        return {"predictions": logits.tolist(), "references": labels}

    def accuracy_results(
        self,
        metric,
        logits: torch.Tensor,
        labels: torch.Tensor,
        id2label: dict[int, str],
        perf: dict[str, float],
        strategy: str,
        confidence_level: float,
        n_resamples: int,
        random_state: int | None,
    ) -> dict[str, Any]:
        """`accuracy` (percent, or the bootstrap dict), `per_class_accuracy` (label name → percent, for the classes
        present), `num_pairs` and the timings `perf`."""
        result = self.compute_metric(
            metric, self.predictions_processor(logits, labels.tolist()), strategy, confidence_level, n_resamples,
            random_state, metric_kwargs={"ks": [1]}, ranks=lambda: [label_ranks(logits, labels)],
            keys={"top1_accuracy": [(0, 1)]},
        )  # fmt: skip
        hits = logits.argmax(-1) == labels
        per_class = {
            id2label[index]: 100.0 * hits[labels == index].double().mean().item()
            for index in sorted(id2label)
            if bool((labels == index).any())
        }
        return {"accuracy": result["top1_accuracy"], "per_class_accuracy": per_class, "num_pairs": len(labels), **perf}


__all__ = [
    "DEFAULT_TEMPLATES",
    "ImageTextRetrievalEvaluator",
    "ZeroShotImageClassificationEvaluator",
    "bootstrap_intervals",
    "recall_hit_rates",
]
