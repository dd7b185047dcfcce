"""PyTorch FDT (Chen et al., "Revisiting Multimodal Representation in Contrastive Learning: From Patch and Token
Embeddings to Finite Discrete Tokens", CVPR 2023).

A CLIP-style dual encoder (ViT + causal text transformer, built from transformers' CLIP layers) whose contrastive
embeddings are not the CLS/EOT features but sparse convex combinations of a shared, learned codebook of Finite Discrete
Tokens: each modality's token features go through a query MLP, are scored against every FDT, max-pooled over tokens,
normalised over the codebook with sparsemax, and the weights average the FDT rows.

`FdtModel` is the dual encoder used downstream (`get_image_features`/`get_text_features` return the FDT embeddings);
`FdtForPreTraining` adds the gathered contrastive loss and the per-step duties (logit-scale clamp, temperature
schedule). This file imports only torch, transformers and sibling files, so saved folders load with
`trust_remote_code=True` where vlalign is not installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.masking_utils import create_causal_mask
from transformers.modeling_flash_attention_utils import FlashAttentionKwargs
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.modeling_utils import PreTrainedModel
from transformers.models.clip.modeling_clip import (
    CLIPMLP,
    CLIPAttention,
    CLIPEncoder,
    CLIPEncoderLayer,
    CLIPTextEmbeddings,
    CLIPVisionEmbeddings,
)
from transformers.utils import ModelOutput
from transformers.utils.generic import TransformersKwargs, can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_fdt import FdtConfig, FdtTextConfig, FdtVisionConfig
from .frozen import FrozenParametersMixin
from .input_checks import check_pairs, check_pixel_values, check_text_inputs
from .losses import GatheredContrastiveLoss, check_loss_finite
from .remote_code import RemoteCodeSaveMixin
from .sparsemax import sparsemax
from .training_duties import TrainingDutiesMixin
from .weights_check import WeightsCheckMixin

#: added to the norm when L2-normalising FDT embeddings, as the official training and zero-shot code do
NORM_EPS = 1e-10

# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class FdtOutput(ModelOutput):
    """
    Output of [`FdtModel`].

    Args:
        loss: symmetric InfoNCE on the FDT embeddings (with `return_loss=True`).
        logits_per_image: `[images, texts]` scaled cosine similarities of the FDT embeddings.
        logits_per_text: `[texts, images]`.
        image_embeds: `[images, fdt_dim]` L2-normalised FDT image embeddings.
        text_embeds: `[texts, fdt_dim]` L2-normalised FDT text embeddings.
        image_fdt_weights: `[images, fdt_num_tokens]` codebook weights (sparse, rows sum to 1).
        text_fdt_weights: `[texts, fdt_num_tokens]`.
        image_fdt_pooled_logits: `[images, fdt_num_tokens]` pooled scores / T fed to the normalisation.
        text_fdt_pooled_logits: `[texts, fdt_num_tokens]`.
        vision_model_output: the ViT output (tokens before any final LayerNorm).
        text_model_output: the text-tower output (`ln_final` at every position).
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_fdt_weights: torch.Tensor | None = None
    text_fdt_weights: torch.Tensor | None = None
    image_fdt_pooled_logits: torch.Tensor | None = None
    text_fdt_pooled_logits: torch.Tensor | None = None
    vision_model_output: BaseModelOutput | None = None
    text_model_output: BaseModelOutputWithPooling | None = None


@dataclass
class FdtForPreTrainingOutput(ModelOutput):
    """
    Output of [`FdtForPreTraining`].

    Args:
        loss: the training loss (= `loss_itc`).
        loss_itc: symmetric InfoNCE of local rows against the embeddings of every process.
        logits_per_image: `[batch, global batch]` local images against all texts.
        logits_per_text: `[batch, global batch]` local texts against all images.
        image_embeds, text_embeds: `[batch, fdt_dim]` L2-normalised FDT embeddings.
        image_fdt_weights, text_fdt_weights: `[batch, fdt_num_tokens]` codebook weights.
        logit_scale: the forward scale min(exp θ, max).
        fdt_temperature: the FDT temperature used.
        vision_model_output: the ViT output (attentions / hidden states with `output_attentions` /
            `output_hidden_states`).
        text_model_output: the text-tower output.
    """

    loss: torch.Tensor | None = None
    loss_itc: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_fdt_weights: torch.Tensor | None = None
    text_fdt_weights: torch.Tensor | None = None
    logit_scale: torch.Tensor | None = None
    fdt_temperature: torch.Tensor | None = None
    vision_model_output: BaseModelOutput | None = None
    text_model_output: BaseModelOutputWithPooling | None = None


@dataclass
class FdtFeaturesOutput(BaseModelOutputWithPooling):
    """
    Output of [`FdtModel.get_image_features`] / [`FdtModel.get_text_features`] (the transformers 5.x convention of
    CLIP/SigLIP: `pooler_output` is the embedding used for ranking).

    Args:
        pooler_output: `[batch, fdt_dim]` FDT embedding (FDT weights @ codebook), not normalised.
        last_hidden_state: the tower's token states the grounding read.
        fdt_weights: `[batch, fdt_num_tokens]` sparse weights over the codebook.
        hidden_states, attentions: the tower's, when asked for.
    """

    fdt_weights: torch.Tensor | None = None


@dataclass
class FdtGroundingOutput(ModelOutput):
    """What the FDT grounding computes for one modality (all in float32).

    Args:
        embeds: `[batch, fdt_dim]` weights @ codebook, not normalised.
        weights: `[batch, fdt_num_tokens]` normalised codebook weights.
        pooled_logits: `[batch, fdt_num_tokens]` pooled scores / T.
        queries: `[batch, tokens, fdt_dim]` query-MLP outputs.
    """

    embeds: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    pooled_logits: torch.Tensor | None = None
    queries: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------------------------------
# FDT grounding
# ---------------------------------------------------------------------------------------------------------------------


class FdtQueryMap(nn.Module):
    """Maps token features to FDT queries: LN → Linear → GELU (erf) → LN → Linear. The output has no final
    normalisation, so the query size (and with it the sparsity of the weights) is learned."""

    def __init__(self, input_dim: int, fdt_dim: int):
        super().__init__()
        self.ln_in = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, fdt_dim)
        self.act = nn.GELU()
        self.ln_mid = nn.LayerNorm(fdt_dim)
        self.fc2 = nn.Linear(fdt_dim, fdt_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.ln_mid(self.act(self.fc1(self.ln_in(features)))))


class FdtGrounding(nn.Module):
    """The shared FDT codebook and the per-modality query maps.

    For each sample: scores `s[t, k] = <q_t, c_k> / sqrt(d) / T`, pooled over tokens `t`, normalised over the codebook
    (sparsemax by default), and the weights average the raw codebook rows (no value projection). Runs in float32
    even under autocast: after T = 1000 the pooled scores are ~1e-3 apart and sparsemax's support test needs fp32.
    """

    def __init__(self, config: FdtConfig):
        super().__init__()
        self.config = config
        self.tokens = nn.Parameter(torch.empty(config.fdt_num_tokens, config.fdt_dim))
        self.image_query = FdtQueryMap(config.vision_config.hidden_size, config.fdt_dim)
        self.text_query = FdtQueryMap(config.text_config.hidden_size, config.fdt_dim)

    def forward(
        self,
        features: torch.Tensor,
        modality: str,
        temperature: float | torch.Tensor,
        validity: torch.Tensor | None = None,
    ) -> FdtGroundingOutput:
        """Ground `[batch, tokens, width]` features of `modality` ("image" or "text"). `validity` `[batch, tokens]`
        marks real text tokens (1) and padding (0)."""
        query_map = self.image_query if modality == "image" else self.text_query
        queries = query_map(features)
        device_type = queries.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            queries = queries.float()
            codebook = self.tokens.float()
            scores = queries @ codebook.t() / math.sqrt(self.config.fdt_dim)
            pooled = self._pool(scores, validity) / temperature
            weights = self._normalise(pooled, modality)
            embeds = weights @ codebook
        return FdtGroundingOutput(embeds=embeds, weights=weights, pooled_logits=pooled, queries=queries)

    def _pool(self, scores: torch.Tensor, validity: torch.Tensor | None) -> torch.Tensor:
        """Pool `[batch, tokens, K]` scores over tokens.

        Padding with `fdt_pad_fill="zero"` reproduces the official code, which pads every caption to the context
        length and multiplies padded scores by 0: max pooling is floored at 0 and mean pooling divides by the context
        length for every caption shorter than it. This is computed from the valid tokens and the caption length, so
        it does not depend on how far the batch was padded. `"neg_inf"` leaves padding out entirely.
        """
        pooling = self.config.fdt_pooling
        if validity is None:
            if pooling == "max":
                return scores.amax(dim=1)
            return scores.mean(dim=1) if pooling == "mean" else scores.sum(dim=1)
        valid = validity.to(torch.bool)[..., None]
        lengths = valid.sum(dim=1).to(scores.dtype)  # [batch, 1]
        zero_fill = self.config.fdt_pad_fill == "zero"
        context_length = self.config.text_config.max_position_embeddings
        if pooling == "max":
            pooled = scores.masked_fill(~valid, float("-inf")).amax(dim=1)
            if zero_fill:  # a zeroed padding row takes part in the max
                padded = lengths < context_length
                pooled = torch.where(padded, pooled.clamp(min=0), pooled)
            return pooled
        summed = (scores * valid).sum(dim=1)
        if pooling == "sum":
            return summed
        denominator = torch.full_like(lengths, context_length) if zero_fill else lengths.clamp(min=1)
        return summed / denominator

    def _normalise(self, pooled: torch.Tensor, modality: str) -> torch.Tensor:
        attention = self.config.fdt_attention
        if attention == "sparsemax":
            check_scores_finite(pooled, modality)
            return sparsemax(pooled, dim=-1)
        if attention == "softmax":
            return pooled.softmax(dim=-1)
        # sigmoid: the official code divides the weighted sum by the weight total; normalising the weights first is
        # the same embedding and keeps `weights @ codebook == embeds`.
        weights = pooled.sigmoid()
        return weights / weights.sum(dim=-1, keepdim=True)


def check_scores_finite(pooled: torch.Tensor, modality: str) -> None:
    """Raise a `FloatingPointError` when the pooled codebook scores that go into sparsemax are not finite (its
    support search has no answer for a row of NaNs). One host sync; skipped while compiling or exporting."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.isfinite(pooled).all():
        return
    inputs = "pixel values" if modality == "image" else "text embeddings"
    raise FloatingPointError(
        f"FDT's {modality} codebook scores are not finite ({int((~torch.isfinite(pooled)).sum())} NaN/inf of "
        f"{pooled.numel()}): the {modality} tower's features overflowed or are NaN. Check the {inputs} for NaN/inf or "
        "extreme values (the processor's output is in a small range), or, in training, lower the learning rate: "
        "diverged weights do the same."
    )


def l2_normalize(embeds: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """`x / (||x|| + eps)`, the official FDT normalisation."""
    return embeds / (embeds.norm(dim=-1, keepdim=True) + eps)


def text_validity(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, eos_token_id: int | None
) -> torch.Tensor:
    """Which text positions are real tokens: the attention mask when given, else every position up to and including
    the first end-of-text token (the official pad mask; SOT, BPE tokens and EOT are all valid)."""
    if attention_mask is not None:
        return attention_mask.to(torch.bool)
    if eos_token_id is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    is_eos = (input_ids == eos_token_id).to(torch.long)
    return (is_eos.cumsum(dim=1) - is_eos) == 0


# ---------------------------------------------------------------------------------------------------------------------
# Pretrained base and towers
# ---------------------------------------------------------------------------------------------------------------------

#: Auto classes a saved FDT folder answers to with `trust_remote_code=True`, whichever FDT class saved it
REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_fdt.FdtConfig",
    "AutoModel": "modeling_fdt.FdtModel",
    "AutoModelForPreTraining": "modeling_fdt.FdtForPreTraining",
    "AutoModelForZeroShotImageClassification": "modeling_fdt.FdtModel",
}


class FdtPreTrainedModel(WeightsCheckMixin, FrozenParametersMixin, RemoteCodeSaveMixin, PreTrainedModel):
    """Base of every FDT model: CLIP-style initialisation, attention backends, parameter groups, frozen modules,
    remote-code saving, and refusal of wrong or damaged weights (`WeightsCheckMixin`)."""

    config_class = FdtConfig
    base_model_prefix = "fdt"
    input_modalities = ("image", "text")
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPEncoderLayer", "CLIPTextEmbeddings", "CLIPVisionEmbeddings"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": CLIPEncoderLayer, "attentions": CLIPAttention}
    remote_code_auto_map = REMOTE_CODE_AUTO_MAP
    # The loss is a per-batch mean, so Trainer must scale it for gradient accumulation itself.
    accepts_loss_kwargs = False
    #: a dual encoder: retrieval ranks by embedding cosine only, there is no image-text matching head to re-rank with
    supports_itm_rerank = False

    def optimizer_parameter_groups(self, weight_decay: float) -> list[dict]:
        """The official AdamW parameter groups `[decay, no_decay]` (see `fdt_parameter_groups`)."""
        return fdt_parameter_groups(self, weight_decay)

    def _output_flags(self, output_attentions: bool | None, output_hidden_states: bool | None) -> dict[str, bool]:
        """`output_attentions` / `output_hidden_states` resolved against this model's config, to pass to the towers
        (whose own sub-configs do not see the top-level flags)."""
        return {
            "output_attentions": self.config.output_attentions if output_attentions is None else output_attentions,
            "output_hidden_states": (
                self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
            ),
        }

    def frozen_modules(self) -> list[nn.Module]:
        """What FDT keeps frozen (the official `VisualTransformer.train()` re-freezes the patch embedding): the patch
        embedding with `freeze_patch_embedding`, and the optional (never trained) global heads."""
        frozen = []
        for module in self.modules():
            if isinstance(module, FdtVisionModel) and module.config.freeze_patch_embedding:
                frozen.append(module.embeddings.patch_embedding)
            elif isinstance(module, FdtModel) and module.config.with_global_heads:
                frozen += [module.vision_post_layernorm, module.visual_projection, module.text_projection]
        return frozen

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        """transformers' per-module initialisation, without its shortcut for custom code: that shortcut takes a module
        whose own (non-recursive) parameters are all loaded as initialised, which a parameter-less container such as
        `CLIPAttention`, `CLIPMLP` or `FdtQueryMap` always is, so `_init_weights` never reached their Linears (a fresh
        model kept PyTorch's default init, weights a checkpoint lacked kept uninitialised memory). `_init_weights`
        only uses `transformers.initialization`, which leaves loaded tensors alone."""
        super()._initialize_weights(module, is_custom_code=False)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """OpenAI-CLIP initialisation, as the official FDT code uses it: class embedding and projections
        N(0, width^-0.5), positions N(0, 0.01), tokens N(0, 0.02), attention in-projections N(0, width^-0.5) with zero
        biases, out-projections and MLP outputs N(0, width^-0.5·(2L)^-0.5), MLP inputs N(0, (2·width)^-0.5); the patch
        convolution, query MLPs and MLP biases keep PyTorch's default (kaiming-uniform) init; the FDT codebook is
        N(0, 1); the logit-scale parameter is ln(1/0.07)."""
        factor = getattr(self.config, "initializer_factor", 1.0)
        if isinstance(module, CLIPVisionEmbeddings):
            init.normal_(module.class_embedding, std=module.embed_dim**-0.5 * factor)
            init.normal_(module.position_embedding.weight, std=0.01 * factor)
            _default_init(module.patch_embedding)
            init.copy_(module.position_ids, torch.arange(module.num_positions).expand((1, -1)))
        elif isinstance(module, CLIPTextEmbeddings):
            init.normal_(module.token_embedding.weight, std=0.02 * factor)
            init.normal_(module.position_embedding.weight, std=0.01 * factor)
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        elif isinstance(module, CLIPAttention):
            width, layers = module.embed_dim, module.config.num_hidden_layers
            for linear in (module.q_proj, module.k_proj, module.v_proj):
                init.normal_(linear.weight, std=width**-0.5 * factor)
                init.zeros_(linear.bias)
            init.normal_(module.out_proj.weight, std=width**-0.5 * (2 * layers) ** -0.5 * factor)
            init.zeros_(module.out_proj.bias)
        elif isinstance(module, CLIPMLP):
            width, layers = module.config.hidden_size, module.config.num_hidden_layers
            init.normal_(module.fc1.weight, std=(2 * width) ** -0.5 * factor)
            init.normal_(module.fc2.weight, std=width**-0.5 * (2 * layers) ** -0.5 * factor)
            _default_bias_init(module.fc1)
            _default_bias_init(module.fc2)
        elif isinstance(module, FdtQueryMap):
            _default_init(module.fc1)
            _default_init(module.fc2)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, FdtGrounding):
            init.normal_(module.tokens, std=1.0)
        if isinstance(module, FdtModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init)
            init.constant_(module.fdt_temperature, self.config.fdt_temperature)
            if self.config.with_global_heads:
                init.normal_(module.visual_projection.weight, std=self.config.vision_config.hidden_size**-0.5)
                init.normal_(module.text_projection.weight, std=self.config.text_config.hidden_size**-0.5)
                _default_bias_init(module.text_projection)


#: what the towers pass on to transformers' CLIP layers: output capture and attention-backend arguments
_TOWER_KWARGS = frozenset(TransformersKwargs.__annotations__) | frozenset(FlashAttentionKwargs.__annotations__)


def _refuse_unknown_arguments(model: nn.Module, kwargs: dict) -> None:
    unknown = sorted(set(kwargs) - _TOWER_KWARGS)
    if unknown:
        raise TypeError(f"{type(model).__name__}.forward got unexpected arguments {unknown}.")


def _default_init(module: nn.Linear | nn.Conv2d) -> None:
    """PyTorch's default Linear/Conv init (kaiming-uniform weight with a=sqrt(5), uniform bias)."""
    init.kaiming_uniform_(module.weight, a=math.sqrt(5))
    _default_bias_init(module)


def _default_bias_init(module: nn.Linear | nn.Conv2d) -> None:
    if module.bias is not None:
        fan_in = module.weight[0].numel()
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        init.uniform_(module.bias, -bound, bound)


class FdtVisionModel(FdtPreTrainedModel):
    """The ViT tower: class token + patches + positions → `ln_pre` → pre-LN blocks. `last_hidden_state` is the last
    block's output at every position (no final LayerNorm): FDT grounds the patch positions `[:, 1:]`."""

    config_class = FdtVisionConfig
    input_modalities = ("image",)
    base_model_prefix = "vision_model"

    def __init__(self, config: FdtVisionConfig):
        super().__init__(config)
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)
        self.post_init()
        self.apply_freezing()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embedding

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs) -> BaseModelOutput:
        _refuse_unknown_arguments(self, kwargs)
        check_pixel_values(pixel_values, self.config, interpolate_pos_encoding, square_grid=False)
        hidden_states = self.pre_layrnorm(self.embeddings(pixel_values, interpolate_pos_encoding))
        encoder_outputs = self.encoder(inputs_embeds=hidden_states, **kwargs)
        return BaseModelOutput(last_hidden_state=encoder_outputs.last_hidden_state)


class FdtTextModel(FdtPreTrainedModel):
    """The causal text transformer: tokens + positions → pre-LN blocks with a causal mask only → `ln_final` at every
    position. As in the official code the padding mask does not enter the attention (padding sits after the end of
    text, so causal attention never lets real tokens see it). `pooler_output` is the state at the end-of-text token
    (the largest id, as the official `argmax(ids)`), used only by the optional global head."""

    config_class = FdtTextConfig
    input_modalities = ("text",)
    main_input_name = "input_ids"
    base_model_prefix = "text_model"

    def __init__(self, config: FdtTextConfig):
        super().__init__(config)
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.token_embedding = value

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""`attention_mask` is accepted for API symmetry and ignored here (see the class docstring)."""
        _refuse_unknown_arguments(self, kwargs)
        if input_ids is None:
            raise ValueError("FdtTextModel needs input_ids.")
        check_text_inputs(input_ids, attention_mask, self.config.vocab_size, self.config.max_position_embeddings)
        hidden_states = self.embeddings(input_ids=input_ids, position_ids=position_ids)
        causal_mask = create_causal_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=None, cache=None
        )
        kwargs.pop("is_causal", None)
        encoder_outputs = self.encoder(
            inputs_embeds=hidden_states, attention_mask=causal_mask, is_causal=True, **kwargs
        )
        last_hidden_state = self.final_layer_norm(encoder_outputs.last_hidden_state)
        rows = torch.arange(last_hidden_state.shape[0], device=last_hidden_state.device)
        pooled_output = last_hidden_state[rows, input_ids.to(last_hidden_state.device).argmax(dim=-1)]
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled_output)


# ---------------------------------------------------------------------------------------------------------------------
# FdtModel
# ---------------------------------------------------------------------------------------------------------------------


def straight_through_clamp(value: torch.Tensor, max_value: float) -> torch.Tensor:
    """`min(value, max_value)` whose gradient is that of the unclamped value, as the official `.data` clamp of the
    exponentiated logit scale behaves."""
    return value.detach().clamp(max=max_value) + (value - value.detach())


class FdtModel(FdtPreTrainedModel):
    """FDT dual encoder: the two towers, the FDT grounding and the logit scale.

    `get_image_features` / `get_text_features` return the (unnormalised) FDT embeddings `[batch, fdt_dim]` that the
    contrastive loss, retrieval and zero-shot classification use, as the `pooler_output` of an `FdtFeaturesOutput`
    (transformers 5.x convention); `forward` returns CLIP-style scaled similarities
    of the normalised embeddings, so the zero-shot image classification pipeline works.

    The FDT temperature is a buffer (`fdt_temperature`), saved with the weights: the training schedule and the
    converter (from the checkpoint's step) set it, and `forward(..., fdt_temperature=T)` overrides it per call.
    """

    main_input_name = "input_ids"  # the first argument of `forward`, as CLIPModel's

    def __init__(self, config: FdtConfig):
        super().__init__(config)
        self.vision_model = FdtVisionModel._from_config(config.vision_config)
        self.text_model = FdtTextModel._from_config(config.text_config)
        self.grounding = FdtGrounding(config)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init))
        self.register_buffer("fdt_temperature", torch.tensor(float(config.fdt_temperature)))
        if config.with_global_heads:
            width_v, width_t = config.vision_config.hidden_size, config.text_config.hidden_size
            self.vision_post_layernorm = nn.LayerNorm(width_v, eps=config.vision_config.layer_norm_eps)
            self.visual_projection = nn.Linear(width_v, config.projection_dim, bias=False)
            self.text_projection = nn.Linear(width_t, config.projection_dim, bias=True)
        self.contrastive_loss = GatheredContrastiveLoss()
        self.post_init()
        self.apply_freezing()  # the global heads are never trained by FDT: kept frozen for checkpoint completeness

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_model.set_input_embeddings(value)

    def scale(self) -> torch.Tensor:
        """The forward logit scale min(exp θ, logit_scale_max), with a straight-through gradient."""
        return straight_through_clamp(self.logit_scale.exp(), self.config.logit_scale_max)

    def _temperature(self, fdt_temperature: float | torch.Tensor | None) -> float | torch.Tensor:
        return self.fdt_temperature if fdt_temperature is None else fdt_temperature

    def ground_image(
        self,
        pixel_values: torch.Tensor,
        fdt_temperature: float | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> tuple[FdtGroundingOutput, BaseModelOutput]:
        """FDT grounding of the patch tokens (the ViT output without CLS, before any final LayerNorm)."""
        vision_outputs = self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        patches = vision_outputs.last_hidden_state[:, 1:]
        return self.grounding(patches, "image", self._temperature(fdt_temperature)), vision_outputs

    def ground_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        fdt_temperature: float | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[FdtGroundingOutput, BaseModelOutputWithPooling]:
        """FDT grounding of every text position (after `ln_final`); padding handled per `config.fdt_pad_fill`."""
        text_outputs = self.text_model(
            input_ids, attention_mask, position_ids=position_ids, return_dict=True, **kwargs
        )
        validity = text_validity(input_ids, attention_mask, self.config.text_config.eos_token_id)
        grounded = self.grounding(text_outputs.last_hidden_state, "text", self._temperature(fdt_temperature), validity)
        return grounded, text_outputs

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        fdt_temperature: float | None = None,
        **kwargs,
    ) -> FdtFeaturesOutput:
        """FDT image embedding (`pooler_output`, not normalised), its codebook weights and the ViT states."""
        grounded, vision_outputs = self.ground_image(pixel_values, fdt_temperature, interpolate_pos_encoding, **kwargs)
        return self._features_output(grounded, vision_outputs)

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        fdt_temperature: float | None = None,
        **kwargs,
    ) -> FdtFeaturesOutput:
        """FDT text embedding (`pooler_output`, not normalised), its codebook weights and the text states."""
        grounded, text_outputs = self.ground_text(input_ids, attention_mask, fdt_temperature, **kwargs)
        return self._features_output(grounded, text_outputs)

    @staticmethod
    def _features_output(grounded: FdtGroundingOutput, tower_outputs: BaseModelOutput) -> FdtFeaturesOutput:
        return FdtFeaturesOutput(
            last_hidden_state=tower_outputs.last_hidden_state,
            pooler_output=grounded.embeds,
            hidden_states=tower_outputs.hidden_states,
            attentions=tower_outputs.attentions,
            fdt_weights=grounded.weights,
        )

    def get_global_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The untrained CLIP image head `ln_post(CLS) @ proj` (only with `with_global_heads`; not for use)."""
        self._require_global_heads()
        cls = self.vision_model(pixel_values).last_hidden_state[:, 0]
        return self.visual_projection(self.vision_post_layernorm(cls))

    def get_global_text_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The untrained CLIP text head `text_projection(ln_final(EOT))` (only with `with_global_heads`)."""
        self._require_global_heads()
        return self.text_projection(self.text_model(input_ids).pooler_output)

    def _require_global_heads(self) -> None:
        if not self.config.with_global_heads:
            raise ValueError("This FDT model has no global heads; build it with with_global_heads=True.")

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_loss: bool = False,
        fdt_temperature: float | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> FdtOutput:
        r"""
        Args:
            input_ids: `[texts, tokens]` token ids (the processor pads to the context length).
            pixel_values: `[images, 3, H, W]`.
            attention_mask: `[texts, tokens]` 1 for real tokens (SOT..EOT); derived from the first EOT when omitted.
            token_type_ids: accepted (the zero-shot pipeline passes tokenizer outputs) and ignored.
            return_loss: also compute the symmetric contrastive loss (pairs: row i of each batch).
            fdt_temperature: FDT temperature for this call (default: the model's `fdt_temperature` buffer).
        """
        if kwargs:
            raise TypeError(
                f"FdtModel.forward got unexpected arguments {sorted(kwargs)}. It takes input_ids, pixel_values, "
                "attention_mask, token_type_ids, position_ids, return_loss, fdt_temperature, interpolate_pos_encoding, "
                "output_attentions, output_hidden_states and return_dict."
            )
        if input_ids is None or pixel_values is None:
            raise ValueError(
                "FdtModel.forward needs both input_ids and pixel_values; use get_image_features / "
                "get_text_features to encode one modality."
            )
        capture = self._output_flags(output_attentions, output_hidden_states)
        image, vision_outputs = self.ground_image(pixel_values, fdt_temperature, interpolate_pos_encoding, **capture)
        text, text_outputs = self.ground_text(input_ids, attention_mask, fdt_temperature, position_ids, **capture)
        image_embeds, text_embeds = l2_normalize(image.embeds), l2_normalize(text.embeds)
        scale = self.scale()
        loss = None
        if return_loss:
            loss, _, _ = self.contrastive_loss(image_embeds, text_embeds, scale)
        return FdtOutput(
            loss=loss,
            logits_per_image=scale * image_embeds @ text_embeds.t(),
            logits_per_text=scale * text_embeds @ image_embeds.t(),
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            image_fdt_weights=image.weights,
            text_fdt_weights=text.weights,
            image_fdt_pooled_logits=image.pooled_logits,
            text_fdt_pooled_logits=text.pooled_logits,
            vision_model_output=vision_outputs,
            text_model_output=text_outputs,
        )


# ---------------------------------------------------------------------------------------------------------------------
# Pretraining
# ---------------------------------------------------------------------------------------------------------------------


class FdtForPreTraining(TrainingDutiesMixin, FdtPreTrainedModel):
    """FDT pretraining: symmetric InfoNCE of the FDT embeddings with negatives gathered from every process.

    Duties around each optimizer step: the logit-scale parameter is clamped into `logit_scale_param_range` before and
    after `optimizer.step()` (the official code clamps before backward and after the step; before the step is the
    same, since the gradient was computed with the unclamped value either way), and the FDT temperature follows
    `config.fdt_temperature_at(step)` with the step the trainer sets through `set_training_progress`.
    """

    loss_names = ("loss_itc",)

    def __init__(self, config: FdtConfig):
        super().__init__(config)
        self.fdt = FdtModel(config)
        self._last_support_size: torch.Tensor | None = None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.fdt.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.fdt.set_input_embeddings(value)

    def clamp_logit_scale(self) -> None:
        """Clamp the logit-scale parameter θ into `config.logit_scale_param_range` in place."""
        low, high = self.config.logit_scale_param_range
        with torch.no_grad():
            self.fdt.logit_scale.clamp_(low, high)

    def before_optimizer_step(self, step: int) -> None:
        self.clamp_logit_scale()

    def after_optimizer_step(self, step: int) -> None:
        self.clamp_logit_scale()
        super().after_optimizer_step(step)

    def scheduled_temperature(self) -> float | None:
        """The FDT temperature for the current training step, or None outside a trainer."""
        progress = self.training_progress()
        return None if progress is None else self.config.fdt_temperature_at(progress[0])

    def training_log_values(self) -> dict[str, float]:
        values = {
            "logit_scale": float(self.fdt.scale().detach()),
            "fdt_temperature": float(self.fdt.fdt_temperature),
        }
        if self._last_support_size is not None:
            values["fdt_support_size"] = float(self._last_support_size)
        return values

    def training_duties_description(self) -> str:
        low, high = self.config.logit_scale_param_range
        return f"clamping the logit-scale parameter into [{low}, {high}] around each optimizer step"

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        fdt_temperature: float | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> FdtForPreTrainingOutput:
        r"""
        Args:
            pixel_values: `[batch, 3, H, W]` images; `input_ids` `[batch, tokens]` their captions.
            attention_mask: `[batch, tokens]` 1 for real tokens.
            token_type_ids: accepted and ignored.
            fdt_temperature: override the temperature (default: the schedule in training, else the buffer).
            output_attentions, output_hidden_states: the towers' attention maps / states, in `vision_model_output`
                and `text_model_output`.
        """
        if kwargs:
            raise TypeError(f"FdtForPreTraining.forward got unexpected arguments {sorted(kwargs)}.")
        self.check_training_duties()
        check_pairs(pixel_values, input_ids)
        fdt = self.fdt
        if fdt_temperature is None and self.training:
            scheduled = self.scheduled_temperature()
            if scheduled is not None:
                fdt.fdt_temperature.fill_(scheduled)
        capture = self._output_flags(output_attentions, output_hidden_states)
        image, vision_outputs = fdt.ground_image(pixel_values, fdt_temperature, interpolate_pos_encoding, **capture)
        text, text_outputs = fdt.ground_text(input_ids, attention_mask, fdt_temperature, **capture)
        image_embeds, text_embeds = l2_normalize(image.embeds), l2_normalize(text.embeds)
        scale = fdt.scale()
        loss, logits_per_image, logits_per_text = fdt.contrastive_loss(image_embeds, text_embeds, scale)
        check_loss_finite({"loss_itc": loss})
        with torch.no_grad():  # kept as a tensor: read (one device sync) only when the trainer logs
            self._last_support_size = (
                torch.cat([(image.weights > 0).sum(-1), (text.weights > 0).sum(-1)]).float().mean()
            )
        temperature = fdt.fdt_temperature if fdt_temperature is None else torch.tensor(float(fdt_temperature))
        return FdtForPreTrainingOutput(
            loss=loss,
            loss_itc=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            image_fdt_weights=image.weights,
            text_fdt_weights=text.weights,
            logit_scale=scale.detach(),
            fdt_temperature=temperature,
            vision_model_output=vision_outputs,
            text_model_output=text_outputs,
        )


# ---------------------------------------------------------------------------------------------------------------------
# Optimisation and evaluation helpers
# ---------------------------------------------------------------------------------------------------------------------

_DECAYED_ATTENTION_BIASES = ("q_proj", "k_proj", "v_proj")


def fdt_parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The official AdamW groups: no weight decay on LayerNorm weights and biases, on every Linear/Conv bias and on
    the logit scale; decay on everything else — weights, embeddings, class/position embeddings, the FDT codebook,
    and the query/key/value biases (the official fused `in_proj_bias` is a raw parameter, not a Linear bias, so it is
    decayed; its split halves stay decayed). Frozen parameters are left out. Groups carry `names` for inspection."""
    decay: dict[str, nn.Parameter] = {}
    no_decay: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            full_name = f"{module_name}.{name}" if module_name else name
            child = module_name.rsplit(".", 1)[-1]
            if isinstance(module, nn.LayerNorm) or name == "logit_scale":
                no_decay[full_name] = parameter
            elif name == "bias" and child not in _DECAYED_ATTENTION_BIASES:
                no_decay[full_name] = parameter
            else:
                decay[full_name] = parameter
    return [
        {"params": list(decay.values()), "names": list(decay), "weight_decay": weight_decay},
        {"params": list(no_decay.values()), "names": list(no_decay), "weight_decay": 0.0},
    ]


__all__ = [
    "FdtForPreTraining",
    "FdtFeaturesOutput",
    "FdtForPreTrainingOutput",
    "FdtGrounding",
    "FdtGroundingOutput",
    "FdtModel",
    "FdtOutput",
    "FdtPreTrainedModel",
    "FdtQueryMap",
    "FdtTextModel",
    "FdtVisionModel",
    "fdt_parameter_groups",
    "l2_normalize",
    "text_validity",
]
