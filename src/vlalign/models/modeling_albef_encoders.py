"""ALBEF's encoders as pretrained models: the base class every ALBEF-family model derives from (initialisation,
attention backends, resizing) and the three towers built from [`modeling_albef_layers`]: the ViT, the text-only
BERT layers and the fusion layers that cross-attend to the image tokens.

This file is shipped with saved models (remote code): it imports only torch, transformers and its sibling files.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithCrossAttentions, BaseModelOutputWithPooling
from transformers.modeling_utils import PreTrainedModel
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_albef import AlbefConfig, AlbefTextConfig, AlbefVisionConfig
from .frozen import FrozenParametersMixin
from .input_checks import check_text_inputs
from .modeling_albef_layers import (
    AlbefAttention,
    AlbefMLMHead,
    AlbefTextEmbeddings,
    AlbefTextLayer,
    AlbefVisionEmbeddings,
    AlbefVisionLayer,
    interpolate_pos_embed,
    padding_attention_mask,
    warn_if_attentions_unavailable,
)
from .parameter_groups import albef_parameter_groups
from .remote_code import RemoteCodeSaveMixin
from .weights_check import WeightsCheckMixin

#: Auto classes a saved ALBEF folder answers to with `trust_remote_code=True`, whichever ALBEF class saved it
REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_albef.AlbefConfig",
    "AutoModel": "modeling_albef.AlbefModel",
    "AutoModelForPreTraining": "modeling_albef.AlbefForPreTraining",
    "AutoModelForZeroShotImageClassification": "modeling_albef.AlbefModel",
}


def resized_embedding(old: nn.Embedding, reference: nn.Embedding) -> nn.Embedding:
    """`old` resized to `reference`'s vocabulary: its own rows where both have them, `reference`'s new rows after."""
    weight = reference.weight.detach().clone()
    kept = min(old.num_embeddings, reference.num_embeddings)
    weight[:kept] = old.weight.detach()[:kept]
    return nn.Embedding.from_pretrained(weight, freeze=not old.weight.requires_grad, padding_idx=old.padding_idx)


def resized_bias(old: nn.Parameter, size: int) -> nn.Parameter:
    """A vocabulary bias cut or zero-padded to `size` entries."""
    bias = old.detach().new_zeros(size)
    kept = min(old.shape[0], size)
    bias[:kept] = old.detach()[:kept]
    return nn.Parameter(bias, requires_grad=old.requires_grad)


class AlbefPreTrainedModel(WeightsCheckMixin, FrozenParametersMixin, RemoteCodeSaveMixin, PreTrainedModel):
    """Base of every ALBEF-family model (towers, online models, training models; SIMLA's and CODIS's too): weight
    initialisation, attention backends, optimizer parameter groups, vocabulary and image resizing, remote-code saving,
    loading of earlier key layouts, and refusal of wrong or damaged weights (`WeightsCheckMixin`)."""

    config_class = AlbefConfig
    #: the family's name, which is also the attribute holding the online model in the training models
    base_model_prefix = "albef"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["AlbefVisionLayer", "AlbefTextLayer"]
    _supports_sdpa = True
    # Flash attention is not declared: its padding path was never run here (no GPU) against eager.
    _supports_flex_attn = True
    _supports_attention_backend = True
    # Losses are per-batch means (not sums over tokens), so Trainer must scale them for gradient accumulation itself.
    accepts_loss_kwargs = False
    remote_code_auto_map = REMOTE_CODE_AUTO_MAP
    #: whether retrieval can re-rank ITC candidates with this model's image-text matching head (`itm_score`)
    supports_itm_rerank = False
    #: renamings (regex → replacement) of state-dict keys that earlier versions wrote, applied on loading
    legacy_key_mapping: dict[str, str] = {}
    # A CODIS folder is ALBEF plus a codebook: every ALBEF class loads it with identical features (the codebook is
    # reported as unexpected and dropped).
    also_loads_model_types = ("codis",)

    @classmethod
    def from_pretrained(cls, *args, key_mapping: dict[str, str] | None = None, **kwargs):
        """transformers' `from_pretrained`; folders saved with earlier key names load too (`legacy_key_mapping`,
        passed as transformers' `key_mapping`, in this process and as remote code alike)."""
        if cls.legacy_key_mapping:
            key_mapping = {**cls.legacy_key_mapping, **(key_mapping or {})}
        return super().from_pretrained(*args, key_mapping=key_mapping, **kwargs)

    def optimizer_parameter_groups(self, weight_decay: float) -> list[dict]:
        """The official AdamW parameter groups `[decay, no_decay]` (see `albef_parameter_groups`)."""
        return albef_parameter_groups(self, weight_decay)

    def _output_flags(self, output_attentions: bool | None, output_hidden_states: bool | None) -> dict[str, bool]:
        """`output_attentions` / `output_hidden_states` resolved against the config, to pass to the towers."""
        return {
            "output_attentions": self.config.output_attentions if output_attentions is None else output_attentions,
            "output_hidden_states": (
                self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
            ),
        }

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """transformers' resize of the word embeddings, extended to the vocabulary-sized state it does not know
        about: the momentum text encoder's embeddings (new rows copied from the online ones, as momentum encoders
        start equal) and the MLM heads' output biases (new entries 0)."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        for module in self.modules():
            if isinstance(module, AlbefTextEmbeddings) and module.word_embeddings is not embeddings:
                module.word_embeddings = resized_embedding(module.word_embeddings, embeddings)
            elif isinstance(module, AlbefMLMHead):
                module.bias = resized_bias(module.bias, embeddings.num_embeddings)
        return embeddings

    def set_image_size(self, image_size: int) -> None:
        """Run at another square resolution: interpolate every ViT position table (online and momentum) as the
        official code does when fine-tuning at 384 px from a 256 px checkpoint, and record the size in the config."""
        num_patches = (image_size // self.config.vision_config.patch_size) ** 2
        for module in self.modules():
            if isinstance(module, AlbefVisionEmbeddings) and module.num_patches != num_patches:
                old = module.position_embeddings
                module.position_embeddings = nn.Parameter(
                    interpolate_pos_embed(old.data, num_patches), requires_grad=old.requires_grad
                )
                module.num_patches = num_patches
                module.config.image_size = image_size
        self.config.vision_config.image_size = image_size

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Every parameter and buffer, so weights a checkpoint lacks (or a model built on the meta device) start from
        the same distribution as a fresh model: BERT-style normal init for the text side, truncated normal (timm) for
        the ViT. `AlbefModel` adds its temperature, the training models their queues and momentum copies
        (`MomentumDistillationMixin._initialize_weights`)."""
        std = getattr(self.config, "initializer_range", 0.02) * getattr(self.config, "initializer_factor", 1.0)
        if isinstance(module, AlbefVisionEmbeddings):
            init.trunc_normal_(module.position_embeddings, std=0.02)
            init.trunc_normal_(module.cls_token, std=0.02)
            if module.mask_token is not None:
                init.zeros_(module.mask_token)
        elif isinstance(module, AlbefVisionLayer):
            for linear in (module.self_attn.query, module.self_attn.key, module.self_attn.value):
                init.trunc_normal_(linear.weight, std=0.02)
        elif isinstance(module, nn.Conv2d):  # the patch embedding keeps PyTorch's default init, as timm's ViT does
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(module.weight[0].numel())
            init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, AlbefMLMHead):
            init.zeros_(module.bias)
        elif isinstance(module, AlbefTextEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[1]).unsqueeze(0))


class AlbefVisionModel(AlbefPreTrainedModel):
    """The ViT image encoder: returns the full token sequence after the final LayerNorm (CLS first)."""

    config_class = AlbefVisionConfig
    input_modalities = ("image",)
    main_input_name = "pixel_values"
    base_model_prefix = "vision_model"
    _can_record_outputs = {"hidden_states": AlbefVisionLayer, "attentions": AlbefAttention}

    def __init__(self, config: AlbefVisionConfig):
        super().__init__(config)
        self.embeddings = AlbefVisionEmbeddings(config)
        self.layers = nn.ModuleList([AlbefVisionLayer(config) for _ in range(config.num_hidden_layers)])
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embedding

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        bool_masked_pos: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            pixel_values: `[batch, 3, H, W]` images.
            interpolate_pos_encoding: run at another square size by interpolating the position table.
            bool_masked_pos: `[batch, patches]` patches replaced by the mask token (needs `use_mask_token`).
            output_attentions, output_hidden_states: also return each layer's attention maps (eager attention) /
                input states (read by `@capture_outputs`; `hidden_states[-1]` is before the final LayerNorm).
        """
        warn_if_attentions_unavailable(self.config, output_attentions)
        hidden_states = self.embeddings(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, bool_masked_pos=bool_masked_pos
        )
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return BaseModelOutputWithPooling(last_hidden_state=self.post_layernorm(hidden_states))


class AlbefTextModel(AlbefPreTrainedModel):
    """Embeddings and the text-only BERT layers `[0, fusion_layer)` (the official `mode='text'`)."""

    config_class = AlbefTextConfig
    input_modalities = ("text",)
    main_input_name = "input_ids"
    base_model_prefix = "text_model"
    # the embeddings' output, then each layer's: the first hidden state exists even without layers (SIMLA's text tower)
    _can_record_outputs = {
        "hidden_states": [
            OutputRecorder(AlbefTextEmbeddings, capture_initial_hidden_state=False),
            OutputRecorder(AlbefTextLayer, capture_initial_hidden_state=False),
        ],
        "attentions": AlbefAttention,
    }

    def __init__(self, config: AlbefTextConfig):
        super().__init__(config)
        self.embeddings = AlbefTextEmbeddings(config)
        self.layers = nn.ModuleList(
            [AlbefTextLayer(config, has_cross_attention=False) for _ in range(config.fusion_layer)]
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    @capture_outputs
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            input_ids: `[batch, tokens]` captions; attention_mask: `[batch, tokens]` 1 for real tokens.
            token_type_ids: BERT segment ids (ALBEF uses 0 throughout; accepted because tokenizers return them).
            inputs_embeds: `[batch, tokens, hidden]` vectors to encode instead of the word embeddings of `input_ids`
                (exactly one of the two).
            output_attentions, output_hidden_states: also return each layer's attention maps (eager attention) /
                states (read by `@capture_outputs`).
        """
        warn_if_attentions_unavailable(self.config, output_attentions)
        if input_ids is not None:
            check_text_inputs(input_ids, attention_mask, self.config.vocab_size)
        hidden_states = self.embeddings(input_ids, token_type_ids, inputs_embeds)
        mask = padding_attention_mask(self.config, hidden_states, attention_mask)
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask)
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states)


class AlbefFusionModel(AlbefPreTrainedModel):
    """The multimodal BERT layers `[fusion_layer, num_hidden_layers)`: text tokens attend to themselves and, through
    cross-attention, to the image tokens (the official `mode='fusion'`). Without image tokens the cross-attention
    blocks are skipped and the layers encode text alone: SIMLA runs one stack of cross-attention layers both ways
    (its `mode='text'` and `mode='multimodal'`)."""

    config_class = AlbefTextConfig
    input_modalities = ("image", "text")
    main_input_name = "text_hidden_states"
    base_model_prefix = "fusion_model"
    _can_record_outputs = {
        "hidden_states": AlbefTextLayer,
        "attentions": OutputRecorder(AlbefAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(AlbefAttention, index=1, layer_name="cross_attn"),
    }

    def __init__(self, config: AlbefTextConfig):
        super().__init__(config)
        num_fusion_layers = config.num_hidden_layers - config.fusion_layer
        self.layers = nn.ModuleList(
            [AlbefTextLayer(config, has_cross_attention=True) for _ in range(num_fusion_layers)]
        )
        self.post_init()

    @capture_outputs
    def forward(
        self,
        text_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_hidden_states: torch.Tensor | None = None,
        image_attention_mask: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        text_self_attended: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithCrossAttentions:
        r"""
        Args:
            text_hidden_states: `[batch, tokens, width]` text-encoder outputs; attention_mask: their padding mask.
            image_hidden_states: `[batch, patches, vision width]` ViT outputs of the paired images; None skips the
                cross-attention in every layer (self-attention and FFN only).
            image_attention_mask: `[batch, patches]` padding mask of the image tokens (None: all real).
            image_index: `[batch]` with `image_hidden_states` of shape `[images, patches, vision width]`: the image
                each text is paired with. Each image's cross-attention keys and values are then computed once for
                all its texts, not once per pair (the same numbers; what the retrieval re-rank uses).
            text_self_attended: `text_hidden_states` are `self_attend_text`'s output: the first layer's
                self-attention, which depends on the text alone, was computed once per text instead of once per pair.
            output_attentions, output_hidden_states: also return each layer's self- and cross-attention maps (eager
                attention) / states (read by `@capture_outputs`).
        """
        warn_if_attentions_unavailable(self.config, output_attentions)
        if image_hidden_states is None and image_attention_mask is not None:
            raise ValueError("image_attention_mask was given without image_hidden_states; pass both or neither.")
        hidden_states = text_hidden_states
        mask = padding_attention_mask(self.config, hidden_states, attention_mask)
        image_mask = None
        if image_hidden_states is not None:
            pair_images = image_hidden_states
            if image_index is not None:  # the mask per pair; a broadcast view gives its batch size and dtype
                pair_images = image_hidden_states[:1].expand(len(image_index), -1, -1)
                if image_attention_mask is not None:
                    image_attention_mask = image_attention_mask[image_index]
            image_mask = padding_attention_mask(self.config, hidden_states, image_attention_mask, pair_images)
        for position, layer in enumerate(self.layers):
            self_attended = text_self_attended and position == 0
            hidden_states = layer(hidden_states, mask, image_hidden_states, image_mask, image_index, self_attended)
        return BaseModelOutputWithCrossAttentions(last_hidden_state=hidden_states)

    def self_attend_text(self, text_hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The first layer's self-attention block on text-encoder outputs: the part of fusion that does not see the
        image, so a re-rank computes it once per text and passes `text_self_attended=True`."""
        mask = padding_attention_mask(self.config, text_hidden_states, attention_mask)
        return self.layers[0].self_attention_block(text_hidden_states, mask)


__all__ = [
    "REMOTE_CODE_AUTO_MAP",
    "AlbefFusionModel",
    "AlbefPreTrainedModel",
    "AlbefTextModel",
    "AlbefVisionModel",
    "resized_bias",
    "resized_embedding",
]
