"""ALBEF configuration: a ViT image tower, a BERT split into text and fusion layers, and the alignment settings.

Defaults reproduce the paper's model: ViT-B/16 at 256 px and BERT-base with cross-attention from layer 6 on.
"""

import copy
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

from .patch_grid import check_patch_grid
from .pipeline_retrieval import drop_remote_pipeline_when_registered

ITM_SCORE_MODES = ("itm_logit", "itm_plus_itc", "itc_only")


@strict
class AlbefVisionConfig(PreTrainedConfig):
    r"""
    The ViT image encoder of ALBEF (timm/DeiT layout: pre-LN blocks, learned CLS token and absolute position
    embeddings, a final LayerNorm, no pooler).

    Args:
        hidden_size: width of the transformer (768 for ViT-B).
        num_hidden_layers: number of transformer blocks.
        num_attention_heads: attention heads per block.
        intermediate_size: MLP width (4 × hidden_size in ALBEF).
        image_size: input resolution; position embeddings are interpolated when loading at another size.
        patch_size: side of the square patches.
        num_channels: input channels.
        hidden_act: MLP activation (exact erf GELU in ALBEF).
        layer_norm_eps: LayerNorm epsilon (1e-6 in ALBEF's ViT, not BERT's 1e-12).
        qkv_bias: whether the query/key/value projections have biases.
        attention_dropout: dropout on attention probabilities.
        hidden_dropout: dropout after attention and MLP outputs.
        initializer_range: std of the truncated-normal initialisation.
        use_mask_token: give the patch embeddings a learned `mask_token` that replaces masked patches (SIMLA's masked
            image modelling); off in ALBEF, whose checkpoints have no such weight.
    """

    model_type = "albef_vision_model"
    base_config_key = "vision_config"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    image_size: int = 256
    patch_size: int = 16
    num_channels: int = 3
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    initializer_range: float = 0.02
    use_mask_token: bool = False

    def validate_image_size(self):
        """Refuse a side the patch does not divide: the patch grid would crop every image."""
        check_patch_grid(self.image_size, self.patch_size)


@strict
class AlbefTextConfig(PreTrainedConfig):
    r"""
    The BERT text encoder of ALBEF. Layers `[0, fusion_layer)` encode text alone; layers
    `[fusion_layer, num_hidden_layers)` form the multimodal (fusion) encoder, each with a cross-attention block
    attending to the image tokens.

    Args:
        vocab_size: word-piece vocabulary size (30522 for bert-base-uncased).
        hidden_size: width of the transformer.
        num_hidden_layers: total BERT layers (text + fusion).
        fusion_layer: index of the first layer with cross-attention.
        num_attention_heads: attention heads per layer.
        intermediate_size: feed-forward width.
        hidden_act: feed-forward activation.
        hidden_dropout_prob: dropout on embeddings and sub-block outputs.
        attention_probs_dropout_prob: dropout on attention probabilities.
        max_position_embeddings: longest supported token sequence.
        type_vocab_size: number of token types (ALBEF always uses type 0); 0 builds no token-type embeddings, as in
            SIMLA's BERT (word + position embeddings only).
        layer_norm_eps: LayerNorm epsilon.
        pad_token_id: id of [PAD] (never masked, ignored by attention).
        cls_token_id: id of [CLS] (never masked).
        mask_token_id: id of [MASK] used by MLM.
        sep_token_id: id of [SEP], which ends every answer of the VQA answer decoder.
        encoder_width: width of the image tokens the cross-attention reads (the ViT width).
        initializer_range: std of the normal initialisation.
    """

    model_type = "albef_text_model"
    base_config_key = "text_config"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    fusion_layer: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    cls_token_id: int = 101
    mask_token_id: int = 103
    sep_token_id: int = 102
    encoder_width: int = 768
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.type_vocab_size < 0:
            raise ValueError(
                f"type_vocab_size must be >= 0 (0: no token-type embeddings), got {self.type_vocab_size}."
            )
        if not 0 <= self.fusion_layer <= self.num_hidden_layers:
            raise ValueError(
                f"fusion_layer={self.fusion_layer} must lie in [0, num_hidden_layers={self.num_hidden_layers}]."
            )
        super().__post_init__(**kwargs)


@strict
class AlbefConfig(PreTrainedConfig):
    r"""
    Configuration of an ALBEF model (Li et al., "Align before Fuse", NeurIPS 2021).

    Args:
        vision_config: an `AlbefVisionConfig` or its dict.
        text_config: an `AlbefTextConfig` or its dict. Its `encoder_width` is set to the vision width.
        embed_dim: size of the projected embeddings used for image-text contrast (ITC).
        temp: initial value of the learnable ITC temperature.
        temp_min: lower clamp of the temperature (applied at every pretraining forward, as the official code does).
        temp_max: upper clamp of the temperature.
        queue_size: length of the momentum feature queues.
        momentum: EMA coefficient of the momentum encoders.
        alpha: weight of the momentum-distillation targets once warmed up.
        alpha_warmup_epochs: epochs over which the Trainer ramps alpha linearly from 0 (per step).
        distill: whether momentum distillation is used (the retrieval fine-tuning switch of the official configs).
        mlm_probability: fraction of text tokens selected for masked language modelling.
        k_test: candidates re-ranked per query: by ITM in retrieval evaluation (256 for COCO, 128 for Flickr30K), by
            the full answer likelihood in VQA answer ranking (128 in the official VQA.yaml).
        itm_score_mode: how re-ranked candidates are scored: `"itm_logit"` (ALBEF: the raw match logit),
            `"itm_plus_itc"` (BLIP/LAVIS: match logit plus ITC cosine) or `"itc_only"` (no re-rank).
        itc_global_negatives: contrast each process's features with the momentum features of the whole global batch
            (gathered from every process) instead of its local batch only (the official code). Makes ITC independent
            of how the global batch is split across processes.
        add_sep_token: whether captions end with [SEP]; the released ALBEF checkpoints were trained without it.
        initializer_factor: scale applied to all initialisations (1.0 as in the paper).
        num_decoder_layers: layers of the VQA answer decoder (a BERT LM with cross-attention to the question in every
            layer); default the number of fusion layers (6 for BERT-base), which the official VQA initialisation fills
            from the pretrained fusion layers.
    """

    model_type = "albef"
    #: what model cards and help texts call the method, its citation and its extra Hub tags
    method_title = "ALBEF (Li et al., NeurIPS 2021): Align before Fuse"
    method_paper = (
        "Li et al., Align before Fuse: Vision and Language Representation Learning with Momentum Distillation, "
        "NeurIPS 2021 (arXiv:2107.07651)"
    )
    hub_tags = ("albef",)
    sub_configs_defaults = {"vision_config": AlbefVisionConfig, "text_config": AlbefTextConfig}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    embed_dim: int = 256
    temp: float = 0.07
    temp_min: float = 0.001
    temp_max: float = 0.5
    queue_size: int = 65536
    momentum: float = 0.995
    alpha: float = 0.4
    alpha_warmup_epochs: float = 1.0
    distill: bool = True
    mlm_probability: float = 0.15
    k_test: int = 256
    itm_score_mode: Literal["itm_logit", "itm_plus_itc", "itc_only"] = "itm_logit"
    itc_global_negatives: bool = False
    add_sep_token: bool = False
    initializer_factor: float = 1.0
    num_decoder_layers: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        drop_remote_pipeline_when_registered(self)
        if self.itm_score_mode not in ITM_SCORE_MODES:
            raise ValueError(f"itm_score_mode={self.itm_score_mode!r} is not one of {ITM_SCORE_MODES}.")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be positive, got {self.queue_size}.")
        if self.num_decoder_layers is not None and self.num_decoder_layers < 1:
            raise ValueError(
                f"num_decoder_layers must be positive (or None: one per fusion layer), got {self.num_decoder_layers}."
            )
        # The cross-attention reads the image tokens, so its input width is the ViT width by construction.
        self.text_config.encoder_width = self.vision_config.hidden_size

    def answer_decoder_config(self) -> AlbefTextConfig:
        """The text config of the VQA answer decoder: the text config with cross-attention in every one of its
        `num_decoder_layers` layers (`fusion_layer=0`), reading the question states (text width)."""
        text = self.text_config
        num_layers = self.num_decoder_layers or text.num_hidden_layers - text.fusion_layer
        decoder = copy.deepcopy(text)
        decoder.num_hidden_layers, decoder.fusion_layer, decoder.encoder_width = num_layers, 0, text.hidden_size
        return decoder

    def answer_decoder_first_layer(self) -> int:
        """The BERT layer the VQA answer decoder's first layer is initialised from (decoder layer i from layer
        first + i): the first fusion layer, as the official VQA script does (layer 6 of BERT-base)."""
        return self.text_config.fusion_layer


__all__ = ["AlbefConfig", "AlbefTextConfig", "AlbefVisionConfig"]
