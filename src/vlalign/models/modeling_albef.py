"""PyTorch ALBEF (Li et al., "Align before Fuse: Vision and Language Representation Learning with Momentum
Distillation", NeurIPS 2021).

The model is a ViT image encoder, a BERT text encoder whose upper layers (the *fusion* encoder) cross-attend to the
image tokens, and three alignment objectives: image-text contrast (ITC) against momentum-feature queues with momentum
distillation, image-text matching (ITM) on mined hard negatives, and masked language modelling (MLM) with momentum
distillation. `AlbefModel` holds the online encoders and heads used downstream; `AlbefForPreTraining` and
`AlbefForImageTextRetrieval` add the momentum encoders and queues needed to train, compose the objectives from the
named units of `losses.py`, and run their per-step duties (EMA, queue update) after each optimizer step
(`training_duties.py`).

This file imports only torch, transformers and its sibling files, so saved checkpoints load with
`trust_remote_code=True` where vlalign is not installed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.configuration_utils import PreTrainedConfig
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithCrossAttentions, BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import ModelOutput, logging
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

from .configuration_albef import AlbefConfig, AlbefTextConfig, AlbefVisionConfig
from .frozen import FrozenParametersMixin
from .input_checks import check_pairs, check_pixel_values, check_text_inputs
from .losses import (
    QueueContrastiveOutput,
    check_loss_finite,
    distilled_mlm_loss,
    distributed_rank_and_world,
    gather_without_grad,
    hard_negative_matching_loss,
    queue_contrastive_loss,
)
from .parameter_groups import albef_parameter_groups
from .remote_code import RemoteCodeSaveMixin
from .training_duties import TrainingDutiesMixin

logger = logging.get_logger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def padding_attention_mask(
    config: PreTrainedConfig,
    queries: torch.Tensor,
    attention_mask: torch.Tensor | None,
    keys: torch.Tensor | None = None,
) -> torch.Tensor | BlockMask | None:
    """A `[batch, keys]` 1/0 padding mask in the form `config`'s attention backend takes: an additive float mask
    (eager), a boolean mask or None when nothing is padded (SDPA), a `BlockMask` (flex attention). `keys` are the
    states attended to when they are not the queries themselves (cross-attention to the image tokens)."""
    return create_bidirectional_mask(
        config=config, inputs_embeds=queries, attention_mask=attention_mask, encoder_hidden_states=keys
    )


class AlbefAttention(nn.Module):
    """Multi-head attention with separate query/key/value projections and an output projection. Keys and values come
    from `key_value_states` when given (cross-attention to the image tokens), else from the input itself; with
    `key_value_index` they are projected once per row of `key_value_states` and shared by the queries that index it
    (one image's keys and values for all the texts it is paired with in a re-rank batch)."""

    def __init__(self, config, key_value_width: int | None = None, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.config = config
        hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        if hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_attention_heads={self.num_heads}.")
        self.head_dim = hidden_size // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = dropout
        self.is_causal = False
        key_value_width = key_value_width or hidden_size
        self.query = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.key = nn.Linear(key_value_width, hidden_size, bias=bias)
        self.value = nn.Linear(key_value_width, hidden_size, bias=bias)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        key_value_states: torch.Tensor | None = None,
        key_value_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, query_length, _ = hidden_states.shape
        source = hidden_states if key_value_states is None else key_value_states
        keys, values = self.key(source), self.value(source)
        if key_value_index is not None:
            keys, values = keys[key_value_index], values[key_value_index]

        def split_heads(states: torch.Tensor) -> torch.Tensor:
            return states.view(batch_size, states.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            split_heads(self.query(hidden_states)),
            split_heads(keys),
            split_heads(values),
            attention_mask,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
            is_causal=False,
        )
        attn_output = attn_output.reshape(batch_size, query_length, -1)
        return self.out_proj(attn_output), attn_weights


class AlbefMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


# ---------------------------------------------------------------------------------------------------------------------
# Vision encoder (pre-LN ViT, timm/DeiT layout)
# ---------------------------------------------------------------------------------------------------------------------


def interpolate_pos_embed(pos_embed: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Resize ViT position embeddings [1, 1 + g*g, D] to a new square grid of `num_patches` patches.

    The CLS row is kept; the grid rows are resized with bicubic interpolation (align_corners=False), as the official
    ALBEF code does when the resolution changes (pretraining at 256 px, fine-tuning at 384 px).
    """
    old_grid = int((pos_embed.shape[1] - 1) ** 0.5)
    new_grid = int(num_patches**0.5)
    if old_grid * old_grid != pos_embed.shape[1] - 1 or new_grid * new_grid != num_patches:
        raise ValueError(
            f"Position embeddings of {pos_embed.shape[1]} rows cannot be resized to {num_patches} patches: "
            "both must be 1 CLS row plus a square grid."
        )
    if old_grid == new_grid:
        return pos_embed
    cls_row, grid = pos_embed[:, :1], pos_embed[:, 1:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, dim)
    return torch.cat([cls_row, grid], dim=1)


class AlbefVisionEmbeddings(nn.Module):
    """Patch embeddings with a CLS token prepended and absolute position embeddings added. With
    `config.use_mask_token`, masked patches can be replaced by a learned `mask_token` first (SIMLA's masked image
    modelling)."""

    def __init__(self, config: AlbefVisionConfig):
        super().__init__()
        self.config = config
        self.num_patches = (config.image_size // config.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_mask_token else None
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.num_patches + 1, config.hidden_size))
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        bool_masked_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`bool_masked_pos`: `[batch, patches]` booleans (row-major patch grid, no CLS); True patches are replaced by
        `mask_token` before the CLS token and the position embeddings are added."""
        check_pixel_values(pixel_values, self.config, interpolate_pos_encoding)
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        if bool_masked_pos is not None:
            patches = self.mask_patches(patches, bool_masked_pos)
        position_embeddings = self.position_embeddings
        if interpolate_pos_encoding and patches.shape[1] != self.num_patches:
            position_embeddings = interpolate_pos_embed(position_embeddings, patches.shape[1])
        cls_tokens = self.cls_token.expand(patches.shape[0], -1, -1)
        return torch.cat([cls_tokens, patches], dim=1) + position_embeddings

    def mask_patches(self, patches: torch.Tensor, bool_masked_pos: torch.Tensor) -> torch.Tensor:
        """`patches · (1 − M) + mask_token · M` for the mask M."""
        if self.mask_token is None:
            raise ValueError(
                "bool_masked_pos was given but this vision encoder has no mask token. Build it with "
                "use_mask_token=True in the vision config to mask patches."
            )
        if tuple(bool_masked_pos.shape) != tuple(patches.shape[:2]):
            raise ValueError(
                f"bool_masked_pos has shape {tuple(bool_masked_pos.shape)} but the images give "
                f"{tuple(patches.shape[:2])} [batch, patches]: pass one boolean per patch (no CLS), row-major."
            )
        mask = bool_masked_pos.unsqueeze(-1).to(patches.dtype)
        return patches * (1 - mask) + self.mask_token * mask


class AlbefVisionLayer(GradientCheckpointingLayer):
    """Pre-LN transformer block: LN → self-attention → residual, LN → MLP → residual."""

    def __init__(self, config: AlbefVisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = AlbefAttention(config, bias=config.qkv_bias, dropout=config.attention_dropout)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = AlbefMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        attn_output, _ = self.self_attn(self.layer_norm1(hidden_states))
        hidden_states = hidden_states + self.dropout(attn_output)
        return hidden_states + self.dropout(self.mlp(self.layer_norm2(hidden_states)))


# ---------------------------------------------------------------------------------------------------------------------
# Text and fusion encoders (post-LN BERT; the fusion layers add cross-attention to the image tokens)
# ---------------------------------------------------------------------------------------------------------------------


class AlbefTextEmbeddings(nn.Module):
    """BERT embeddings: word (or given `inputs_embeds`) + token type + absolute position, then LayerNorm and dropout.
    With `type_vocab_size=0` there is no token-type table (SIMLA's BERT)."""

    def __init__(self, config: AlbefTextConfig):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size else None
        )
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer(
            "position_ids", torch.arange(config.max_position_embeddings).unsqueeze(0), persistent=False
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Exactly one of `input_ids` `[batch, tokens]` and `inputs_embeds` `[batch, tokens, hidden]` (vectors used
        in place of word embeddings, e.g. image tokens in SIMLA's image-queries-text pass). `token_type_ids` are
        ignored by a model without token types (tokenizers return them)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds to the text embeddings.")
        seq_length = (input_ids if inputs_embeds is None else inputs_embeds).shape[1]
        if seq_length > self.config.max_position_embeddings:
            raise ValueError(
                f"Text of {seq_length} tokens is longer than the model's {self.config.max_position_embeddings} "
                "positions. Tokenize with truncation=True and max_length (the processor does this)."
            )
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        embeddings = inputs_embeds
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(self.position_ids[:, :seq_length])
        return self.dropout(self.layer_norm(embeddings))


class AlbefTextLayer(GradientCheckpointingLayer):
    """Post-LN BERT layer: self-attention, then (fusion layers only, when `encoder_hidden_states` are given)
    cross-attention to the image, then the FFN; each sub-block is dropout → residual → LayerNorm."""

    def __init__(self, config: AlbefTextConfig, has_cross_attention: bool):
        super().__init__()
        attention_dropout = config.attention_probs_dropout_prob
        eps = config.layer_norm_eps
        self.self_attn = AlbefAttention(config, dropout=attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.has_cross_attention = has_cross_attention
        if has_cross_attention:
            self.cross_attn = AlbefAttention(config, key_value_width=config.encoder_width, dropout=attention_dropout)
            self.cross_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.mlp = AlbefMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.output_layer_norm = nn.LayerNorm(config.hidden_size, eps=eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def self_attention_block(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The self-attention sub-block (attention → dropout → residual → LayerNorm)."""
        attn_output, _ = self.self_attn(hidden_states, attention_mask)
        return self.self_attn_layer_norm(hidden_states + self.dropout(attn_output))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        encoder_index: torch.Tensor | None = None,
        self_attended: bool = False,
    ) -> torch.Tensor:
        """`self_attended`: `hidden_states` already went through this layer's `self_attention_block`."""
        if not self_attended:
            hidden_states = self.self_attention_block(hidden_states, attention_mask)
        if self.has_cross_attention and encoder_hidden_states is not None:
            attn_output, _ = self.cross_attn(
                hidden_states, encoder_attention_mask, encoder_hidden_states, encoder_index
            )
            hidden_states = self.cross_attn_layer_norm(hidden_states + self.dropout(attn_output))
        return self.output_layer_norm(hidden_states + self.dropout(self.mlp(hidden_states)))


class AlbefMLMHead(nn.Module):
    """BERT's MLM prediction head. The decoder weight is the word-embedding matrix (tied by construction, so the
    online/momentum EMA never updates it twice); only the transform and the output bias are parameters here."""

    def __init__(self, config: AlbefTextConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        hidden_states = self.layer_norm(self.act(self.dense(hidden_states)))
        return F.linear(hidden_states, word_embeddings, self.bias)


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


@dataclasses.dataclass
class AlbefForPreTrainingOutput(ModelOutput):
    """
    Output of [`AlbefForPreTraining`] and [`AlbefForImageTextRetrieval`].

    Args:
        loss: sum of the objective losses.
        loss_itc: image-text contrastive loss (with momentum distillation when alpha > 0).
        loss_itm: image-text matching loss over the positives and the mined hard negatives.
        loss_mlm: masked language modelling loss (pretraining only).
        sim_i2t: `[batch, batch + queue]` online image features against the momentum text bank, / temperature.
        sim_t2i: `[batch, batch + queue]` online text features against the momentum image bank, / temperature.
        itm_logits: `[batch + negatives, 2]` ITM logits, positives first (index 1 means "match").
        itm_labels: the ITM targets for `itm_logits`.
        mlm_logits: `[batch, tokens, vocab]` MLM prediction scores (pretraining only).
        image_feat_m: `[batch, embed_dim]` momentum image features, to enqueue after the step.
        text_feat_m: `[batch, embed_dim]` momentum text features, to enqueue after the step.
        idx: `[batch]` image indices of the pairs (the retrieval model enqueues them with the features).
        vision_model_output, text_model_output: the online towers' outputs for the batch (with attention maps and
            states when requested).
        fusion_model_output: the fusion encoder's output for the ITM pairs, in `itm_logits` order.
    """

    loss: torch.Tensor | None = None
    loss_itc: torch.Tensor | None = None
    loss_itm: torch.Tensor | None = None
    loss_mlm: torch.Tensor | None = None
    sim_i2t: torch.Tensor | None = None
    sim_t2i: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    itm_labels: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None
    image_feat_m: torch.Tensor | None = None
    text_feat_m: torch.Tensor | None = None
    idx: torch.Tensor | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    fusion_model_output: BaseModelOutputWithCrossAttentions | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Pretrained-model base and the encoders as standalone models
# ---------------------------------------------------------------------------------------------------------------------

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


class AlbefPreTrainedModel(FrozenParametersMixin, RemoteCodeSaveMixin, PreTrainedModel):
    config_class = AlbefConfig
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
        the ViT, and the temperature. Training models add their queues and momentum copies
        (`AlbefMomentumMixin._initialize_weights`)."""
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
        if isinstance(module, AlbefModel):
            init.constant_(module.temp, self.config.temp)


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
    _can_record_outputs = {"hidden_states": AlbefTextLayer, "attentions": AlbefAttention}

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


def warn_if_attentions_unavailable(config: PreTrainedConfig, output_attentions: bool | None) -> None:
    """Attention maps are only materialised by eager attention; say so instead of returning empty tuples."""
    if output_attentions and config._attn_implementation != "eager":
        logger.warning_once(
            f"output_attentions=True needs attn_implementation='eager' to return attention maps; with "
            f"{config._attn_implementation!r} they are left out. Load the model with attn_implementation='eager'."
        )


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
# Objectives
# ---------------------------------------------------------------------------------------------------------------------


def albef_alpha(step: int, steps_per_epoch: int, alpha: float = 0.4, warmup_epochs: float = 1.0) -> float:
    """Momentum-distillation weight: ``alpha * min(1, step / (warmup_epochs * steps_per_epoch))``.

    The official loop uses ``alpha * min(1, i / len(data_loader))`` in epoch 0 (``i`` = iteration within the epoch,
    0 at the first one) and ``alpha`` from epoch 1 on; with a global 0-based ``step`` (``trainer.state.global_step``
    during the forward pass) and ``warmup_epochs=1`` this is the same. A degenerate ramp (``steps_per_epoch <= 0`` or
    ``warmup_epochs <= 0``) returns ``alpha``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    ramp = warmup_epochs * steps_per_epoch
    if steps_per_epoch <= 0 or warmup_epochs <= 0 or ramp <= 0:
        return float(alpha)
    return float(alpha) * min(1.0, step / ramp)


@dataclasses.dataclass
class PairFeatures:
    """L2-normalised projected features of a batch of image-text pairs: online (`image`, `text`, with gradients) and
    momentum (`image_m`, `text_m`, constants)."""

    image: torch.Tensor
    text: torch.Tensor
    image_m: torch.Tensor
    text_m: torch.Tensor


class AlbefMomentumMixin(TrainingDutiesMixin):
    """Momentum (EMA) encoders, feature queues and the ITC/ITM objectives shared by the pretraining and retrieval
    models, with their per-step training duties: after every optimizer step (`after_optimizer_step`, run by
    `TrainingDutiesCallback` or a hand-written loop) the momentum encoders take one EMA step and the momentum features
    of that step's training forwards enter the queues."""

    supports_itm_rerank = True
    #: the online model the training models wrap (as `self.albef`)
    base_model_class: type[AlbefModel] = AlbefModel
    #: what the training forwards return
    output_class: type[AlbefForPreTrainingOutput] = AlbefForPreTrainingOutput
    #: pairs of (online module path, momentum module name); momentum modules mirror the online ones exactly
    _momentum_modules: tuple[tuple[str, str], ...] = (
        ("albef.vision_model", "vision_model_m"),
        ("albef.vision_proj", "vision_proj_m"),
        ("albef.text_model", "text_model_m"),
        ("albef.fusion_model", "fusion_model_m"),
        ("albef.text_proj", "text_proj_m"),
    )

    def _build_momentum_encoders(self, config: AlbefConfig) -> None:
        self.albef = self.base_model_class(config)
        self.vision_model_m = AlbefVisionModel._from_config(config.vision_config)
        self.vision_proj_m = nn.Linear(config.vision_config.hidden_size, config.embed_dim)
        self.text_model_m = AlbefTextModel._from_config(config.text_config)
        self.fusion_model_m = AlbefFusionModel._from_config(config.text_config)
        self.text_proj_m = nn.Linear(config.text_config.hidden_size, config.embed_dim)
        self.register_buffer("image_queue", torch.zeros(config.embed_dim, config.queue_size))
        self.register_buffer("text_queue", torch.zeros(config.embed_dim, config.queue_size))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        #: (image_feat_m, text_feat_m, idx) of each training forward since the last optimizer step, to enqueue
        self._momentum_feature_stash: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._last_alpha = config.alpha if config.distill else 0.0

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        """transformers' per-module initialisation; then, at the model itself (visited last), the training state a
        checkpoint may lack: random unit queues, and momentum parameters equal to their online ones. This runs even
        when transformers skips the model's own `_init_weights` because its buffers were loaded, so a momentum module
        missing from a checkpoint (a fine-tuned file, an EMA copy the config newly asks for) starts as a copy of its
        online module rather than as random weights. Loaded tensors are never overwritten."""
        super()._initialize_weights(module, is_custom_code)
        if module is self:
            with torch.no_grad():
                self._init_queues()
                for online, momentum in self.momentum_parameter_pairs():
                    init.copy_(momentum, online)

    def _init_queues(self) -> None:
        """Queues start full of random unit vectors (one per column), as in the official code."""
        for queue in (self.image_queue, self.text_queue):
            if not getattr(queue, "_is_hf_initialized", False):
                queue.copy_(F.normalize(torch.randn_like(queue), dim=0))
        init.zeros_(self.queue_ptr)

    def momentum_parameter_pairs(self) -> Iterator[tuple[nn.Parameter, nn.Parameter]]:
        for online_path, momentum_name in self._momentum_modules:
            online = self.get_submodule(online_path)
            momentum = self.get_submodule(momentum_name)
            yield from zip(online.parameters(), momentum.parameters(), strict=True)

    def momentum_modules(self) -> list[nn.Module]:
        return [self.get_submodule(name) for _, name in self._momentum_modules]

    def frozen_modules(self) -> list[nn.Module]:
        """The momentum encoders: updated by the EMA, never by the optimizer."""
        return self.momentum_modules()

    @torch.no_grad()
    def copy_params_to_momentum(self) -> None:
        """Make the momentum encoders equal to the online ones (done at construction by the official code)."""
        for online, momentum in self.momentum_parameter_pairs():
            momentum.copy_(online)
            momentum.requires_grad_(False)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """θ_m ← m·θ_m + (1-m)·θ for every momentum parameter. Call once per optimizer step."""
        pairs = list(self.momentum_parameter_pairs())
        momentum_params = [m for _, m in pairs]
        torch._foreach_mul_(momentum_params, self.config.momentum)
        torch._foreach_add_(momentum_params, [o.detach() for o, _ in pairs], alpha=1 - self.config.momentum)

    @torch.no_grad()
    def enqueue(self, image_feats: torch.Tensor, text_feats: torch.Tensor, idx: torch.Tensor | None = None) -> None:
        """Write (already globally gathered) momentum features into the queues at `queue_ptr`, wrapping around.

        The official code requires `queue_size % global_batch == 0`; wrapping makes any batch size work and is
        identical when the condition holds.
        """
        batch_size = image_feats.shape[0]
        if batch_size > self.config.queue_size:
            raise ValueError(f"Cannot enqueue {batch_size} features into a queue of {self.config.queue_size}.")
        ptr = int(self.queue_ptr)
        columns = (torch.arange(batch_size, device=self.queue_ptr.device) + ptr) % self.config.queue_size
        self.image_queue[:, columns] = image_feats.t().to(self.image_queue.dtype)
        self.text_queue[:, columns] = text_feats.t().to(self.text_queue.dtype)
        if idx is not None and hasattr(self, "idx_queue"):
            self.idx_queue[:, columns] = idx.to(self.idx_queue.dtype)
        self.queue_ptr[0] = (ptr + batch_size) % self.config.queue_size

    def queue_idx(self) -> torch.Tensor:
        """Image indices of the queued features; -100 (never a positive) where the model keeps none."""
        return torch.full((self.config.queue_size,), -100, dtype=torch.long, device=self.queue_ptr.device)

    def _distillation_weight(self, alpha: float | None) -> float:
        """α for this forward: the argument; else the official warm-up at the step a trainer set (see
        `set_training_progress`); else `config.alpha`. Always 0 when `config.distill` is off."""
        progress = self.training_progress()
        if not self.config.distill:
            alpha = 0.0
        elif alpha is None and progress is not None:
            alpha = albef_alpha(*progress, self.config.alpha, self.config.alpha_warmup_epochs)
        elif alpha is None:
            alpha = self.config.alpha
        self._last_alpha = float(alpha)
        return alpha

    def _stash_momentum_features(self, image_feat_m: torch.Tensor, text_feat_m: torch.Tensor, idx: torch.Tensor):
        """Keep a training forward's momentum features for the queue update after the optimizer step."""
        if self.training and torch.is_grad_enabled():
            self._momentum_feature_stash.append((image_feat_m.detach(), text_feat_m.detach(), idx.detach()))

    @torch.no_grad()
    def _enqueue_stashed_features(self) -> None:
        """Enqueue the stashed features of every micro-batch since the last step, each gathered from every process
        in rank order (micro-batch by micro-batch), as the official `concat_all_gather` + `_dequeue_and_enqueue`."""
        if not self._momentum_feature_stash:
            return
        image_feats, text_feats, idx = (
            torch.cat([gather_without_grad(t) for t in tensors])
            for tensors in zip(*self._momentum_feature_stash, strict=True)
        )
        self._momentum_feature_stash.clear()
        self.enqueue(image_feats, text_feats, idx)

    @torch.no_grad()
    def _clamp_temperature(self) -> None:
        """Keep the ITC temperature in [temp_min, temp_max], as the official forward does. Only an out-of-range value
        is written, so the clamp never looks like an optimizer update to `check_training_duties`."""
        temp = self.albef.temp
        if not self.config.temp_min <= temp.item() <= self.config.temp_max:
            temp.clamp_(self.config.temp_min, self.config.temp_max)

    def after_optimizer_step(self, step: int) -> None:
        """ALBEF's per-step duties: one EMA step of the momentum encoders, the temperature clamp, then the step's
        momentum features into the queues."""
        self.momentum_update()
        self._clamp_temperature()
        self._enqueue_stashed_features()
        super().after_optimizer_step(step)

    def training_log_values(self) -> dict[str, float]:
        return {"alpha": self._last_alpha, "temp": self.albef.temp.item()}

    def training_duties_description(self) -> str:
        return "momentum EMA and queue update"

    def loss_weight(self, name: str) -> float:
        """Weight of loss `name` in the total: 1 for every ALBEF loss, as in the official code."""
        return 1.0

    def _training_output(self, step: dict, **extra: torch.Tensor) -> AlbefForPreTrainingOutput:
        """The forward's output: `loss` = the weighted sum of the `loss_names` that were computed, checked finite,
        with the step's and the model-specific `extra` fields that `output_class` carries."""
        fields = step | extra
        losses = {name: fields.get(name) for name in self.loss_names}
        check_loss_finite(losses)
        weighted = [
            value if self.loss_weight(name) == 1 else self.loss_weight(name) * value
            for name, value in losses.items()
            if value is not None
        ]
        output_fields = {field.name for field in dataclasses.fields(self.output_class)}
        return self.output_class(loss=sum(weighted), **{k: v for k, v in fields.items() if k in output_fields})

    def _check_inputs(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, pixel_values_teacher: torch.Tensor | None
    ) -> None:
        check_pairs(pixel_values, input_ids)
        if pixel_values_teacher is not None and pixel_values_teacher.shape != pixel_values.shape:
            raise ValueError(
                f"pixel_values_teacher has shape {tuple(pixel_values_teacher.shape)} but pixel_values "
                f"{tuple(pixel_values.shape)}; the teacher view must be one image of the same size per pair."
            )

    def _encode_momentum(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        interpolate_pos_encoding: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Momentum image tokens and normalised momentum image/text features (no gradients). `pixel_values` are
        the images the momentum (teacher) encoder sees."""
        image_hidden_m = self.vision_model_m(pixel_values, interpolate_pos_encoding).last_hidden_state
        image_feat_m = F.normalize(self.vision_proj_m(image_hidden_m[:, 0]), dim=-1)
        text_hidden_m = self.text_model_m(input_ids, attention_mask).last_hidden_state
        text_feat_m = F.normalize(self.text_proj_m(text_hidden_m[:, 0]), dim=-1)
        return image_hidden_m, image_feat_m, text_feat_m

    def _alignment_losses(
        self, itc: QueueContrastiveOutput, features: PairFeatures, idx: torch.Tensor, alpha: float
    ) -> dict[str, torch.Tensor]:
        """The alignment objectives on top of the ITC banks; ALBEF's is ITC itself. Models that align more (CODIS's
        intra-modal and codebook terms) override this."""
        return {"loss_itc": itc.loss}

    def _contrastive_and_matching(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        idx: torch.Tensor | None,
        alpha: float,
        generator: torch.Generator | None,
        interpolate_pos_encoding: bool,
        output_flags: dict[str, bool],
        pixel_values_teacher: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | ModelOutput]:
        """ITC against the momentum banks (batch + queue), the model's further alignment losses
        (`_alignment_losses`) and ITM with hard negatives, as one pretraining or retrieval step computes them. Pairs
        sharing an `idx` are positives of each other. `output_flags` (attention maps, states) apply to the online
        towers and the ITM fusion pass; `pixel_values_teacher` (default: `pixel_values`) feed the momentum ViT."""
        self._check_inputs(pixel_values, input_ids, pixel_values_teacher)
        self._clamp_temperature()
        self.check_training_duties()
        albef = self.albef
        global_negatives = self.config.itc_global_negatives
        if idx is None:  # every pair is its own image; offset by rank so indices are unique across processes
            rank = distributed_rank_and_world()[0]
            idx = torch.arange(pixel_values.shape[0], device=pixel_values.device) + rank * pixel_values.shape[0]
        idx = idx.view(-1)

        vision_outputs = albef.get_image_features(pixel_values, interpolate_pos_encoding, **output_flags)
        text_outputs = albef.get_text_features(input_ids, attention_mask, **output_flags)
        image_hidden, text_hidden = vision_outputs.last_hidden_state, text_outputs.last_hidden_state
        image_feat = F.normalize(vision_outputs.pooler_output, dim=-1)
        text_feat = F.normalize(text_outputs.pooler_output, dim=-1)
        with torch.no_grad():
            image_hidden_m, image_feat_m, text_feat_m = self._encode_momentum(
                pixel_values if pixel_values_teacher is None else pixel_values_teacher,
                input_ids,
                attention_mask,
                interpolate_pos_encoding,
            )

        self._stash_momentum_features(image_feat_m, text_feat_m, idx)
        itc = queue_contrastive_loss(
            image_feat,
            text_feat,
            image_feat_m,
            text_feat_m,
            image_queue=self.image_queue,
            text_queue=self.text_queue,
            idx=idx,
            queue_idx=self.queue_idx(),
            temp=albef.temp,
            alpha=alpha,
            global_negatives=global_negatives,
        )
        features = PairFeatures(image_feat, text_feat, image_feat_m, text_feat_m)
        alignment = self._alignment_losses(itc, features, idx, alpha)
        # ITM negatives come from the local batch (its columns in the bank), as in the official code
        local = itc.batch_columns
        fusion_outputs = []

        def score_pairs(
            texts: torch.Tensor, masks: torch.Tensor | None, images: torch.Tensor, image_index: torch.Tensor
        ) -> torch.Tensor:
            fusion_outputs.append(albef.fusion_model(texts, masks, images, image_index=image_index, **output_flags))
            return albef.itm_head(fusion_outputs[-1].last_hidden_state[:, 0])

        itm = hard_negative_matching_loss(
            score_pairs,
            text_hidden,
            attention_mask,
            image_hidden,
            sim_i2t=itc.sim_i2t[:, local],
            sim_t2i=itc.sim_t2i[:, local],
            idx=idx,
            generator=generator,
        )
        return {
            **alignment,
            "loss_itm": itm.loss,
            "sim_i2t": itc.sim_i2t,
            "sim_t2i": itc.sim_t2i,
            "itm_logits": itm.logits,
            "itm_labels": itm.labels,
            "image_hidden": image_hidden,
            "image_hidden_m": image_hidden_m,
            "image_feat_m": image_feat_m,
            "text_feat_m": text_feat_m,
            "idx": idx,
            "vision_model_output": vision_outputs,
            "text_model_output": text_outputs,
            "fusion_model_output": fusion_outputs[0],
        }


# ---------------------------------------------------------------------------------------------------------------------
# Pretraining and retrieval models
# ---------------------------------------------------------------------------------------------------------------------


class AlbefForPreTraining(AlbefMomentumMixin, AlbefPreTrainedModel):
    """ALBEF pretraining: ITC with momentum distillation against the queues, ITM on hard negatives, and MLM with
    momentum distillation. Loss = loss_itc + loss_itm + loss_mlm, all weighted 1 as in the official code."""

    main_input_name = "pixel_values"
    _momentum_modules = AlbefMomentumMixin._momentum_modules + (("mlm_head", "mlm_head_m"),)
    loss_names = ("loss_itc", "loss_itm", "loss_mlm")

    def __init__(self, config: AlbefConfig):
        super().__init__(config)
        self._build_momentum_encoders(config)
        self.mlm_head = AlbefMLMHead(config.text_config)
        self.mlm_head_m = AlbefMLMHead(config.text_config)
        self.post_init()
        self.apply_freezing()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.albef.get_input_embeddings()

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
            text_model, fusion_model, head = self.albef.text_model, self.albef.fusion_model, self.mlm_head
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
            pixel_values, input_ids, attention_mask, None, alpha, generator, interpolate_pos_encoding, flags,
            pixel_values_teacher,
        )  # fmt: skip
        mlm = self._masked_language_modeling(
            step, input_ids, attention_mask, mlm_input_ids, mlm_labels, generator, alpha
        )
        return self._training_output(step, **mlm)

    @property
    def mlm_distill_axis(self) -> str:
        """Axis of the MLM distillation's log-softmax: the vocabulary (the fixed ALBEF loss, ALBEF#58)."""
        return "vocab"

    def _masked_language_modeling(
        self,
        step: dict,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
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
        mlm_logits = self.mlm_logits(mlm_input_ids, attention_mask, step["image_hidden"])
        loss_mlm = distilled_mlm_loss(
            mlm_logits,
            mlm_labels,
            lambda: self.mlm_logits(mlm_input_ids, attention_mask, step["image_hidden_m"], momentum=True),
            alpha,
            distill_axis=self.mlm_distill_axis,
        )
        return {"loss_mlm": loss_mlm, "mlm_logits": mlm_logits}


class AlbefForImageTextRetrieval(AlbefMomentumMixin, AlbefPreTrainedModel):
    """ALBEF retrieval fine-tuning (ITC + ITM): captions of the same image (same `idx`), in the batch or in the
    queue, are all positives; hard negatives never share the anchor's image. Also serves re-ranking (`itm_score`)."""

    # A pretraining checkpoint carries MLM heads this model has no use for (ALBEF#79); the idx queue starts empty.
    _keys_to_ignore_on_load_unexpected = [r"mlm_head(_m)?\."]
    main_input_name = "pixel_values"
    _keys_to_ignore_on_load_missing = [r"^idx_queue$"]
    loss_names = ("loss_itc", "loss_itm")

    def __init__(self, config: AlbefConfig):
        super().__init__(config)
        self._build_momentum_encoders(config)
        self.register_buffer("idx_queue", torch.full((1, config.queue_size), -100, dtype=torch.long))
        self.post_init()
        self.apply_freezing()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.albef.get_input_embeddings()

    def _init_queues(self) -> None:
        super()._init_queues()
        init.constant_(self.idx_queue, -100)

    def queue_idx(self) -> torch.Tensor:
        return self.idx_queue.clone().view(-1)

    def itm_score(self, *args, **kwargs) -> torch.Tensor:
        """See [`AlbefModel.itm_score`]."""
        return self.albef.itm_score(*args, **kwargs)

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
            pixel_values, input_ids, attention_mask, idx, alpha, generator, interpolate_pos_encoding, flags,
            pixel_values_teacher,
        )  # fmt: skip
        return self._training_output(step)


__all__ = [
    "AlbefForImageTextRetrieval",
    "AlbefForPreTraining",
    "AlbefFusionModel",
    "AlbefModel",
    "AlbefPreTrainedModel",
    "AlbefTextModel",
    "AlbefVisionModel",
    "interpolate_pos_embed",
]
