"""SIMLA's NLVR2 and text-assignment models (the official `models/simla/nlvr.py` and `pretrain_nlvr.py`): ALBEF's
([`modeling_albef_nlvr`]) with SIMLA's single stream. The official models build their BERT as xbert with
`fusion_layer=0` and 18 layers: every layer cross-attends (even layers to image 0, odd layers to image 1), pretrained
layers 6..11 become the pairs 6+2i / 7+2i with shared cross-attention keys and values, and the text embeddings have a
token-type table that SIMLA's pretrained MED BERT lacks (it keeps its construction-time values, and its row 0 is
added to every token).

This file is shipped with saved models (remote code): it imports only torch, transformers and its sibling files.
"""

from __future__ import annotations

from .configuration_simla import SimlaConfig
from .modeling_albef_nlvr import (
    AlbefForTextAssignment,
    AlbefForVisualReasoning,
    reasoning_auto_map,
    two_image_config,
)
from .modeling_simla import REMOTE_CODE_AUTO_MAP, SimlaPreTrainedModel, without_pretraining_modules
from .remote_code import task_auto_map

#: token types of the official two-image xbert (BERT's default), which the pretrained MED BERT has none of
TWO_IMAGE_TYPE_VOCAB_SIZE = 2


class SimlaTwoImageMixin:
    """SIMLA's two-image config: pairs from the middle of the stack (the official 6 of 12), a token-type table, no
    pretraining-only modules."""

    @classmethod
    def two_image_config(cls, config: SimlaConfig) -> SimlaConfig:
        config = without_pretraining_modules(config)
        text = config.text_config
        if getattr(text, "first_paired_layer", None) is not None:
            return config
        return two_image_config(
            config, first_paired=text.num_hidden_layers // 2, type_vocab_size=TWO_IMAGE_TYPE_VOCAB_SIZE
        )


class SimlaForTextAssignment(SimlaTwoImageMixin, AlbefForTextAssignment, SimlaPreTrainedModel):
    """SIMLA's text-assignment pretraining for NLVR2: [`AlbefForTextAssignment`] with SIMLA's stack (see the module
    docstring); `from_pretraining` leaves the token-type table at its fresh initialisation, as the official load."""

    config_class = SimlaConfig
    remote_code_auto_map = task_auto_map(
        REMOTE_CODE_AUTO_MAP, "AutoModelForTextAssignment", "modeling_simla_nlvr.SimlaForTextAssignment"
    )


class SimlaForVisualReasoning(SimlaTwoImageMixin, AlbefForVisualReasoning, SimlaPreTrainedModel):
    """SIMLA fine-tuned for NLVR2: [`AlbefForVisualReasoning`] with SIMLA's stack (see the module docstring)."""

    config_class = SimlaConfig
    remote_code_auto_map = reasoning_auto_map(REMOTE_CODE_AUTO_MAP, "modeling_simla_nlvr.SimlaForVisualReasoning")

    @classmethod
    def text_assignment_class(cls) -> type:
        return SimlaForTextAssignment


__all__ = ["SimlaForTextAssignment", "SimlaForVisualReasoning", "SimlaTwoImageMixin"]
