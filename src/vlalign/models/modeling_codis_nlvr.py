"""CODIS's NLVR2 and text-assignment models: ALBEF's ([`modeling_albef_nlvr`]) under CODIS's config and name. As for
VQA, the codebook is left out: these models read the fused [CLS] (and, for the text-assignment draw, the projected
image features), never the codebook, so their weights are exactly ALBEF's.

This file is shipped with saved models (remote code): it imports only torch, transformers and its sibling files.
"""

from __future__ import annotations

from .configuration_codis import CodisConfig
from .modeling_albef_nlvr import AlbefForTextAssignment, AlbefForVisualReasoning, reasoning_auto_map
from .modeling_codis import REMOTE_CODE_AUTO_MAP, CodisPreTrainedModel
from .remote_code import task_auto_map


class CodisForTextAssignment(AlbefForTextAssignment, CodisPreTrainedModel):
    """CODIS's text-assignment pretraining for NLVR2: [`AlbefForTextAssignment`] under CODIS's config."""

    config_class = CodisConfig
    remote_code_auto_map = task_auto_map(
        REMOTE_CODE_AUTO_MAP, "AutoModelForTextAssignment", "modeling_codis_nlvr.CodisForTextAssignment"
    )


class CodisForVisualReasoning(AlbefForVisualReasoning, CodisPreTrainedModel):
    """CODIS fine-tuned for NLVR2: [`AlbefForVisualReasoning`] under CODIS's config."""

    config_class = CodisConfig
    remote_code_auto_map = reasoning_auto_map(REMOTE_CODE_AUTO_MAP, "modeling_codis_nlvr.CodisForVisualReasoning")

    @classmethod
    def text_assignment_class(cls) -> type:
        return CodisForTextAssignment


__all__ = ["CodisForTextAssignment", "CodisForVisualReasoning"]
