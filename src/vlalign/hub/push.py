"""`vlalign push`: publish a saved model folder with its measured results in one commit.

The results come from evaluating the model (`measure_results`: retrieval recalls with `ImageTextRetrievalEvaluator`,
zero-shot accuracy with `ZeroShotImageClassificationEvaluator` where the data has class labels) or from the
`eval_results.json` saved next to the weights (the quick start writes one). `push_model` first checks that the push can
succeed (`check_write_access`: network, offline mode, token, write permission), then re-saves the folder with
`save_for_hub` (weights, processor, remote code, the retrieval pipeline, and a card whose `model-index` holds the
results with the datasets named) and uploads it with `push_folder_to_hub`.

`eval_results.json`::

    {"dataset_name": "...", "dataset_split": "test",
     "retrieval": {"txt_r1": ..., "r_mean": ..., "num_images": ..., ...},                 # evaluator outputs
     "zero_shot": {"top1_accuracy": ..., "top5_accuracy": ..., "num_images": ..., "num_classes": ...,
                   "dataset_name": "...", "class_names": [...], "templates": [...]},      # optional
     "vqa": {"vqa_accuracy": ..., "num_questions": ..., "dataset_name": "..."},           # optional (evaluate_vqa)
     "training_args": {"optimizer steps": ..., ...}, "training_data": "..."}              # optional, for the card
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset
from huggingface_hub import CommitInfo

from ..data.synthetic import SHAPE_TEMPLATES, single_attribute_images
from ..evaluation import ImageTextRetrievalEvaluator, ZeroShotImageClassificationEvaluator
from ..sources import load_saved_model
from .access import check_write_access
from .publish import push_folder_to_hub, save_for_hub

RESULTS_FILE = "eval_results.json"


def single_shape_images(dataset: Dataset) -> Dataset:
    """The images of a synthetic split whose objects all have one shape, labelled with it (`label`, a `ClassLabel`
    of the shape names): a zero-shot classification set."""
    return single_attribute_images(dataset, "shape")


def zero_shot_results(
    model,
    processor,
    dataset: Dataset,
    *,
    dataset_name: str,
    label_column: str = "label",
    templates: Sequence[str] | None = None,
) -> dict[str, Any] | None:
    """Zero-shot accuracy (`eval_results.json`'s `zero_shot`) on the labelled images of `dataset`: a `ClassLabel`
    `label_column`, else the single-shape images of synthetic data (`templates` default to `SHAPE_TEMPLATES` there,
    to a photo prompt otherwise); None when it has neither."""
    if isinstance(dataset.features.get(label_column), ClassLabel):
        labelled = dataset
        templates = list(templates or ("a photo of a {}.",))
    elif "objects" in dataset.column_names:
        labelled = single_shape_images(dataset)
        templates = list(templates or SHAPE_TEMPLATES)
        dataset_name = f"{dataset_name}, single-shape images ({len(labelled)} of {len(dataset)})"
    else:
        return None
    if not len(labelled):
        return None
    evaluator = ZeroShotImageClassificationEvaluator()
    results = evaluator.compute((model, processor), labelled, label_column=label_column, templates=templates)
    class_names = labelled.features[label_column].names
    return {**results, "dataset_name": dataset_name, "class_names": class_names, "templates": templates}


def measure_results(
    model,
    processor,
    dataset: Dataset,
    *,
    dataset_name: str,
    dataset_split: str = "test",
    label_column: str = "label",
    templates: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The results a card reports, in `eval_results.json`'s layout: retrieval recalls when `dataset` has `captions`,
    and `zero_shot_results`."""
    results: dict[str, Any] = {"dataset_name": dataset_name, "dataset_split": dataset_split}
    if "captions" in dataset.column_names:
        results["retrieval"] = ImageTextRetrievalEvaluator().compute((model, processor), dataset)
    zero_shot = zero_shot_results(
        model, processor, dataset, dataset_name=dataset_name, label_column=label_column, templates=templates
    )
    if zero_shot is not None:
        results["zero_shot"] = zero_shot
    if not {"retrieval", "zero_shot"} & set(results):
        raise ValueError(
            f"{dataset_name} has neither a `captions` column (retrieval) nor labelled images (a ClassLabel "
            f"{label_column!r} column) to evaluate."
        )
    return results


def save_results(results: dict[str, Any], folder: str | Path) -> Path:
    path = Path(folder) / RESULTS_FILE
    path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return path


def load_results(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no saved results ({RESULTS_FILE}); pass --eval-dataset to evaluate the model before pushing."
        )
    return json.loads(path.read_text(encoding="utf-8"))


def card_kwargs(results: dict[str, Any]) -> dict[str, Any]:
    """`save_for_hub` / `build_model_card` arguments that put `results` in the card."""
    return dict(
        metrics=results.get("retrieval"),
        zero_shot_metrics=results.get("zero_shot"),
        vqa_metrics=results.get("vqa"),
        dataset_name=results["dataset_name"],
        dataset_split=results.get("dataset_split", "test"),
        training_args=results.get("training_args"),
        training_data=results.get("training_data"),
    )


def push_model(
    model_dir: str | Path,
    repo_id: str,
    *,
    results: dict[str, Any] | None = None,
    token: str | None = None,
    private: bool = False,
    endpoint: str | None = None,
) -> CommitInfo:
    """Publish the saved model in `model_dir` to `repo_id` with `results` (default: its saved `eval_results.json`)
    in the card's `model-index`; the results file is uploaded too. Returns the commit.

    Raises:
        HubAccessError: before anything is loaded or written, when the Hub is unreachable or in offline mode, or the
            token is missing, invalid or may not write to `repo_id`'s namespace.
    """
    check_write_access(repo_id, token=token, endpoint=endpoint)
    results = results if results is not None else load_results(model_dir)
    model, processor = load_saved_model(model_dir)
    with tempfile.TemporaryDirectory(prefix="vlalign-push-") as staging:
        folder = save_for_hub(model, processor, staging, model_id=repo_id, exist_ok=True, **card_kwargs(results))
        save_results(results, folder)
        return push_folder_to_hub(folder, repo_id, token=token, private=private, endpoint=endpoint)


__all__ = [
    "RESULTS_FILE",
    "SHAPE_TEMPLATES",
    "card_kwargs",
    "load_results",
    "measure_results",
    "push_model",
    "save_results",
    "single_shape_images",
    "zero_shot_results",
]
