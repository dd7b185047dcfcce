"""CODIS visual entailment (SNLI-VE): [`AlbefForVisualEntailment`] under CODIS's config and name.

This file is shipped with saved models (remote code): it imports only torch, transformers and its sibling files.
"""

from __future__ import annotations

from .configuration_codis import CodisConfig
from .modeling_albef_ve import AlbefForVisualEntailment, entailment_auto_map
from .modeling_codis import REMOTE_CODE_AUTO_MAP, CodisPreTrainedModel


class CodisForVisualEntailment(AlbefForVisualEntailment, CodisPreTrainedModel):
    """CODIS fine-tuned for visual entailment. The codebook is left out, as in [`CodisForQuestionAnswering`]: the
    entailment head reads the fused [CLS], a path that never reads the ITC projections nor the codebook, so the
    weights are exactly ALBEF's entailment weights and `vlalign convert --method codis --task ve` takes the same
    official checkpoints; what CODIS pretraining adds reaches the task through the encoders it trained.
    """

    config_class = CodisConfig  # transformers would infer AlbefConfig from the inherited classes' `__init__`
    remote_code_auto_map = entailment_auto_map(REMOTE_CODE_AUTO_MAP, "modeling_codis_ve.CodisForVisualEntailment")


__all__ = ["CodisForVisualEntailment"]
