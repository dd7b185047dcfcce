"""SIMLA (Khan et al., ECCV 2022): ALBEF's blocks run as one single stream of cross-attention BERT layers.

SIMLA's BERT has cross-attention in every layer and no text-only layers, so with `fusion_layer=0` ALBEF's text tower
is just the embedding layer and its fusion tower is the whole stack. The stack runs three ways, all from token (or
image) embeddings:

* text features: the stack without image states (cross-attention skipped, the official `mode='text'`);
* image-text matching: the stack from the caption embeddings, cross-attending to the image tokens
  (`mode='multimodal'`), which is ALBEF's `fuse` applied to the embedding-layer output;
* masked image modelling: the masked image tokens are the queries and cross-attend to the caption embeddings.

Everything else (ViT, projections, ITC temperature, ITM head, CLIP-style `forward`) is [`AlbefModel`]'s. This file
imports only torch, transformers and its sibling files, so saved checkpoints load with `trust_remote_code=True`.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils.generic import can_return_tuple

from .configuration_simla import SimlaConfig
from .modeling_albef import AlbefModel, AlbefPreTrainedModel

#: Auto classes a saved SIMLA folder answers to with `trust_remote_code=True`
REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_simla.SimlaConfig",
    "AutoModel": "modeling_simla.SimlaModel",
    "AutoModelForZeroShotImageClassification": "modeling_simla.SimlaModel",
}


@dataclasses.dataclass
class SimlaTextOutput(BaseModelOutputWithPooling):
    """
    Output of [`SimlaModel.get_text_features`].

    Args:
        last_hidden_state: `[batch, tokens, hidden]` the caption's embedding-layer output: the text tokens the
            single stream reads when it fuses text with an image (ITM re-ranking passes them to `itm_score`).
        pooler_output: `[batch, embed_dim]` the projected CLS embedding of the text-only pass (not normalised),
            what ITC ranks with.
        unimodal_last_hidden_state: `[batch, tokens, hidden]` the text-only pass through the whole stack (the
            official `mode='text'` output).
        hidden_states, attentions: of the text-only pass, when asked for.
    """

    unimodal_last_hidden_state: torch.Tensor | None = None


class SimlaPreTrainedModel(AlbefPreTrainedModel):
    """ALBEF's base (initialisation, attention backends, image resizing) with SIMLA's config."""

    config_class = SimlaConfig
    remote_code_auto_map = REMOTE_CODE_AUTO_MAP


class SimlaModel(AlbefModel, SimlaPreTrainedModel):
    """SIMLA's online encoders and heads: [`AlbefModel`]'s ViT, single-stream BERT, projections, temperature and ITM
    head, plus the masked-image-modelling head (`mim_head`, over the dVAE codebook) and the keyword head
    (`concept_head`, PSL: the projected image feature → the word-piece vocabulary).

    Retrieval ranks with ITC and re-ranks with ITM as ALBEF does; `get_text_features` returns the embedding-layer
    tokens as `last_hidden_state`, so `itm_score` runs the whole stack from the caption, as the official model does.
    """

    config_class = SimlaConfig  # transformers would infer AlbefConfig from the inherited classes' `__init__`

    def __init__(self, config: SimlaConfig):
        super().__init__(config)
        self.mim_head = nn.Linear(config.text_config.hidden_size, config.mim_vocab_size)
        self.concept_head = nn.Linear(config.embed_dim, config.text_config.vocab_size)
        self.post_init()

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> SimlaTextOutput:
        """The text-only pass through the whole stack, with `pooler_output` = its projected CLS embedding
        `[batch, embed_dim]` (not normalised) that ITC ranks with; see [`SimlaTextOutput`]."""
        embeddings = self.text_model(input_ids, attention_mask, token_type_ids).last_hidden_state
        unimodal = self.fusion_model(
            embeddings, attention_mask, **self._output_flags(output_attentions, output_hidden_states)
        )
        return SimlaTextOutput(
            last_hidden_state=embeddings,
            pooler_output=self.text_proj(unimodal.last_hidden_state[:, 0]),
            unimodal_last_hidden_state=unimodal.last_hidden_state,
            hidden_states=unimodal.hidden_states,
            attentions=unimodal.attentions,
        )

    def mim_logits(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Masked-image-modelling logits `[batch, patches, mim_vocab_size]` over the dVAE codebook: the image with
        `bool_masked_pos` `[batch, patches]` patches replaced by the mask token is encoded by the ViT, its tokens go
        through BERT's embedding layer (positions and LayerNorm) and the whole stack as queries, cross-attending to
        the caption's embedding-layer output; the CLS position is dropped. Needs `1 + patches` BERT positions."""
        image_tokens = self.vision_model(pixel_values, bool_masked_pos=bool_masked_pos).last_hidden_state
        text_tokens = self.text_model(input_ids, attention_mask).last_hidden_state
        queries = self.text_model.embeddings(inputs_embeds=image_tokens)
        fused = self.fusion_model(queries, None, text_tokens, attention_mask).last_hidden_state
        return self.mim_head(fused[:, 1:])


__all__ = ["SimlaModel", "SimlaPreTrainedModel", "SimlaTextOutput"]
