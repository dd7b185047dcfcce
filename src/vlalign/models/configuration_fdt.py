"""FDT configuration: CLIP-style towers plus the Finite-Discrete-Token (FDT) grounding settings.

Defaults reproduce the released CLIP+FDT CC3M model (yuxiaochen1103/FDT): ViT-B/32 at 224 px, a 12-layer causal text
transformer over a 49409-token vocabulary (CLIP BPE plus `<|mask|>`), 16384 FDT of size 512, sparsemax over
max-pooled scores at temperature 1000. The official code's quirks are the defaults; switches give the fixed variants.
"""

import math
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

from .patch_grid import check_patch_grid
from .pipeline_retrieval import drop_remote_pipeline_when_registered

FDT_ATTENTIONS = ("sparsemax", "softmax", "sigmoid")
FDT_POOLINGS = ("max", "mean", "sum")
FDT_PAD_FILLS = ("zero", "neg_inf")


@strict
class FdtVisionConfig(PreTrainedConfig):
    r"""
    The ViT image tower of FDT (OpenAI-CLIP layout: bias-free patch convolution, class token, learned positions,
    `ln_pre`, pre-LN blocks with QuickGELU). FDT reads the last block's patch tokens, before any final LayerNorm.

    Args:
        hidden_size: transformer width (768 for ViT-B).
        intermediate_size: MLP width.
        num_hidden_layers: number of blocks.
        num_attention_heads: attention heads (width / 64 in the official builders).
        num_channels: input channels.
        image_size: input resolution.
        patch_size: side of the square patches.
        hidden_act: MLP activation (`quick_gelu`, x·σ(1.702x)).
        layer_norm_eps: LayerNorm epsilon.
        attention_dropout: dropout on attention probabilities (0 in FDT).
        freeze_patch_embedding: keep the patch convolution at its random init (`requires_grad=False`), as the
            official `VisualTransformer.train()` does (a MoCo-v3 trick).
        initializer_range: std of the positional embedding init (0.01 in OpenAI CLIP).
        initializer_factor: scale applied to every initialisation std.
    """

    model_type = "fdt_vision_model"
    base_config_key = "vision_config"

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    freeze_patch_embedding: bool = True
    initializer_range: float = 0.01
    initializer_factor: float = 1.0

    def validate_architecture(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}."
            )

    def validate_image_size(self):
        """Refuse a side the patch does not divide: the patch grid would crop every image."""
        check_patch_grid(self.image_size, self.patch_size)


@strict
class FdtTextConfig(PreTrainedConfig):
    r"""
    The causal text transformer of FDT (OpenAI-CLIP layout). Only the causal mask enters the attention; padding
    positions are handled by the FDT grounding, not the transformer. `ln_final` applies at every position.

    Args:
        vocab_size: 49409 = OpenAI CLIP's BPE vocabulary plus `<|mask|>` (id 49406) before the special tokens.
        hidden_size: transformer width.
        intermediate_size: MLP width.
        num_hidden_layers: number of blocks.
        num_attention_heads: attention heads.
        max_position_embeddings: context length (captions are always padded to it).
        hidden_act: MLP activation.
        layer_norm_eps: LayerNorm epsilon.
        attention_dropout: dropout on attention probabilities.
        pad_token_id: padding id (0, the `!` token, in the official tokenizer).
        bos_token_id: `<|startoftext|>` (49407).
        eos_token_id: `<|endoftext|>` (49408); the unused global head pools at its first occurrence.
        initializer_range: std of the token embedding init (0.02; positions use 0.01).
        initializer_factor: scale applied to every initialisation std.
    """

    model_type = "fdt_text_model"
    base_config_key = "text_config"

    vocab_size: int = 49409
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    pad_token_id: int | None = 0
    bos_token_id: int | None = 49407
    eos_token_id: int | None = 49408
    initializer_range: float = 0.02
    initializer_factor: float = 1.0

    def validate_architecture(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}."
            )


@strict
class FdtConfig(PreTrainedConfig):
    r"""
    Configuration of a CLIP+FDT model (Chen et al., "Revisiting Multimodal Representation in Contrastive Learning:
    From Patch and Token Embeddings to Finite Discrete Tokens", CVPR 2023).

    Each modality's token features are mapped by a query MLP, scored against a shared codebook of FDT
    (`scores / sqrt(fdt_dim) / T`), pooled over tokens, normalised over the codebook (sparsemax), and the resulting
    weights average the FDT rows into the embedding that enters the contrastive loss.

    Args:
        vision_config: an `FdtVisionConfig` or its dict.
        text_config: an `FdtTextConfig` or its dict.
        fdt_num_tokens: codebook size K.
        fdt_dim: FDT (and embedding) size d.
        fdt_attention: normalisation over the codebook: `"sparsemax"` (released), `"softmax"`, or `"sigmoid"` (the
            weighted sum is then divided by the weight total).
        fdt_pooling: pooling of the per-token scores: `"max"` (released), `"mean"` or `"sum"`.
        fdt_temperature: initial temperature T (1000 in the release).
        fdt_temperature_decay_weight: T is multiplied by this every `fdt_temperature_decay_every` steps (1.0 in the
            release: T stays constant).
        fdt_temperature_decay_every: steps between temperature decays.
        fdt_temperature_min: lower bound of the decayed temperature.
        fdt_pad_fill: score of padded text positions before pooling: `"zero"` (official: scores are multiplied by the
            0/1 validity, so with max pooling a padded caption's pooled scores are floored at 0) or `"neg_inf"`
            (fixed: padded positions never win the max and are left out of mean/sum pooling).
        logit_scale_init: initial logit-scale parameter θ (ln(1/0.07)); the forward scale is min(exp θ, max).
        logit_scale_param_range: the parameter θ is clamped into this range before and after every optimizer step.
        logit_scale_max: cap of the forward scale exp θ (the cap passes gradients straight through, as the official
            `.data` clamp does).
        with_global_heads: keep the CLIP heads the official model builds but never trains (image `ln_post` + `proj`,
            text `text_projection` with bias) as frozen parameters, so a conversion keeps every tensor. They do not
            affect the FDT embeddings. Off by default.
        projection_dim: output size of the global heads (only with `with_global_heads`).
        initializer_factor: scale applied to every initialisation std.
    """

    model_type = "fdt"
    #: what model cards and help texts call the method, its citation and its extra Hub tags
    method_title = "FDT (Chen et al., CVPR 2023): CLIP with Finite Discrete Tokens"
    method_paper = (
        "Chen et al., Revisiting Multimodal Representation in Contrastive Learning: From Patch and Token "
        "Embeddings to Finite Discrete Tokens, CVPR 2023 (arXiv:2303.14865)"
    )
    hub_tags = ("fdt", "clip")
    sub_configs_defaults = {"vision_config": FdtVisionConfig, "text_config": FdtTextConfig}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    fdt_num_tokens: int = 16384
    fdt_dim: int = 512
    fdt_attention: Literal["sparsemax", "softmax", "sigmoid"] = "sparsemax"
    fdt_pooling: Literal["max", "mean", "sum"] = "max"
    fdt_temperature: float = 1000.0
    fdt_temperature_decay_weight: float = 1.0
    fdt_temperature_decay_every: int = 2700
    fdt_temperature_min: float = 0.01
    fdt_pad_fill: Literal["zero", "neg_inf"] = "zero"
    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_param_range: tuple[float, float] | list[float] = (3.0, 6.0)
    logit_scale_max: float = 100.0
    with_global_heads: bool = False
    projection_dim: int = 512
    initializer_factor: float = 1.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        drop_remote_pipeline_when_registered(self)
        for name, value, allowed in (
            ("fdt_attention", self.fdt_attention, FDT_ATTENTIONS),
            ("fdt_pooling", self.fdt_pooling, FDT_POOLINGS),
            ("fdt_pad_fill", self.fdt_pad_fill, FDT_PAD_FILLS),
        ):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {allowed}.")
        low, high = self.logit_scale_param_range
        if not low <= high:
            raise ValueError(
                f"logit_scale_param_range={self.logit_scale_param_range} must be (low, high), low <= high."
            )
        self.logit_scale_param_range = (float(low), float(high))
        if self.fdt_temperature <= 0 or self.fdt_temperature_min <= 0:
            raise ValueError("fdt_temperature and fdt_temperature_min must be positive.")
        if self.fdt_temperature_decay_every < 1:
            raise ValueError(f"fdt_temperature_decay_every must be >= 1, got {self.fdt_temperature_decay_every}.")

    def fdt_temperature_at(self, step: int, stepwise: bool = True) -> float:
        """The FDT temperature after `step` optimizer steps: `max(T0 * w ** (step // every), T_min)`.

        The official trainer updates T only at multiples of `decay_every` (so the exponent is `step // every`); its
        evaluators recompute T from the checkpoint's `last_iter` with a fractional exponent `step / every`
        (`stepwise=False`). With the released decay weight 1 both give T0.
        """
        exponent = step // self.fdt_temperature_decay_every if stepwise else step / self.fdt_temperature_decay_every
        temperature = self.fdt_temperature * self.fdt_temperature_decay_weight**exponent
        return max(temperature, self.fdt_temperature_min)


__all__ = ["FdtConfig", "FdtTextConfig", "FdtVisionConfig"]
