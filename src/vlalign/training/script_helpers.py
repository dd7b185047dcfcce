"""Settings the training scripts (`examples/pretrain.py`, `examples/finetune_retrieval.py`) share: config overrides
from the command line, and whether batches need the teacher's second image view."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def apply_config_overrides(config: Any, overrides: str | None) -> Any:
    """`config` with the 'name=value,...' settings of `--config_overrides`, rebuilt so that the config's own checks
    (value types and ranges, settings that depend on each other) run again; unknown names raise."""
    if not overrides:
        return config
    config.update_from_string(overrides)
    logger.info("Config overrides: %s", overrides)
    return type(config).from_dict(config.to_dict())


def wants_teacher_view(config: Any, augment: bool) -> bool:
    """Whether batches need `pixel_values_teacher`, a second augmented view of each image for the momentum image
    encoder (CODIS with `teacher_image_view="augmented"`, TCL's recipe); that view needs the augmentation on."""
    if getattr(config, "teacher_image_view", "same") != "augmented":
        return False
    if not augment:
        raise ValueError(
            "teacher_image_view='augmented' feeds the momentum image encoder a second augmented view of each image, "
            "so it needs the train-time augmentation: pass --augment true (it is off by default on synthetic data)."
        )
    return True


__all__ = ["apply_config_overrides", "wants_teacher_view"]
