"""NLVR2 evaluation: judge every (image pair, sentence) row of an NLVR2-layout dataset (`vlalign.data.nlvr`) with a
`<Method>ForVisualReasoning` and score the predictions with accuracy, as the official `NLVR.py` `evaluate()` does
(argmax of the head's logits against the label).

Sentences are tokenized with the processor's ``"train"`` preset (the official `pre_caption(s, 30)`, padded to the
longest, untruncated), both images read with `load_images` (errors name the row and file); the model gets all left
images, then all right images (the official `torch.cat([image0, image1])`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from tqdm.auto import tqdm

from ..models.pipeline_nlvr import NLVR_ID2LABEL
from .retrieval import _undecoded, load_images
from .ve import entailment_accuracy, ve_eval_results

__all__ = [
    "NLVR_TASK_NAME",
    "NLVR_TASK_TYPE",
    "evaluate_nlvr",
    "nlvr_eval_results",
    "nlvr_model_card",
    "reasoning_accuracy",
    "reasoning_logits",
]

#: the model-index task of NLVR2 (transformers has no pipeline task for it: a free-form type)
NLVR_TASK_TYPE = "visual-reasoning"
NLVR_TASK_NAME = "Visual Reasoning"
_IMAGE_COLUMNS = ("image_left", "image_right")

#: the fraction of predictions equal to the labels (the official `acc`), shared with SNLI-VE
reasoning_accuracy = entailment_accuracy


def _side(dataset, column: str):
    """One image column of `dataset` as the `image` column `load_images` reads, left encoded."""
    return _undecoded(dataset.select_columns([column]).rename_column(column, "image"))


def reasoning_logits(
    model, processor, dataset, batch_size: int = 32, preset: str = "train", show_progress: bool = True
) -> torch.Tensor:
    """`[pairs, 2]` the model's logits (false, true) for every row of `dataset`, in row order, on the CPU (eval mode
    while scoring; the model's mode is restored)."""
    left, right = (_side(dataset, column) for column in _IMAGE_COLUMNS)
    logits = []
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(dataset), batch_size), desc="visual reasoning", disable=not show_progress):
            stop = min(start + batch_size, len(dataset))
            images = load_images(left, start, stop) + load_images(right, start, stop)
            inputs = processor(
                images=images, text=dataset[start:stop]["sentence"], preset=preset, return_tensors="pt"
            ).to(model.device)
            with torch.no_grad():
                logits.append(
                    model(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]).logits.cpu()
                )
    finally:
        model.train(was_training)
    return torch.cat(logits).float()


def evaluate_nlvr(
    model, processor, dataset, *, batch_size: int = 32, preset: str = "train", show_progress: bool = True
) -> dict[str, Any]:
    """Judge every row of `dataset` and score the predictions.

    Args:
        model: a `<Method>ForVisualReasoning`.
        processor: its processor.
        dataset: the NLVR2 layout (`vlalign.data.nlvr.load_nlvr_json`): `image_left`, `image_right`, `sentence`, and
            `label` (0 false, 1 true; optional: without it only the predictions are returned).
        batch_size: pairs per forward.
        preset: the processor's text preset for the sentences (the official: ``"train"``).

    Returns:
        ``predictions``: the predicted class of each row (1 true, 0 false), in row order; ``labels``: their names
        (``"True"`` / ``"False"``); ``num_pairs``; with labels, ``accuracy`` (a fraction, as the official `acc`) and
        ``per_class_accuracy`` (label name → accuracy over the rows of that class).
    """
    if len(dataset) == 0:
        raise ValueError("The evaluation dataset is empty; pass at least one (image pair, sentence) row.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    for column in (*_IMAGE_COLUMNS, "sentence"):
        if column not in dataset.column_names:
            raise KeyError(
                f"The dataset has no {column!r} column (it has {dataset.column_names}); load NLVR2 data with "
                "vlalign.data.nlvr.load_nlvr_json or load_nlvr_dataset."
            )
    logits = reasoning_logits(model, processor, dataset, batch_size, preset, show_progress)
    predictions = logits.argmax(-1).tolist()
    results: dict[str, Any] = {
        "predictions": predictions,
        "labels": [NLVR_ID2LABEL[index] for index in predictions],
        "num_pairs": len(predictions),
    }
    if "label" in dataset.column_names:
        labels, predicted = torch.tensor(dataset["label"]), torch.tensor(predictions)
        results["accuracy"] = reasoning_accuracy(predicted, labels)
        results["per_class_accuracy"] = {
            name: reasoning_accuracy(predicted[labels == index], labels[labels == index])
            for index, name in NLVR_ID2LABEL.items()
            if bool((labels == index).any())
        }
    return results


def nlvr_eval_results(
    metrics: Mapping[str, Mapping[str, Any]], *, dataset_name: str = "NLVR2", dataset_type: str = "nlvr2"
) -> list[EvalResult]:
    """One model-index `EvalResult` per evaluated split (``"dev"``, ``"test"``, ``"test-P"``): `metrics` maps a split
    to what :func:`evaluate_nlvr` returns (its ``accuracy``, a fraction, is reported in percent as papers do)."""
    results = ve_eval_results(metrics, dataset_name=dataset_name, dataset_type=dataset_type)
    return [dataclasses.replace(r, task_type=NLVR_TASK_TYPE, task_name=NLVR_TASK_NAME) for r in results]


def nlvr_model_card(
    model_name: str, method: str, metrics: Mapping[str, Mapping[str, Any]], *, dataset_name: str = "NLVR2"
) -> ModelCard:
    """A model card for a fine-tuned `<Method>ForVisualReasoning` with the accuracies in its `model-index`."""
    data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        tags=["vlalign", method, NLVR_TASK_TYPE],
        eval_results=nlvr_eval_results(metrics, dataset_name=dataset_name) or None,
    )
    lines = [f"| {split} | {100 * float(values['accuracy']):.2f} |" for split, values in metrics.items()]
    table = "\n".join(["| split | accuracy (%) |", "|---|---|", *lines]) if lines else "Not evaluated."
    body = (
        f"# {model_name}\n\n{method.upper()} fine-tuned for visual reasoning over two images ({dataset_name}: is the "
        "sentence true of the left and right image?) with vlalign's `examples/finetune_nlvr2.py`.\n\n"
        "```python\nimport vlalign  # registers AutoModelForVisualReasoning and the visual-reasoning pipeline\n"
        f"model = vlalign.AutoModelForVisualReasoning.from_pretrained({model_name!r})\n```\n\n"
        f"## Results\n\n{table}\n"
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
