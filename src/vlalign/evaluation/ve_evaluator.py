"""An `evaluate` evaluator of visual entailment (SNLI-VE) for ALBEF, SIMLA and CODIS: the accuracy of a
`<Method>ForVisualEntailment` on a labelled VE-layout dataset, with bootstrap intervals.

```python
>>> from vlalign.evaluation.ve_evaluator import VisualEntailmentEvaluator
>>> VisualEntailmentEvaluator().compute("path/to/albef-ve", load_ve_json("ve_test.json", "images"))
{'accuracy': 80.3, 'num_pairs': 17901, 'total_time_in_seconds': ..., ...}
```

Why not evaluate's own: its text-classification evaluator has no image input and its image-classification evaluator no
text, and both need the Hub's `accuracy` metric. Accuracy here is vlalign's `topk_accuracy` metric at K=1 (the share of
pairs whose label scores highest, in percent); the bootstrap resamples the per-pair ranks once computed, as the
retrieval and zero-shot evaluators do.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

import torch
from datasets import Dataset

from ..models.pipeline_ve import TASK
from .evaluators import _PairClassificationEvaluator
from .ve import entailment_logits

__all__ = ["VisualEntailmentEvaluator"]


class VisualEntailmentEvaluator(_PairClassificationEvaluator):
    """Accuracy (percent) of an entailment model over (image, hypothesis, label) rows; `per_class_accuracy` too."""

    def __init__(self, task: str = TASK, default_metric_name: str | None = None):
        super().__init__(task, default_metric_name)

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
        image_column: str = "image",
        sentence_column: str = "sentence",
        label_column: str = "label",
        batch_size: int = 64,
    ) -> dict[str, Any]:
        """Evaluate visual entailment; returns `accuracy` (percent; with `strategy="bootstrap"` a dict with `score`,
        `confidence_interval`, `standard_error`), `per_class_accuracy` (percent, label name → accuracy), `num_pairs`
        and timings.

        Args:
            model_or_pipeline: a `visual-entailment` pipeline, a model folder or Hub id, or a `(model, processor)`
                pair (or a model, with `processor`).
            data: a `datasets.Dataset` in the VE layout (`vlalign.data.ve`; or a dataset name, with `subset`/`split`):
                image, hypothesis and class-index label columns.
            strategy, confidence_level, n_resamples, random_state: as in `evaluate.Evaluator.compute`.
        """
        columns = {"input_column": image_column, "second_input_column": sentence_column, "label_column": label_column}
        model, processor, data, metric = self.prepare(
            model_or_pipeline, processor, device, data, subset, split, metric, columns
        )
        pairs = self.rename_columns(data, {image_column: "image", sentence_column: "sentence"})
        labels = torch.tensor(data[label_column], dtype=torch.long)
        start = perf_counter()
        logits = entailment_logits(model, processor, pairs, batch_size, show_progress=False)
        perf = self._compute_time_perf(start, perf_counter(), len(data))
        return self.accuracy_results(
            metric, logits, labels, model.config.id2label, perf, strategy, confidence_level, n_resamples, random_state
        )
