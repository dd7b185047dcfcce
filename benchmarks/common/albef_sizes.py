"""The ALBEF model sizes the benchmarks share (`performance/rerank.py`, `performance/train_step.py`,
`against_official/vs_official.py`, `against_official/eval_vs_official.py`), and their configs with random weights:
nothing is downloaded, and a benchmark's cost depends on shapes alone."""

from __future__ import annotations

from dataclasses import dataclass

VOCAB_SIZE = 30522  # bert-base-uncased's
TEXT_TOKENS = 30  # ALBEF's max_words (COCO captions padded to the longest: ~15-30 tokens)


@dataclass(frozen=True)
class AlbefSize:
    vision_width: int
    vision_depth: int
    vision_heads: int
    text_width: int
    text_layers: int
    text_heads: int
    fusion_layer: int


SIZES = {
    "tiny": AlbefSize(192, 4, 3, 256, 4, 4, 2),  # for quick loss curves
    "small": AlbefSize(384, 12, 6, 512, 8, 8, 4),  # ViT-S/16, a BERT-medium-like text tower
    "base": AlbefSize(768, 12, 12, 768, 12, 12, 6),  # ALBEF: ViT-B/16, BERT-base
}


def albef_config(size: str, image_size: int, **overrides):
    """An `AlbefConfig` of the named size at `image_size` (16-px patches, 4x-wide MLPs, BERT's vocabulary)."""
    from vlalign.models import AlbefConfig  # here: the official code's workers import this module without vlalign

    shape = SIZES[size]
    return AlbefConfig(
        vision_config=dict(
            hidden_size=shape.vision_width,
            num_hidden_layers=shape.vision_depth,
            num_attention_heads=shape.vision_heads,
            intermediate_size=4 * shape.vision_width,
            image_size=image_size,
        ),
        text_config=dict(
            vocab_size=VOCAB_SIZE,
            hidden_size=shape.text_width,
            num_hidden_layers=shape.text_layers,
            num_attention_heads=shape.text_heads,
            intermediate_size=4 * shape.text_width,
            fusion_layer=shape.fusion_layer,
        ),
        **overrides,
    )


def official_bert_config(size: str, vocab_size: int = VOCAB_SIZE) -> dict:
    """The official `config_bert.json` of the named size (`fusion_layer` and `encoder_width` are ALBEF's additions)."""
    shape = SIZES[size]
    return {
        "architectures": ["BertForMaskedLM"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": shape.text_width,
        "initializer_range": 0.02,
        "intermediate_size": 4 * shape.text_width,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": shape.text_heads,
        "num_hidden_layers": shape.text_layers,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": vocab_size,
        "fusion_layer": shape.fusion_layer,
        "encoder_width": shape.vision_width,
    }


def official_vision(size: str) -> dict:
    """The ViT shape the official constructors are patched to (`official_albef.size_official_model`)."""
    shape = SIZES[size]
    return {"width": shape.vision_width, "depth": shape.vision_depth, "heads": shape.vision_heads}
