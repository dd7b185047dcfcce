"""Per-method rows of the model card's "Model configuration" table. The method registry points at these."""

from __future__ import annotations


def _layer_range(first: int, last: int) -> str:
    """ "layers 1–6", "layer 3" or "(no layers)" for 1-based inclusive layer numbers."""
    if last < first:
        return "(no layers)"
    return f"layer {first}" if first == last else f"layers {first}–{last}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _vit_row(vision) -> tuple[str, str]:
    return (
        "Image encoder",
        f"ViT: {_count(vision.num_hidden_layers, 'layer')}, width {vision.hidden_size}, "
        f"{_count(vision.num_attention_heads, 'head')}, patch {vision.patch_size}, "
        f"{vision.image_size}×{vision.image_size} px",
    )


def _parameter_row(model) -> tuple[str, str]:
    return ("Parameters in this repository", f"{sum(p.numel() for p in model.parameters()):,}")


def albef_config_rows(model) -> list[tuple[str, str]]:
    """ALBEF: ViT, BERT split into text and fusion layers, ITC/ITM settings, momentum distillation."""
    config = model.config
    vision, text = config.vision_config, config.text_config
    base = getattr(model, "base_model", model)
    temp = getattr(base, "temp", None)
    if temp is not None:
        temp_text = f"{temp.detach().float().item():.4g} (learned; initial {config.temp:g})"
    else:
        temp_text = f"{config.temp:g}"
    return [
        _vit_row(vision),
        (
            "Text encoder",
            f"BERT {_layer_range(1, text.fusion_layer)}: width {text.hidden_size}, "
            f"{_count(text.num_attention_heads, 'head')}, vocabulary {text.vocab_size}",
        ),
        (
            "Fusion encoder",
            f"BERT {_layer_range(text.fusion_layer + 1, text.num_hidden_layers)}, cross-attending to the image tokens",
        ),
        ("Contrastive (ITC) embedding", f"{config.embed_dim}-d, temperature {temp_text}"),
        ("ITM re-ranking", f"top {config.k_test} candidates per query, score `{config.itm_score_mode}`"),
        (
            "Momentum distillation (training)",
            f"queue {config.queue_size}, momentum {config.momentum:g}, α {config.alpha:g}"
            + ("" if config.distill else " (distillation off)"),
        ),
        ("Caption format", "[CLS] text [SEP]" if config.add_sep_token else "[CLS] text (no [SEP], as ALBEF)"),
        _parameter_row(model),
    ]


__all__ = ["albef_config_rows"]
