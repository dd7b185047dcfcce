"""SIMLA visual entailment (SNLI-VE; the official `models/simla/ve.py`): [`AlbefForVisualEntailment`] with SIMLA's
single stream, every layer of which cross-attends to the image.

This file is shipped with saved models (remote code): it imports only torch, transformers and its sibling files.
"""

from __future__ import annotations

from .configuration_simla import SimlaConfig
from .modeling_albef_ve import AlbefForVisualEntailment, entailment_auto_map
from .modeling_simla import REMOTE_CODE_AUTO_MAP, SimlaPreTrainedModel, without_pretraining_modules


class SimlaForVisualEntailment(AlbefForVisualEntailment, SimlaPreTrainedModel):
    """SIMLA fine-tuned for visual entailment: the hypothesis's embeddings run through the whole single stream,
    cross-attending to the image in every layer (the official `mode='multimodal'`), and the official MLP head scores
    the fused [CLS]. As in the official model there is no mask token and no MIM/keyword head (a pretraining
    checkpoint's are left out); distillation, momentum copies and `from_pretraining` are ALBEF's.
    """

    config_class = SimlaConfig
    remote_code_auto_map = entailment_auto_map(REMOTE_CODE_AUTO_MAP, "modeling_simla_ve.SimlaForVisualEntailment")

    def __init__(self, config: SimlaConfig):
        """Built from any SIMLA config, a pretraining one included; the model's own config is
        `without_pretraining_modules(config)`, so that a folder it saves says what it holds."""
        super().__init__(without_pretraining_modules(config))


__all__ = ["SimlaForVisualEntailment"]
