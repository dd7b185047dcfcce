"""ALBEF's transformer blocks: attention, the pre-LN ViT block, the post-LN BERT block with optional cross-attention
to the image tokens, and the MLM head. [`modeling_albef_encoders`] stacks them into the encoders; SIMLA and CODIS
reuse them unchanged.

This file is shipped with saved models (remote code): it imports only torch, transformers and its sibling files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.configuration_utils import PreTrainedConfig
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

from .configuration_albef import AlbefTextConfig, AlbefVisionConfig
from .input_checks import check_pixel_values

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
    from `image_hidden_states` when given (cross-attention to the image tokens), else from the input itself; with
    `image_index` they are projected once per image and shared by the rows of the input that index it (one image's
    keys and values for all the texts it is paired with in a re-rank batch)."""

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
        image_hidden_states: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, query_length, _ = hidden_states.shape
        source = hidden_states if image_hidden_states is None else image_hidden_states
        keys, values = self.key(source), self.value(source)
        if image_index is not None:
            keys, values = keys[image_index], values[image_index]

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
    """Post-LN BERT layer: self-attention, then (fusion layers only, when `image_hidden_states` are given)
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
        image_hidden_states: torch.Tensor | None = None,
        image_attention_mask: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        self_attended: bool = False,
    ) -> torch.Tensor:
        """`image_index`: the row of `image_hidden_states` each text attends to (see [`AlbefAttention`]);
        `self_attended`: `hidden_states` already went through this layer's `self_attention_block`."""
        if not self_attended:
            hidden_states = self.self_attention_block(hidden_states, attention_mask)
        if self.has_cross_attention and image_hidden_states is not None:
            attn_output, _ = self.cross_attn(hidden_states, image_attention_mask, image_hidden_states, image_index)
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


def warn_if_attentions_unavailable(config: PreTrainedConfig, output_attentions: bool | None) -> None:
    """Attention maps are only materialised by eager attention; say so instead of returning empty tuples."""
    if output_attentions and config._attn_implementation != "eager":
        logger.warning_once(
            f"output_attentions=True needs attn_implementation='eager' to return attention maps; with "
            f"{config._attn_implementation!r} they are left out. Load the model with attn_implementation='eager'."
        )


__all__ = [
    "AlbefAttention",
    "AlbefMLMHead",
    "AlbefMLP",
    "AlbefTextEmbeddings",
    "AlbefTextLayer",
    "AlbefVisionEmbeddings",
    "AlbefVisionLayer",
    "eager_attention_forward",
    "interpolate_pos_embed",
    "padding_attention_mask",
    "warn_if_attentions_unavailable",
]
