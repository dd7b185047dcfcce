"""Visual entailment evaluation (SNLI-VE): predict the label of every (image, hypothesis) pair of a VE-layout dataset
(`vlalign.data.ve`) with a `<Method>ForVisualEntailment` and score the predictions with accuracy, as the official
`VE.py` `evaluate()` does (argmax of the head's logits against the label).

Hypotheses are tokenized with the processor's ``"train"`` preset (the official `pre_caption(s, 30)`, padded to the
longest, untruncated), images read with `load_images` (errors name the row and file).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from tqdm.auto import tqdm

from .retrieval import _undecoded, load_images

__all__ = [
    "VE_TASK_NAME",
    "VE_TASK_TYPE",
    "entailment_accuracy",
    "entailment_logits",
    "evaluate_ve",
    "ve_eval_results",
    "ve_model_card",
]

#: the model-index task of visual entailment (transformers has no pipeline task for it: a free-form type)
VE_TASK_TYPE = "visual-entailment"
VE_TASK_NAME = "Visual Entailment"


def entailment_accuracy(predictions: Sequence[int] | torch.Tensor, labels: Sequence[int] | torch.Tensor) -> float:
    """The fraction of `predictions` equal to `labels` (class indices), the official VE metric."""
    predictions, labels = torch.as_tensor(predictions).view(-1), torch.as_tensor(labels).view(-1)
    if predictions.shape != labels.shape:
        raise ValueError(f"Got {predictions.numel()} predictions for {labels.numel()} labels; pass one per pair.")
    if labels.numel() == 0:
        raise ValueError("No pairs to score: pass at least one prediction and label.")
    return (predictions == labels).double().mean().item()


def entailment_logits(
    model, processor, dataset, batch_size: int = 32, preset: str = "train", show_progress: bool = True
) -> torch.Tensor:
    """`[pairs, labels]` the model's logits for every (image, hypothesis) pair of `dataset`, in row order, on the CPU
    (eval mode while scoring; the model's mode is restored)."""
    images = _undecoded(dataset)
    logits = []
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(dataset), batch_size), desc="visual entailment", disable=not show_progress):
            stop = min(start + batch_size, len(dataset))
            inputs = processor(
                images=load_images(images, start, stop),
                text=dataset[start:stop]["sentence"],
                preset=preset,
                return_tensors="pt",
            ).to(model.device)
            with torch.no_grad():
                logits.append(
                    model(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]).logits.cpu()
                )
    finally:
        model.train(was_training)
    return torch.cat(logits).float()


def evaluate_ve(
    model, processor, dataset, *, batch_size: int = 32, preset: str = "train", show_progress: bool = True
) -> dict[str, Any]:
    """Predict every pair of `dataset` and score the predictions.

    Args:
        model: a `<Method>ForVisualEntailment`.
        processor: its processor.
        dataset: the VE layout (`vlalign.data.ve.load_ve_json`): `image`, `sentence`, and `label` (class indices;
            optional: without it only the predictions are returned).
        batch_size: pairs per forward.
        preset: the processor's text preset for the hypotheses (the official: ``"train"``).

    Returns:
        ``predictions``: the predicted class index of each pair, in row order; ``labels``: their names
        (`model.config.id2label`); ``num_pairs``; with labels, ``accuracy`` (a fraction, as the official `acc`) and
        ``per_class_accuracy`` (label name → accuracy over the pairs of that class).
    """
    if len(dataset) == 0:
        raise ValueError("The evaluation dataset is empty; pass at least one (image, hypothesis) pair.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    for column in ("image", "sentence"):
        if column not in dataset.column_names:
            raise KeyError(
                f"The dataset has no {column!r} column (it has {dataset.column_names}); load SNLI-VE data with "
                "vlalign.data.ve.load_ve_json."
            )
    predictions = entailment_logits(model, processor, dataset, batch_size, preset, show_progress).argmax(-1).tolist()
    id2label = model.config.id2label
    results: dict[str, Any] = {
        "predictions": predictions,
        "labels": [id2label[index] for index in predictions],
        "num_pairs": len(predictions),
    }
    if "label" in dataset.column_names:
        labels = torch.tensor(dataset["label"])
        predicted = torch.tensor(predictions)
        results["accuracy"] = entailment_accuracy(predicted, labels)
        results["per_class_accuracy"] = {
            id2label[index]: entailment_accuracy(predicted[labels == index], labels[labels == index])
            for index in sorted(id2label)
            if bool((labels == index).any())
        }
    return results


def ve_eval_results(
    metrics: Mapping[str, Mapping[str, Any]], *, dataset_name: str = "SNLI-VE", dataset_type: str = "snli-ve"
) -> list[EvalResult]:
    """One model-index `EvalResult` per evaluated split: `metrics` maps a split name (``"val"``, ``"test"``) to what
    :func:`evaluate_ve` returns (its ``accuracy``, a fraction, is reported in percent as papers do)."""
    results = []
    for split, values in metrics.items():
        if "accuracy" not in values:
            raise ValueError(f"metrics[{split!r}] has no 'accuracy' (what evaluate_ve returns); got {sorted(values)}.")
        results.append(
            EvalResult(
                task_type=VE_TASK_TYPE,
                task_name=VE_TASK_NAME,
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split=split,
                metric_type="accuracy",
                metric_name="accuracy",
                metric_value=round(100 * float(values["accuracy"]), 2),
            )
        )
    return results


def ve_model_card(
    model_name: str, method: str, metrics: Mapping[str, Mapping[str, Any]], *, dataset_name: str = "SNLI-VE"
) -> ModelCard:
    """A model card for a fine-tuned `<Method>ForVisualEntailment` with the accuracies in its `model-index`."""
    data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        tags=["vlalign", method, VE_TASK_TYPE],
        eval_results=ve_eval_results(metrics, dataset_name=dataset_name) or None,
    )
    lines = [f"| {split} | {100 * float(values['accuracy']):.2f} |" for split, values in metrics.items()]
    table = "\n".join(["| split | accuracy (%) |", "|---|---|", *lines]) if lines else "Not evaluated."
    body = (
        f"# {model_name}\n\n{method.upper()} fine-tuned for visual entailment ({dataset_name}: image premise, text "
        "hypothesis → contradiction / neutral / entailment) with vlalign's `examples/finetune_ve.py`.\n\n"
        "```python\nimport vlalign  # registers AutoModelForVisualEntailment\n"
        f"model = vlalign.AutoModelForVisualEntailment.from_pretrained({model_name!r})\n```\n\n"
        f"## Results\n\n{table}\n"
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
