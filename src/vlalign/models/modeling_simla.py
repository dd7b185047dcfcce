"""SIMLA (Khan et al., ECCV 2022): ALBEF's blocks run as one single stream of cross-attention BERT layers.

SIMLA's BERT has cross-attention in every layer and no text-only layers, so with `fusion_layer=0` ALBEF's text tower
is just the embedding layer and its fusion tower is the whole stack. The stack runs three ways, all from token (or
image) embeddings:

* text features: the stack without image states (cross-attention skipped, the official `mode='text'`);
* image-text matching: the stack from the caption embeddings, cross-attending to the image tokens
  (`mode='multimodal'`), which is ALBEF's `fuse` applied to the embedding-layer output;
* masked image modelling: the masked image tokens are the queries and cross-attend to the caption embeddings.

Everything else (ViT, projections, ITC temperature, ITM head, CLIP-style `forward`) is [`AlbefModel`]'s, and the VQA
model is ALBEF's ([`AlbefForQuestionAnswering`]) with the whole stack as the question encoder. This file imports only
torch, transformers and its sibling files, so saved checkpoints load with `trust_remote_code=True`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils.generic import can_return_tuple

from .configuration_simla import SimlaConfig
from .losses import (
    PseudoKeywordTargets,
    masked_image_modeling_loss,
    pseudo_keyword_loss,
    psl_keyword_targets,
)
from .modeling_albef import AlbefForImageTextRetrieval, AlbefForPreTraining, AlbefModel
from .modeling_albef_encoders import AlbefFusionModel, AlbefPreTrainedModel, AlbefTextModel, AlbefVisionModel
from .modeling_albef_training import AlbefForPreTrainingOutput, legacy_albef_attribute
from .modeling_albef_vqa import AlbefForQuestionAnswering
from .remote_code import task_auto_map

#: Auto classes a saved SIMLA folder answers to with `trust_remote_code=True`
REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_simla.SimlaConfig",
    "AutoModel": "modeling_simla.SimlaModel",
    "AutoModelForPreTraining": "modeling_simla.SimlaForPreTraining",
    "AutoModelForVisualQuestionAnswering": "modeling_simla.SimlaForQuestionAnswering",
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
    positions = text_model.config.max_position_embeddings
    if image_tokens.shape[1] > positions:
        raise ValueError(
            f"Masked image modelling runs the {image_tokens.shape[1]} image tokens (CLS + patches) through BERT's "
            f"{positions} position embeddings; use a smaller image size or more text_config.max_position_embeddings."
        )
    queries = text_model.embeddings(inputs_embeds=image_tokens)
    fused = fusion_model(queries, None, text_tokens, attention_mask).last_hidden_state
    return head(fused[:, 1:])


def without_pretraining_modules(config: SimlaConfig) -> SimlaConfig:
    """A copy of `config` describing a model without SIMLA's pretraining-only modules (the ViT's mask token, the MIM
    and keyword heads), as the official retrieval model is built; `config` itself is left as it is."""
    config = copy.deepcopy(config)
    config.use_pretraining_heads = False
    config.vision_config.use_mask_token = False
    return config


@contextlib.contextmanager
def eager_attention(config: PreTrainedConfig) -> Iterator[None]:
    """Run the modules built from `config` with eager attention inside the block (the only backend that returns
    attention probabilities), whatever backend the model was loaded with; restore it afterwards."""
    previous = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = previous


class SimlaPreTrainedModel(AlbefPreTrainedModel):
    """ALBEF's base (initialisation, attention backends, image resizing) with SIMLA's config."""

    config_class = SimlaConfig
    base_model_prefix = "simla"
    remote_code_auto_map = REMOTE_CODE_AUTO_MAP
    # The training models held their online model as `albef` before it was named after the family.
    legacy_key_mapping = {r"^albef\.": "simla."}
    # ALBEF's and CODIS's folders share key names with SIMLA's but not their meaning (two-stream vs single-stream BERT).
    also_loads_model_types = ()

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """ALBEF's resize, extended to the keyword heads, which score every word piece: new outputs start as the mean
        of the online head's, in its momentum copy too (momentum copies start equal)."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        size = embeddings.num_embeddings
        online = getattr(self.base_model, "concept_head", None)
        if online is None or online.out_features == size:
            return embeddings
        new_rows = {
            name: parameter.detach().mean(0, keepdim=True).expand(max(0, size - len(parameter)), *parameter.shape[1:])
            for name, parameter in online.named_parameters()
        }
        for head in (online, getattr(self, "concept_head_m", None)):
            if head is None:
                continue
            for name, rows in new_rows.items():
                old = getattr(head, name)
                resized = torch.cat([old.detach()[:size], rows.to(old.dtype)])
                setattr(head, name, nn.Parameter(resized, requires_grad=old.requires_grad))
            head.out_features = size
        return embeddings


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
        if config.use_pretraining_heads:
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

    def _require_pretraining_heads(self) -> None:
        if not self.config.use_pretraining_heads:
            raise ValueError(
                "This SimlaModel has no pretraining heads (config.use_pretraining_heads=False, e.g. a fine-tuned "
                "retrieval model): masked image modelling and keyword prediction need a pretrained SIMLA checkpoint."
            )

    def keyword_logits(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """PSL keyword scores `[batch, vocab]` of each image: `concept_head` on the L2-normalised projected image
        feature, as pretraining trains it; the highest are the words the model expects a caption of the image to
        stress (sigmoid gives independent probabilities)."""
        self._require_pretraining_heads()
        image_embeds = self.get_image_features(pixel_values, interpolate_pos_encoding).pooler_output
        return self.concept_head(F.normalize(image_embeds, dim=-1))

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
        self._require_pretraining_heads()
        text_tokens = self.text_model(input_ids, attention_mask).last_hidden_state
        return single_stream_mim_logits(
            self.vision_model, self.text_model, self.fusion_model, self.mim_head,
            pixel_values, bool_masked_pos, text_tokens, attention_mask,
        )  # fmt: skip


class SimlaMomentumMixin:
    """What SIMLA's training models (pretraining and retrieval) change in ALBEF's momentum-distilled training
    ([`AlbefMomentumDistilledModel`]): the online model is a [`SimlaModel`], and the momentum text feature comes from
    the whole single stream run in text mode, not from a text-only tower."""

    base_model_class = SimlaModel
    albef = legacy_albef_attribute()

    def _encode_momentum(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        interpolate_pos_encoding: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ALBEF's momentum image side; the momentum text feature from the whole momentum stack in text mode."""
        image_hidden_m, image_feat_m, _ = super()._encode_momentum(
            pixel_values, input_ids, attention_mask, interpolate_pos_encoding
        )
        text_hidden_m = self.text_model_m(input_ids, attention_mask).last_hidden_state
        text_hidden_m = self.fusion_model_m(text_hidden_m, attention_mask).last_hidden_state
        return image_hidden_m, image_feat_m, F.normalize(self.text_proj_m(text_hidden_m[:, 0]), dim=-1)


class SimlaForPreTraining(SimlaMomentumMixin, AlbefForPreTraining, SimlaPreTrainedModel):
    """SIMLA pretraining: ALBEF's ITC (momentum distillation, queues) and ITM (hard negatives), both run through the
    single stream, plus MLM and MIM (XMM) and PSL, each distilled from the momentum model with weight α.
    Loss = loss_itc + loss_itm + loss_mlm + loss_mim + loss_psl, all weighted 1 as in the official code.

    The momentum copies (EMA after every optimizer step, as ALBEF's duties) cover the ViT, the whole BERT stack, the
    projections and the MLM, MIM and keyword heads; `itm_head` has none. The official forward runs the EMA step at its
    start instead: the same sequence of updates. PSL's pass reads attention probabilities, so it runs with eager
    attention whatever backend the rest of the model uses.
    """

    config_class = SimlaConfig
    output_class = SimlaForPreTrainingOutput
    # a retrieval folder lacks the pretraining heads (and its config says so): refused before building
    required_config_values = {"use_pretraining_heads": True}
    loss_names = ("loss_itc", "loss_itm", "loss_mlm", "loss_mim", "loss_psl")

    def _build_momentum_encoders(self, config: SimlaConfig) -> None:
        """ALBEF's momentum towers, and the momentum MIM and keyword heads."""
        super()._build_momentum_encoders(config)
        self.mim_head_m = nn.Linear(config.text_config.hidden_size, config.mim_vocab_size)
        self.concept_head_m = nn.Linear(config.embed_dim, config.text_config.vocab_size)

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
            online = self.base_model
            modules = (online.vision_model, online.text_model, online.fusion_model, online.mim_head)
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
        with eager_attention(self.fusion_model_m.config):
            fused = self.fusion_model_m(text_hidden_m, attention_mask, image_hidden_states, output_attentions=True)
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
            mim_labels: image-tokenizer ids of the masked patches: `[batch, patches]` with -100 where not masked
                (what `AlignmentCollator(masked_image_modeling=...)` gives), or `[masked]` in row-major order
                (`visual_token_ids[bool_masked_pos]`, the official layout).
            alpha: distillation weight of every objective; by default the official warm-up at the step a trainer set
                through `set_training_progress`, else `config.alpha`.
            mlm_input_ids, mlm_labels: pre-masked ids and their labels; drawn with `mask_tokens` when omitted.
            generator: RNG for masking and hard-negative sampling (global RNG when None).
            output_attentions, output_hidden_states: attention maps / states of the online towers and the ITM pass.
        """
        if (bool_masked_pos is None) != (mim_labels is None):
            raise ValueError("Pass bool_masked_pos and mim_labels together (both or neither): MIM needs both.")
        if bool_masked_pos is not None and mim_labels.shape == bool_masked_pos.shape:
            mim_labels = mim_labels[bool_masked_pos]
        alpha = self._distillation_weight(alpha)
        flags = self._output_flags(output_attentions, output_hidden_states)
        step = self._contrastive_and_matching(
            pixel_values, input_ids, attention_mask, alpha=alpha, output_flags=flags, generator=generator
        )
        extra = self._masked_language_modeling(
            step, input_ids, attention_mask, mlm_input_ids=mlm_input_ids, mlm_labels=mlm_labels, generator=generator,
            alpha=alpha,
        )  # fmt: skip
        if bool_masked_pos is not None:
            text_tokens = step.text_model_output.last_hidden_state  # the online caption embeddings, for both passes
            mim_logits = self.mim_logits(pixel_values, bool_masked_pos, text_tokens, attention_mask)
            extra["mim_logits"] = mim_logits
            extra["loss_mim"] = masked_image_modeling_loss(
                mim_logits,
                bool_masked_pos,
                mim_labels,
                lambda: self.mim_logits(pixel_values, bool_masked_pos, text_tokens, attention_mask, momentum=True),
                alpha,
            )
        keywords = self.psl_targets(input_ids, attention_mask, step.image_hidden.detach())
        psl_logits = self.base_model.concept_head(F.normalize(step.vision_model_output.pooler_output, dim=-1))
        with torch.no_grad():
            soft_targets = torch.sigmoid(self.concept_head_m(step.features.image_m))
        loss_psl = pseudo_keyword_loss(psl_logits, keywords.hard_targets, soft_targets, alpha)
        return self._training_output(step, **extra, loss_psl=loss_psl, psl_logits=psl_logits)


class SimlaForImageTextRetrieval(SimlaMomentumMixin, AlbefForImageTextRetrieval, SimlaPreTrainedModel):
    """SIMLA retrieval fine-tuning: ALBEF's retrieval objectives (ITC over image ids with momentum distillation,
    ITM on hard negatives) through the single stream, and ITC ranking + ITM re-ranking for evaluation.

    As in the official model there is no mask token and no MIM/keyword head (a pretraining checkpoint's are ignored
    on load), and by default the `idx_queue` is never written (`config.retrieval_queue_idx`).
    """

    config_class = SimlaConfig
    _keys_to_ignore_on_load_unexpected = [
        r"mlm_head(_m)?\.",
        r"(mim|concept)_head(_m)?\.",
        r"embeddings\.mask_token$",
    ]

    def __init__(self, config: SimlaConfig):
        """Built from any SIMLA config, a pretraining one included; the model's own config is
        `without_pretraining_modules(config)`, so that a folder it saves says what it holds."""
        super().__init__(without_pretraining_modules(config))

    @property
    def queues_image_ids(self) -> bool:
        """`config.retrieval_queue_idx`: the official model never writes the image ids of its queue."""
        return self.config.retrieval_queue_idx


class SimlaForQuestionAnswering(AlbefForQuestionAnswering, SimlaPreTrainedModel):
    """SIMLA fine-tuned for VQA (the official `models/simla/vqa.py`): [`AlbefForQuestionAnswering`] with SIMLA's
    single stream as the question encoder (the question's embeddings run through every layer, cross-attending to the
    image) and an answer decoder of `config.num_decoder_layers` MED layers (no token types; 6 of 12 by default,
    initialised from the last pretrained layers by `vlalign convert --method simla --task vqa`).

    As in the official model there is no mask token and no MIM/keyword head, and the answer loss is not distilled
    unless `config.answer_distillation` is set (see [`SimlaConfig`]); with `config.distill` the momentum copies are
    kept and take their EMA steps as the official ones do.
    """

    config_class = SimlaConfig
    #: SIMLA's config and this class (ALBEF's VQA map would name ALBEF's classes under a SIMLA config)
    remote_code_auto_map = task_auto_map(
        REMOTE_CODE_AUTO_MAP, "AutoModelForVisualQuestionAnswering", "modeling_simla.SimlaForQuestionAnswering"
    )

    def __init__(self, config: SimlaConfig):
        """Built from any SIMLA config, a pretraining one included; the model's own config is
        `without_pretraining_modules(config)`, so that a folder it saves says what it holds."""
        super().__init__(without_pretraining_modules(config))

    def _distillation_weight(self, alpha: float | None) -> float:
        """α of the answer loss: ALBEF's with `config.answer_distillation`, else 0 (the official SIMLA decoder is
        never given α)."""
        return super()._distillation_weight(alpha if self.config.answer_distillation else 0.0)


__all__ = [
    "SimlaForImageTextRetrieval",
    "SimlaForPreTraining",
    "SimlaForPreTrainingOutput",
    "SimlaForQuestionAnswering",
    "SimlaModel",
    "SimlaPreTrainedModel",
    "SimlaTextOutput",
    "single_stream_mim_logits",
    "without_pretraining_modules",
]
