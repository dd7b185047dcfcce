"""Loading the start of a downstream fine-tuning run (VQA, visual entailment) from any saved vlalign folder of a
method: the task model as it is when the folder holds one, else the folder's model (a pretraining, retrieval or
inference model of the family) placed into the task model as the official fine-tuning script places a pretraining
checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..auto import family_of

logger = logging.getLogger(__name__)

__all__ = ["load_task_model"]


def load_task_model(
    folder: Any, config: Any, task_class_field: str, task_name: str, start: Callable[[Any], Any], label: str = ""
) -> Any:
    """The family's task model (`ModelFamily.<task_class_field>`) of a saved vlalign folder (or Hub id).

    Args:
        folder: the folder or Hub id.
        config: the folder's config with changes (e.g. overrides), or None to read it.
        task_class_field: the `ModelFamily` field naming the task class (`question_answering_class`, ...).
        task_name: the task in messages ("visual question answering"): a family without the class raises
            "<model type> has no <task_name> model.".
        start: builds the task model from a loaded model of another class (the task class's `from_pretraining`).
        label: the task model's name in the log line (default `task_name`).
    """
    from transformers import AutoConfig

    config = config if config is not None else AutoConfig.from_pretrained(folder)
    family = family_of(config)
    task_class = getattr(family, task_class_field)
    if task_class is None:
        raise ValueError(f"{family.model_type} has no {task_name} model.")
    saved = (config.architectures or [family.model_class.__name__])[0]
    candidates = (task_class, family.pretraining_class, family.retrieval_class, family.model_class)
    saved_class = next((c for c in candidates if c is not None and c.__name__ == saved), None)
    if saved_class is None:
        raise ValueError(f"{folder} holds a {saved}, none of {family.model_type}'s models; pass a vlalign folder.")
    model = saved_class.from_pretrained(folder, config=config)
    if saved_class is task_class:
        return model
    logger.info("Starting the %s model from the %s in %s", label or task_name, saved, folder)
    return start(model)
