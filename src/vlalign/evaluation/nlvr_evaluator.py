"""An `evaluate` evaluator of NLVR2 for ALBEF, SIMLA and CODIS: the accuracy of a `<Method>ForVisualReasoning` on a
labelled NLVR2-layout dataset, with bootstrap intervals.

```python
>>> from vlalign.evaluation.nlvr_evaluator import VisualReasoningEvaluator
>>> VisualReasoningEvaluator().compute("path/to/albef-nlvr2", load_nlvr_json("nlvr_dev.json", "images"))
{'accuracy': 80.2, 'num_pairs': 6982, 'total_time_in_seconds': ..., ...}
```

As for SNLI-VE (`vlalign.evaluation.ve_evaluator`): evaluate's own evaluators take no image pair, so accuracy here is
vlalign's `topk_accuracy` metric at K=1 (the share of rows whose label scores highest, in percent); the bootstrap
resamples the per-row ranks once computed.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

import torch
from datasets import Dataset

from ..models.pipeline_nlvr import NLVR_ID2LABEL, TASK
from .evaluators import _PairClassificationEvaluator
from .nlvr import reasoning_logits

__all__ = ["VisualReasoningEvaluator"]


class VisualReasoningEvaluator(_PairClassificationEvaluator):
    """Accuracy (percent) of an NLVR2 model over (left image, right image, sentence, label) rows; per class too."""

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
        left_image_column: str = "image_left",
        right_image_column: str = "image_right",
        sentence_column: str = "sentence",
        label_column: str = "label",
        batch_size: int = 64,
    ) -> dict[str, Any]:
        """Evaluate NLVR2; returns `accuracy` (percent; with `strategy="bootstrap"` a dict with `score`,
        `confidence_interval`, `standard_error`), `per_class_accuracy` (percent, "True"/"False" → accuracy),
        `num_pairs` and timings.

        Args:
            model_or_pipeline: a `visual-reasoning` pipeline, a model folder or Hub id, or a `(model, processor)` pair
                (or a model, with `processor`).
            data: a `datasets.Dataset` in the NLVR2 layout (`vlalign.data.nlvr`; or a dataset name, with
                `subset`/`split`): two image columns, the sentence and a 0/1 label (1 true).
            strategy, confidence_level, n_resamples, random_state: as in `evaluate.Evaluator.compute`.
        """
        columns = {"input_column": left_image_column, "second_input_column": sentence_column}
        columns |= {"right_image_column": right_image_column, "label_column": label_column}
        model, processor, data, metric = self.prepare(
            model_or_pipeline, processor, device, data, subset, split, metric, columns
        )
        renamed = {left_image_column: "image_left", right_image_column: "image_right", sentence_column: "sentence"}
        rows = self.rename_columns(data, renamed)
        labels = torch.tensor(data[label_column], dtype=torch.long)
        start = perf_counter()
        logits = reasoning_logits(model, processor, rows, batch_size, show_progress=False)
        perf = self._compute_time_perf(start, perf_counter(), len(data))
        return self.accuracy_results(
            metric, logits, labels, NLVR_ID2LABEL, perf, strategy, confidence_level, n_resamples, random_state
        )
