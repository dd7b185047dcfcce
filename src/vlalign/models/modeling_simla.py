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
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils.generic import can_return_tuple

from .configuration_simla import SimlaConfig
from .losses import (
    PseudoKeywordTargets,
    masked_image_modeling_loss,
    pseudo_keyword_loss,
    psl_keyword_targets,
)
from .modeling_albef import (
    AlbefForPreTraining,
    AlbefForPreTrainingOutput,
    AlbefFusionModel,
    AlbefModel,
    AlbefPreTrainedModel,
    AlbefTextModel,
    AlbefVisionModel,
)

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


@dataclasses.dataclass
class SimlaForPreTrainingOutput(AlbefForPreTrainingOutput):
    """
    Output of [`SimlaForPreTraining`]: [`AlbefForPreTrainingOutput`]'s fields (ITC, ITM, MLM) plus

    Args:
        loss_mim: masked image modelling loss (None when no `bool_masked_pos` was given).
        loss_psl: pseudo-keyword (PSL) loss.
        mim_logits: `[batch, patches, mim_vocab_size]` MIM scores of the masked image.
        psl_logits: `[batch, vocab]` keyword scores predicted from the image feature.
    """

    loss_mim: torch.Tensor | None = None
    loss_psl: torch.Tensor | None = None
    mim_logits: torch.Tensor | None = None
    psl_logits: torch.Tensor | None = None


def single_stream_mim_logits(
    vision_model: AlbefVisionModel,
    text_model: AlbefTextModel,
    fusion_model: AlbefFusionModel,
    head: nn.Linear,
    pixel_values: torch.Tensor,
    bool_masked_pos: torch.Tensor,
    text_tokens: torch.Tensor,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """SIMLA's MIM pass: the masked image's ViT tokens go through BERT's embedding layer (positions, LayerNorm) and
    the whole stack as queries, cross-attending to `text_tokens` (the caption's embedding-layer output); `head` scores
    every patch token (CLS dropped) over the dVAE codebook."""
    image_tokens = vision_model(pixel_values, bool_masked_pos=bool_masked_pos).last_hidden_state
    queries = text_model.embeddings(inputs_embeds=image_tokens)
    fused = fusion_model(queries, None, text_tokens, attention_mask).last_hidden_state
    return head(fused[:, 1:])


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
        text_tokens = self.text_model(input_ids, attention_mask).last_hidden_state
        return single_stream_mim_logits(
            self.vision_model, self.text_model, self.fusion_model, self.mim_head,
            pixel_values, bool_masked_pos, text_tokens, attention_mask,
        )  # fmt: skip


class SimlaForPreTraining(AlbefForPreTraining, SimlaPreTrainedModel):
    """SIMLA pretraining: ALBEF's ITC (momentum distillation, queues) and ITM (hard negatives), both run through the
    single stream, plus MLM and MIM (XMM) and PSL, each distilled from the momentum model with weight α.
    Loss = loss_itc + loss_itm + loss_mlm + loss_mim + loss_psl, all weighted 1 as in the official code.

    The momentum copies (EMA after every optimizer step, as ALBEF's duties) cover the ViT, the whole BERT stack, the
    projections and the MLM, MIM and keyword heads; `itm_head` has none. The official forward runs the EMA step at its
    start instead: the same sequence of updates. PSL reads attention maps: use eager attention.
    """

    config_class = SimlaConfig
    base_model_class = SimlaModel
    output_class = SimlaForPreTrainingOutput
    _momentum_modules = AlbefForPreTraining._momentum_modules + (
        ("albef.mim_head", "mim_head_m"),
        ("albef.concept_head", "concept_head_m"),
    )
    loss_names = ("loss_itc", "loss_itm", "loss_mlm", "loss_mim", "loss_psl")

    def _build_momentum_encoders(self, config: SimlaConfig) -> None:
        super()._build_momentum_encoders(config)
        self.mim_head_m = nn.Linear(config.text_config.hidden_size, config.mim_vocab_size)
        self.concept_head_m = nn.Linear(config.embed_dim, config.text_config.vocab_size)

    def _encode_momentum(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        interpolate_pos_encoding: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ALBEF's momentum image side; the momentum text feature comes from the whole stack in text mode."""
        image_hidden_m, image_feat_m, _ = super()._encode_momentum(
            pixel_values, input_ids, attention_mask, interpolate_pos_encoding
        )
        text_hidden_m = self.text_model_m(input_ids, attention_mask).last_hidden_state
        text_hidden_m = self.fusion_model_m(text_hidden_m, attention_mask).last_hidden_state
        return image_hidden_m, image_feat_m, F.normalize(self.text_proj_m(text_hidden_m[:, 0]), dim=-1)

    def mim_logits(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor,
        text_tokens: torch.Tensor,
        attention_mask: torch.Tensor | None,
        momentum: bool = False,
    ) -> torch.Tensor:
        """MIM scores `[batch, patches, mim_vocab_size]` ([`single_stream_mim_logits`]); `momentum=True` uses the
        momentum ViT, stack and head (the teacher), still against the given (online) caption embeddings."""
        if momentum:
            modules = (self.vision_model_m, self.text_model_m, self.fusion_model_m, self.mim_head_m)
        else:
            modules = (self.albef.vision_model, self.albef.text_model, self.albef.fusion_model, self.albef.mim_head)
        return single_stream_mim_logits(*modules, pixel_values, bool_masked_pos, text_tokens, attention_mask)

    @property
    def mlm_distill_axis(self) -> str:
        """`config.mlm_distill_axis`: the official SIMLA loss normalises over the sequence axis."""
        return self.config.mlm_distill_axis

    @torch.no_grad()
    def psl_targets(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, image_hidden_states: torch.Tensor
    ) -> PseudoKeywordTargets:
        """PSL keyword targets voted by the CLS self-attention of layer `config.psl_attention_layer` of the momentum
        stack, run on the caption cross-attending to `image_hidden_states` (officially the *online* image tokens)."""
        config = self.config
        text_hidden_m = self.text_model_m(input_ids, attention_mask).last_hidden_state
        fused = self.fusion_model_m(text_hidden_m, attention_mask, image_hidden_states, output_attentions=True)
        if fused.attentions is None:
            raise ValueError("PSL needs attention maps: load the model with attn_implementation='eager'.")
        return psl_keyword_targets(
            fused.attentions[config.psl_attention_layer][:, :, 0],
            input_ids,
            config.text_config.vocab_size,
            config.text_config.cls_token_id,
            config.psl_positions_per_head,
            config.psl_num_keywords,
        )

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        mim_labels: torch.Tensor | None = None,
        alpha: float | None = None,
        mlm_input_ids: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> SimlaForPreTrainingOutput:
        r"""
        Args:
            pixel_values: `[batch, 3, H, W]` images (the pretraining resolution: MIM needs `1 + patches` BERT
                positions).
            input_ids: `[batch, tokens]` captions, "[CLS] text" without [SEP] as the official tokenizer gives.
            attention_mask: `[batch, tokens]` 1 for real tokens.
            bool_masked_pos: `[batch, patches]` bool MIM mask; None skips MIM.
            mim_labels: `[masked]` dVAE token ids of the masked patches in row-major order
                (`visual_token_ids[bool_masked_pos]`).
            alpha: distillation weight of every objective; by default the official warm-up at the step a trainer set
                through `set_training_progress`, else `config.alpha`.
            mlm_input_ids, mlm_labels: pre-masked ids and their labels; drawn with `mask_tokens` when omitted.
            generator: RNG for masking and hard-negative sampling (global RNG when None).
            output_attentions, output_hidden_states: attention maps / states of the online towers and the ITM pass.
        """
        if bool_masked_pos is not None and mim_labels is None:
            raise ValueError("bool_masked_pos was given without mim_labels; pass both or neither.")
        alpha = self._distillation_weight(alpha)
        flags = self._output_flags(output_attentions, output_hidden_states)
        step = self._contrastive_and_matching(
            pixel_values, input_ids, attention_mask, None, alpha, generator, False, flags
        )
        extra = self._masked_language_modeling(
            step, input_ids, attention_mask, mlm_input_ids, mlm_labels, generator, alpha
        )
        if bool_masked_pos is not None:
            text_tokens = step["text_model_output"].last_hidden_state  # the online caption embeddings, for both passes
            mim_logits = self.mim_logits(pixel_values, bool_masked_pos, text_tokens, attention_mask)
            extra["mim_logits"] = mim_logits
            extra["loss_mim"] = masked_image_modeling_loss(
                mim_logits,
                bool_masked_pos,
                mim_labels,
                lambda: self.mim_logits(pixel_values, bool_masked_pos, text_tokens, attention_mask, momentum=True),
                alpha,
            )
        keywords = self.psl_targets(input_ids, attention_mask, step["image_hidden"].detach())
        psl_logits = self.albef.concept_head(F.normalize(step["vision_model_output"].pooler_output, dim=-1))
        with torch.no_grad():
            soft_targets = torch.sigmoid(self.concept_head_m(step["image_feat_m"]))
        loss_psl = pseudo_keyword_loss(psl_logits, keywords.hard_targets, soft_targets, alpha)
        return self._training_output(step, **extra, loss_psl=loss_psl, psl_logits=psl_logits)


__all__ = [
    "SimlaForPreTraining",
    "SimlaForPreTrainingOutput",
    "SimlaModel",
    "SimlaPreTrainedModel",
    "SimlaTextOutput",
    "single_stream_mim_logits",
]
