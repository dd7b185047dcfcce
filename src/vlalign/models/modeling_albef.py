"""PyTorch ALBEF (Li et al., "Align before Fuse: Vision and Language Representation Learning with Momentum
Distillation", NeurIPS 2021).

The model is a ViT image encoder, a BERT text encoder whose upper layers (the *fusion* encoder) cross-attend to the
image tokens, and three alignment objectives: image-text contrast (ITC) against momentum-feature queues with momentum
distillation, image-text matching (ITM) on mined hard negatives, and masked language modelling (MLM) with momentum
distillation. `AlbefModel` holds the online encoders and heads used downstream; `AlbefForPreTraining` and
`AlbefForImageTextRetrieval` add the objectives to the shared training machinery.

The family is spread over files by job, as transformers splits BLIP:

* `modeling_albef_layers.py`: the transformer blocks (attention, ViT and BERT layers, MLM head);
* `modeling_albef_encoders.py`: the pretrained-model base class and the ViT, text and fusion towers;
* `modeling_albef_training.py`: momentum encoders, queues and the shared ITC/ITM training step;
* this file: the models. Everything the others define that was importable from here still is.

These files import only torch, transformers and their sibling files, so saved checkpoints load with
`trust_remote_code=True` where vlalign is not installed.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .configuration_albef import AlbefConfig
from .losses import distilled_mlm_loss
from .modeling_albef_encoders import (
    REMOTE_CODE_AUTO_MAP,
    AlbefFusionModel,
    AlbefPreTrainedModel,
    AlbefTextModel,
    AlbefVisionModel,
    resized_bias,
    resized_embedding,
)
from .modeling_albef_layers import (
    AlbefAttention,
    AlbefMLMHead,
    AlbefMLP,
    AlbefTextEmbeddings,
    AlbefTextLayer,
    AlbefVisionEmbeddings,
    AlbefVisionLayer,
    eager_attention_forward,
    interpolate_pos_embed,
    padding_attention_mask,
    warn_if_attentions_unavailable,
)
from .modeling_albef_training import (
    AlbefForPreTrainingOutput,
    AlbefMomentumDistilledModel,
    ContrastiveMatchingOutput,
    PairFeatures,
    albef_alpha,
)

# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class AlbefOutput(ModelOutput):
    """
    Output of [`AlbefModel`].

    Args:
        logits_per_image: `[images, texts]` ITC similarities scaled by 1/temperature.
        logits_per_text: `[texts, images]`, the transpose.
        image_embeds: `[images, embed_dim]` L2-normalised projected image features.
        text_embeds: `[texts, embed_dim]` L2-normalised projected text features.
        vision_model_output: the ViT output (full token sequence).
        text_model_output: the text-encoder output (tokens before the fusion layers).
    """

    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    text_model_output: BaseModelOutputWithPooling | None = None


# ---------------------------------------------------------------------------------------------------------------------
# AlbefModel: the online model used downstream
# ---------------------------------------------------------------------------------------------------------------------


class AlbefModel(AlbefPreTrainedModel):
    """ALBEF's online encoders and heads: ViT, text and fusion encoders, ITC projections and temperature, ITM head.

    `forward` returns CLIP-style scaled similarities (so the zero-shot image classification pipeline works);
    `itm_score` re-ranks image-text pairs with the fusion encoder, as retrieval evaluation does.
    """

    # Loading from a pretraining/retrieval checkpoint keeps the online weights and leaves the training-only state.
    _keys_to_ignore_on_load_unexpected = [r"_m\.", r"^mlm_head\.", r"_queue$", r"^queue_ptr$"]

    supports_itm_rerank = True

    def __init__(self, config: AlbefConfig):
        super().__init__(config)
        self.vision_model = AlbefVisionModel._from_config(config.vision_config)
        self.text_model = AlbefTextModel._from_config(config.text_config)
        self.fusion_model = AlbefFusionModel._from_config(config.text_config)
        self.vision_proj = nn.Linear(config.vision_config.hidden_size, config.embed_dim)
        self.text_proj = nn.Linear(config.text_config.hidden_size, config.embed_dim)
        self.itm_head = nn.Linear(config.text_config.hidden_size, 2)
        self.temp = nn.Parameter(torch.tensor(config.temp))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The towers' initialisation (see [`AlbefPreTrainedModel._init_weights`]) and the temperature."""
        super()._init_weights(module)
        if module is self:
            init.constant_(self.temp, self.config.temp)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_model.set_input_embeddings(value)

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        bool_masked_pos: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPooling:
        """The ViT output with `pooler_output` = the projected CLS embedding `[batch, embed_dim]` (not normalised)
        that ITC ranks with, as transformers 5.x CLIP/SigLIP return it; `last_hidden_state` holds the image tokens
        that ITM re-ranking fuses, so retrieval encodes each image once. `bool_masked_pos` masks patches (see
        [`AlbefVisionModel.forward`])."""
        vision_outputs = self.vision_model(
            pixel_values,
            interpolate_pos_encoding,
            bool_masked_pos=bool_masked_pos,
            **self._output_flags(output_attentions, output_hidden_states),
        )
        vision_outputs.pooler_output = self.vision_proj(vision_outputs.last_hidden_state[:, 0])
        return vision_outputs

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPooling:
        """The text-encoder output with `pooler_output` = the projected CLS embedding `[batch, embed_dim]` (not
        normalised) that ITC ranks with; `last_hidden_state` holds the text tokens the fusion encoder reads."""
        text_outputs = self.text_model(
            input_ids, attention_mask, token_type_ids, **self._output_flags(output_attentions, output_hidden_states)
        )
        text_outputs.pooler_output = self.text_proj(text_outputs.last_hidden_state[:, 0])
        return text_outputs

    def fuse(
        self,
        text_hidden_states: torch.Tensor,
        text_attention_mask: torch.Tensor | None,
        image_hidden_states: torch.Tensor,
        image_index: torch.Tensor | None = None,
        text_self_attended: bool = False,
    ) -> torch.Tensor:
        """Fused multimodal tokens of paired texts (text-encoder outputs) and images (ViT outputs): text `i` with
        image `i`, or with image `image_index[i]` (each image's cross-attention keys and values then computed once).
        `text_self_attended`: the texts are `fusion_model.self_attend_text`'s output (computed once per text)."""
        num_texts = text_hidden_states.shape[0]
        if image_index is None and num_texts != image_hidden_states.shape[0]:
            raise ValueError(
                f"Got {num_texts} texts but {image_hidden_states.shape[0]} images; fusion pairs them one to one, so "
                "both batches must have the same size (or pass image_index: the image of each text)."
            )
        if image_index is not None and image_index.shape != (num_texts,):
            raise ValueError(
                f"image_index has shape {tuple(image_index.shape)}; it needs one image index per text: ({num_texts},)."
            )
        fused = self.fusion_model(
            text_hidden_states,
            text_attention_mask,
            image_hidden_states,
            image_index=image_index,
            text_self_attended=text_self_attended,
        )
        return fused.last_hidden_state

    def itm_logits(
        self,
        text_hidden_states: torch.Tensor,
        text_attention_mask: torch.Tensor | None,
        image_hidden_states: torch.Tensor,
        image_index: torch.Tensor | None = None,
        text_self_attended: bool = False,
    ) -> torch.Tensor:
        """ITM logits `[pairs, 2]` (index 1 = "match") from the fused CLS token of each text-image pair (see `fuse`)."""
        fused = self.fuse(
            text_hidden_states, text_attention_mask, image_hidden_states, image_index, text_self_attended
        )
        return self.itm_head(fused[:, 0])

    def itm_score(
        self,
        text_hidden_states: torch.Tensor,
        text_attention_mask: torch.Tensor | None,
        image_hidden_states: torch.Tensor,
        itc_similarity: torch.Tensor | None = None,
        score_mode: str | None = None,
        image_index: torch.Tensor | None = None,
        text_self_attended: bool = False,
    ) -> torch.Tensor:
        """Re-ranking score of each pair: the raw "match" logit (ALBEF), or plus the ITC cosine (BLIP/LAVIS). Pairs
        are text `i` with image `i`, or with image `image_index[i]`; `text_self_attended` as in `fuse`."""
        score_mode = score_mode or self.config.itm_score_mode
        if score_mode == "itc_only":
            if itc_similarity is None:
                raise ValueError("score_mode='itc_only' needs itc_similarity.")
            return itc_similarity
        logits = self.itm_logits(
            text_hidden_states, text_attention_mask, image_hidden_states, image_index, text_self_attended
        )
        score = logits[:, 1]
        if score_mode == "itm_plus_itc":
            if itc_similarity is None:
                raise ValueError("score_mode='itm_plus_itc' needs itc_similarity.")
            score = score + itc_similarity
        return score

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> AlbefOutput:
        r"""
        Args:
            input_ids, attention_mask, token_type_ids: tokenized texts (what the tokenizer returns).
            pixel_values: `[batch, 3, H, W]` images.
            interpolate_pos_encoding: run the ViT at another square size.
            output_attentions, output_hidden_states: return the towers' attention maps / states in
                `vision_model_output` and `text_model_output`.
        """
        flags = self._output_flags(output_attentions, output_hidden_states)
        vision_outputs = self.get_image_features(pixel_values, interpolate_pos_encoding, **flags)
        text_outputs = self.get_text_features(input_ids, attention_mask, token_type_ids, **flags)
        image_embeds = F.normalize(vision_outputs.pooler_output, dim=-1)
        text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)
        logits_per_image = image_embeds @ text_embeds.t() / self.temp
        return AlbefOutput(
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_image.t(),
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            vision_model_output=vision_outputs,
            text_model_output=text_outputs,
        )


# ---------------------------------------------------------------------------------------------------------------------
# Pretraining and retrieval models
# ---------------------------------------------------------------------------------------------------------------------


class AlbefForPreTraining(AlbefMomentumDistilledModel):
    """ALBEF pretraining: ITC with momentum distillation against the queues, ITM on hard negatives, and MLM with
    momentum distillation. Loss = loss_itc + loss_itm + loss_mlm, all weighted 1 as in the official code."""

    base_model_class = AlbefModel
    main_input_name = "pixel_values"
    loss_names = ("loss_itc", "loss_itm", "loss_mlm")
    #: axis of the MLM distillation's log-softmax: the vocabulary (the fixed ALBEF loss, ALBEF#58)
    mlm_distill_axis = "vocab"

    def __init__(self, config: AlbefConfig):
        super().__init__(config)
        self.mlm_head = AlbefMLMHead(config.text_config)
        self.mlm_head_m = AlbefMLMHead(config.text_config)
        self.post_init()
        self.apply_freezing()

    @torch.compiler.disable  # random draws with an optional generator, which dynamo cannot trace at dynamic shapes
    def mask_tokens(
        self, input_ids: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT masking as ALBEF does it: each token except [PAD]/[CLS] is selected with `mlm_probability`; of those,
        80% become [MASK], 10% a uniformly random id, 10% stay. Returns (masked ids, labels with -100 elsewhere)."""
        text_config = self.config.text_config
        device = input_ids.device
        selected = torch.rand(input_ids.shape, generator=generator, device=device) < self.config.mlm_probability
        selected &= (input_ids != text_config.pad_token_id) & (input_ids != text_config.cls_token_id)
        labels = input_ids.masked_fill(~selected, -100)
        to_mask = selected & (torch.rand(input_ids.shape, generator=generator, device=device) < 0.8)
        to_random = selected & ~to_mask & (torch.rand(input_ids.shape, generator=generator, device=device) < 0.5)
        random_ids = torch.randint(
            text_config.vocab_size, input_ids.shape, generator=generator, device=device, dtype=input_ids.dtype
        )
        masked = input_ids.masked_fill(to_mask, text_config.mask_token_id)
        masked = torch.where(to_random, random_ids, masked)
        return masked, labels

    def mlm_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        image_hidden_states: torch.Tensor,
        momentum: bool = False,
    ) -> torch.Tensor:
        """MLM scores `[batch, tokens, vocab]` from all BERT layers (text then fusion) with cross-attention to the
        image tokens; `momentum=True` uses the momentum encoders (the distillation teacher)."""
        if momentum:
            text_model, fusion_model, head = self.text_model_m, self.fusion_model_m, self.mlm_head_m
        else:
            online = self.base_model
            text_model, fusion_model, head = online.text_model, online.fusion_model, self.mlm_head
        text_hidden = text_model(input_ids, attention_mask).last_hidden_state
        fused = fusion_model(text_hidden, attention_mask, image_hidden_states).last_hidden_state
        return head(fused, text_model.embeddings.word_embeddings.weight)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        alpha: float | None = None,
        mlm_input_ids: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        pixel_values_teacher: torch.Tensor | None = None,
    ) -> AlbefForPreTrainingOutput:
        r"""
        Args:
            pixel_values: `[batch, 3, H, W]` images.
            input_ids: `[batch, tokens]` captions, "[CLS] text" without [SEP] as the official tokenizer gives.
            attention_mask: `[batch, tokens]` 1 for real tokens.
            alpha: distillation weight; by default the official warm-up at the step a trainer set through
                `set_training_progress`, else `config.alpha`.
            mlm_input_ids, mlm_labels: pre-masked ids and their labels; drawn with `mask_tokens` when omitted.
            generator: RNG for masking and hard-negative sampling (global RNG when None).
            interpolate_pos_encoding: run the ViT at another square size.
            output_attentions, output_hidden_states: attention maps / states of the online towers and the ITM fusion
                pass, in `vision_model_output`, `text_model_output` and `fusion_model_output`.
            pixel_values_teacher: the images the momentum encoder sees instead of `pixel_values`, e.g. a second
                augmented view of each image (TCL's recipe).
        """
        alpha = self._distillation_weight(alpha)
        flags = self._output_flags(output_attentions, output_hidden_states)
        step = self._contrastive_and_matching(
            pixel_values,
            input_ids,
            attention_mask,
            alpha=alpha,
            output_flags=flags,
            generator=generator,
            interpolate_pos_encoding=interpolate_pos_encoding,
            pixel_values_teacher=pixel_values_teacher,
        )
        mlm = self._masked_language_modeling(
            step, input_ids, attention_mask, mlm_input_ids=mlm_input_ids, mlm_labels=mlm_labels, generator=generator,
            alpha=alpha,
        )  # fmt: skip
        return self._training_output(step, **mlm)

    def _masked_language_modeling(
        self,
        step: ContrastiveMatchingOutput,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        *,
        mlm_input_ids: torch.Tensor | None,
        mlm_labels: torch.Tensor | None,
        generator: torch.Generator | None,
        alpha: float,
    ) -> dict[str, torch.Tensor]:
        """MLM on the step's image tokens, distilled from the momentum model on its image tokens; the ids are masked
        with `mask_tokens` unless pre-masked ones are given."""
        if mlm_input_ids is None:
            mlm_input_ids, mlm_labels = self.mask_tokens(input_ids, generator)
        elif mlm_labels is None:
            raise ValueError("mlm_input_ids were given without mlm_labels; pass both or neither.")
        mlm_logits = self.mlm_logits(mlm_input_ids, attention_mask, step.image_hidden)
        loss_mlm = distilled_mlm_loss(
            mlm_logits,
            mlm_labels,
            lambda: self.mlm_logits(mlm_input_ids, attention_mask, step.image_hidden_m, momentum=True),
            alpha,
            distill_axis=self.mlm_distill_axis,
        )
        return {"loss_mlm": loss_mlm, "mlm_logits": mlm_logits}


class AlbefForImageTextRetrieval(AlbefMomentumDistilledModel):
    """ALBEF retrieval fine-tuning (ITC + ITM): captions of the same image (same `idx`), in the batch or in the
    queue, are all positives; hard negatives never share the anchor's image. Also serves re-ranking (`itm_score`)."""

    # A pretraining checkpoint carries MLM heads this model has no use for (ALBEF#79); the idx queue starts empty.
    _keys_to_ignore_on_load_unexpected = [r"mlm_head(_m)?\."]
    main_input_name = "pixel_values"
    _keys_to_ignore_on_load_missing = [r"^idx_queue$"]
    base_model_class = AlbefModel
    loss_names = ("loss_itc", "loss_itm")
    queues_image_ids = True

    def __init__(self, config: AlbefConfig):
        super().__init__(config)
        self.register_buffer("idx_queue", torch.full((1, config.queue_size), -100, dtype=torch.long))
        self.post_init()
        self.apply_freezing()

    def _init_queues(self) -> None:
        super()._init_queues()
        init.constant_(self.idx_queue, -100)

    def itm_score(self, *args, **kwargs) -> torch.Tensor:
        """See [`AlbefModel.itm_score`]."""
        return self.base_model.itm_score(*args, **kwargs)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        idx: torch.Tensor | None = None,
        alpha: float | None = None,
        generator: torch.Generator | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        pixel_values_teacher: torch.Tensor | None = None,
    ) -> AlbefForPreTrainingOutput:
        r"""
        Args:
            idx: `[batch]` integer image index of each pair; pairs of the same image are positives. Without it every
                pair is its own image (pretraining targets).
            other arguments: as in [`AlbefForPreTraining.forward`].
        """
        alpha = self._distillation_weight(alpha)
        flags = self._output_flags(output_attentions, output_hidden_states)
        step = self._contrastive_and_matching(
            pixel_values,
            input_ids,
            attention_mask,
            alpha=alpha,
            output_flags=flags,
            idx=idx,
            generator=generator,
            interpolate_pos_encoding=interpolate_pos_encoding,
            pixel_values_teacher=pixel_values_teacher,
        )
        return self._training_output(step)


#: deprecated names of this file → their current names
_DEPRECATED_NAMES = {"AlbefMomentumMixin": "AlbefMomentumDistilledModel"}


def __getattr__(name: str):
    """The deprecated names, with a `FutureWarning` naming the new one."""
    if name in _DEPRECATED_NAMES:
        new_name = _DEPRECATED_NAMES[name]
        warnings.warn(
            f"{name} is deprecated and will be removed; use {new_name} (from modeling_albef_training).",
            FutureWarning,
            stacklevel=2,
        )
        return globals()[new_name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "REMOTE_CODE_AUTO_MAP",
    "AlbefAttention",
    "AlbefForImageTextRetrieval",
    "AlbefForPreTraining",
    "AlbefForPreTrainingOutput",
    "AlbefFusionModel",
    "AlbefMLMHead",
    "AlbefMLP",
    "AlbefModel",
    "AlbefMomentumDistilledModel",
    "AlbefOutput",
    "AlbefPreTrainedModel",
    "AlbefTextEmbeddings",
    "AlbefTextLayer",
    "AlbefTextModel",
    "AlbefVisionEmbeddings",
    "AlbefVisionLayer",
    "AlbefVisionModel",
    "ContrastiveMatchingOutput",
    "PairFeatures",
    "albef_alpha",
    "eager_attention_forward",
    "interpolate_pos_embed",
    "padding_attention_mask",
    "resized_bias",
    "resized_embedding",
    "warn_if_attentions_unavailable",
]
