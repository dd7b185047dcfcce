"""SIMLA configuration: ALBEF's, with SIMLA's single-stream layout as defaults and the settings of its extra objectives.

SIMLA (Khan et al., ECCV 2022) runs one BERT with cross-attention in every layer three ways (text only, text→image,
masked image→text) and adds masked image modelling (MIM) and pseudo-labelled keyword prediction (PSL). Defaults
reproduce the official code (codezakh/SIMLA @ 44c700d), where most of these values are hard-coded.
"""

from typing import Literal

from huggingface_hub.dataclasses import strict

from .configuration_albef import AlbefConfig, AlbefTextConfig, AlbefVisionConfig


@strict
class SimlaVisionConfig(AlbefVisionConfig):
    r"""
    SIMLA's ViT: ALBEF's (see [`AlbefVisionConfig`]) with the learned `mask_token` on by default, as the official
    pretraining model builds it (`mask_token=True`); its retrieval configs turn it off (`vit_mask_token: false`).
    """

    model_type = "simla_vision_model"

    use_mask_token: bool = True


@strict
class SimlaTextConfig(AlbefTextConfig):
    r"""
    SIMLA's BERT (BLIP's "MED", see [`AlbefTextConfig`]): cross-attention in every layer (`fusion_layer=0`, the
    official `add_cross_attention: true`) and no token-type embeddings (`type_vocab_size=0`).
    """

    model_type = "simla_text_model"

    fusion_layer: int = 0
    type_vocab_size: int = 0


@strict
class SimlaConfig(AlbefConfig):
    r"""
    Configuration of a SIMLA model (Khan et al., "Single-Stream Multi-Level Alignment for Vision-Language
    Pretraining", ECCV 2022): an ALBEF (every [`AlbefConfig`] field keeps its meaning) whose BERT is a single stream of
    cross-attention layers, run from the token ids for text features, image-text matching and masked image modelling.

    Args:
        vision_config: a [`SimlaVisionConfig`] or its dict.
        text_config: a [`SimlaTextConfig`] or its dict; `fusion_layer` must be 0 (single stream).
        mim_vocab_size: size of the dVAE codebook whose token ids masked image modelling predicts (`mim_head`
            output); 8192, DALL-E's dVAE, hard-coded in the official code.
        psl_attention_layer: index of the BERT layer whose self-attention (CLS query row) picks the PSL keywords;
            `None` (default) means the last layer, the official hard-coded index 11 of the 12-layer stack.
        num_decoder_layers: layers of the VQA answer decoder, initialised from the last ones of the pretrained stack;
            `None` (default) means half the stack, the official hard-coded 6 of 12.
        psl_positions_per_head: key positions each attention head votes for (official, hard-coded: 4).
        psl_num_keywords: most-voted positions whose token ids become the PSL targets (official, hard-coded: 5).
        use_pretraining_heads: whether [`SimlaModel`] carries the pretraining-only heads `mim_head` and `concept_head`
            (PSL's keyword predictor). The fine-tuned retrieval model has neither, as in the official code.
        retrieval_queue_idx: whether retrieval fine-tuning stores the image ids of the queued features, so queue
            entries of the anchor's image count as positives (ALBEF's behaviour). Off by default: the official SIMLA
            retrieval model never writes its `idx_queue` (it stays -100, so queued captions of the same image are
            negatives).
        mlm_distill_axis: axis the student's log-softmax normalises in MLM distillation: `"sequence"` (the official
            default, `log_softmax(dim=1)` in SIMLA's `med.py`, an old ALBEF bug) or `"vocab"` (the fix).
        answer_distillation: whether VQA fine-tuning distils the answer decoder from its momentum copy with weight α,
            as ALBEF's does. Off by default: the official SIMLA VQA model runs the momentum encoders and decoder but
            never passes α to its decoder's loss, so the loss is the plain answer likelihood (the momentum copies still
            take their EMA steps).
        kwargs: the [`AlbefConfig`] fields.
    """

    model_type = "simla"
    method_title = "SIMLA (Khan et al., ECCV 2022): Single-Stream Multi-Level Alignment"
    method_paper = (
        "Khan et al., Single-Stream Multi-Level Alignment for Vision-Language Pretraining, ECCV 2022 "
        "(arXiv:2203.14395)"
    )
    hub_tags = ("simla", "albef")
    sub_configs_defaults = {"vision_config": SimlaVisionConfig, "text_config": SimlaTextConfig}

    mim_vocab_size: int = 8192
    psl_attention_layer: int | None = None
    psl_positions_per_head: int = 4
    psl_num_keywords: int = 5
    mlm_distill_axis: Literal["sequence", "vocab"] = "sequence"
    use_pretraining_heads: bool = True
    retrieval_queue_idx: bool = False
    answer_distillation: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        text, vision = self.text_config, self.vision_config
        if text.fusion_layer != 0:
            raise ValueError(
                f"text_config.fusion_layer={text.fusion_layer}: SIMLA's BERT has cross-attention in every layer, "
                "so fusion_layer must be 0."
            )
        # The MIM pass feeds ViT outputs into BERT's embedding layer and BERT embeddings into the cross-attention
        # keys, so the two widths must agree (spec §1.4); AlbefConfig already sets encoder_width to the ViT width.
        if vision.hidden_size != text.hidden_size:
            raise ValueError(
                f"vision_config.hidden_size={vision.hidden_size} must equal text_config.hidden_size="
                f"{text.hidden_size}: SIMLA's masked image modelling runs ViT outputs through the BERT layers."
            )
        if self.num_decoder_layers is None:
            self.num_decoder_layers = max(1, text.num_hidden_layers // 2)
        if self.psl_attention_layer is None:
            self.psl_attention_layer = text.num_hidden_layers - 1
        if not 0 <= self.psl_attention_layer < text.num_hidden_layers:
            raise ValueError(
                f"psl_attention_layer={self.psl_attention_layer} must lie in [0, num_hidden_layers="
                f"{text.num_hidden_layers})."
            )
        for name in ("mim_vocab_size", "psl_positions_per_head", "psl_num_keywords"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")

    def answer_decoder_first_layer(self) -> int:
        """The first of the stack's last `num_decoder_layers` layers: every SIMLA layer cross-attends, and the official
        VQA script starts the decoder from layer 6 of 12 as ALBEF's does."""
        return self.text_config.num_hidden_layers - self.answer_decoder_config().num_hidden_layers


__all__ = ["SimlaConfig", "SimlaTextConfig", "SimlaVisionConfig"]
