"""Official SIMLA checkpoints as VQA models (`vlalign convert --method simla --task vqa`, through
[`convert_simla_checkpoint`](simla.py), which reads the files and writes the folder).

SIMLA's `VQA.py` loads a pretraining checkpoint exactly as ALBEF's does, so ALBEF's conversion
([`convert.albef_vqa`](albef_vqa.py)) does the work; what differs is SIMLA's:

* the pretraining checkpoint also holds the MIM and keyword heads and the ViTs' mask tokens, which the VQA model lacks
  (the official `strict=False` load reports them as unexpected, with ALBEF's projections, ITM head and queues);
* every BERT layer has cross-attention (`fusion_layer=0`), so the encoder keeps all of them, and the decoder's layer i
  is pretrained layer `num_hidden_layers - num_decoder_layers + i`: the official code hard-codes 6 of 12 for both
  methods, which for ALBEF are its fusion layers and for SIMLA the second half of the stack.
"""

from __future__ import annotations

import re

import torch

from ..models.configuration_simla import SimlaConfig
from ..models.modeling_simla import SimlaForQuestionAnswering
from .albef import CheckpointError
from .albef_vqa import PRETRAINING_ONLY_KEYS, convert_to_vqa, is_vqa_layout, pretraining_to_vqa_layout

#: keys of SIMLA's pretraining-only modules that the VQA model lacks, beyond ALBEF's (`PRETRAINING_ONLY_KEYS`)
SIMLA_PRETRAINING_ONLY_KEYS = r"^((mim|concept)_head(_m)?\..*|visual_encoder(_m)?\.mask_token)$"


def simla_vqa_initialisation(
    original: dict[str, torch.Tensor], config: SimlaConfig
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The official VQA initialisation of a SIMLA pretraining state dict, in the official VQA layout (see
    [`pretraining_to_vqa_layout`]), and the pretraining keys it leaves out (the official load's unexpected keys)."""
    dropped = [
        key for key in original if re.match(PRETRAINING_ONLY_KEYS, key) or re.match(SIMLA_PRETRAINING_ONLY_KEYS, key)
    ]
    kept = {key: value for key, value in original.items() if not re.match(SIMLA_PRETRAINING_ONLY_KEYS, key)}
    num_decoder_layers = config.answer_decoder_config().num_hidden_layers
    return pretraining_to_vqa_layout(kept, config.answer_decoder_first_layer(), num_decoder_layers), dropped


def convert_simla_to_vqa(original: dict[str, torch.Tensor], config: SimlaConfig) -> SimlaForQuestionAnswering:
    """A `SimlaForQuestionAnswering` holding an official SIMLA pretraining checkpoint's weights as `VQA.py` places
    them, or an official fine-tuned SIMLA VQA checkpoint's (`text_encoder.*`, `text_decoder.bert.*`,
    `text_decoder.cls.*` and their `_m` copies)."""
    if not is_vqa_layout(original):
        if not any(key.startswith("text_encoder.cls.") for key in original):
            raise CheckpointError(
                "This checkpoint has neither an answer decoder (`text_decoder.*`, a fine-tuned VQA checkpoint) nor the "
                "MLM head (`text_encoder.cls.*`) the decoder's LM head is initialised from: it is not a SIMLA "
                "pretraining checkpoint (a fine-tuned retrieval one?). Convert the pretraining or a VQA checkpoint."
            )
        original, _ = simla_vqa_initialisation(original, config)
    return convert_to_vqa(original, config, SimlaForQuestionAnswering)


__all__ = ["SIMLA_PRETRAINING_ONLY_KEYS", "convert_simla_to_vqa", "simla_vqa_initialisation"]
