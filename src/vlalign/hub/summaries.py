"""Per-method rows of the model card's "Model configuration" table, chosen by the model's `model_type`."""

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


def codis_config_rows(model) -> list[tuple[str, str]]:
    """CODIS: ALBEF's rows plus the codebook, its optimal-transport assignment and the loss choices."""
    config = model.config
    code_loss = (
        f"{config.code_loss_type.replace('_', ' ')}, {config.code_loss_reduction} of both directions, weight "
        f"{config.code_loss_weight:g}"
        + (f" (ramped over {config.code_loss_warmup_steps} steps)" if config.code_loss_warmup_steps else "")
        if config.code_loss_weight > 0
        else "off"
    )
    ot_loss = (
        f"{config.ot_plan_source} plans, weight {config.ot_loss_weight:g}" if config.ot_loss_weight > 0 else "off"
    )
    intra = (
        f"+ i2i/t2t ({config.intra_modal_negatives} negatives, "
        f"{'soft' if config.intra_soft_targets else 'one-hot'} targets)"
        if config.align_intra_modal
        else "i2t/t2i only"
    )
    rows = albef_config_rows(model)
    return [
        *rows[:-1],
        (
            "Codebook",
            f"{config.codebook_size} prototypes × {config.embed_dim}-d, shared by image and text, "
            f"prototype temperature {config.prototype_temperature:g}; teacher scores against "
            + ("an EMA copy" if config.momentum_codebook else "the current codebook")
            + (f"; frozen for the first {config.freeze_codebook_steps} steps" if config.freeze_codebook_steps else ""),
        ),
        (
            "Optimal transport (training)",
            f"Sinkhorn-Knopp (log domain), ε {config.sinkhorn_epsilon:g}, {config.sinkhorn_iterations} iterations, "
            + (f"global batch + {config.sinkhorn_queue_rows} queued" if config.sinkhorn_use_queue else "global batch")
            + (", one plan for both modalities" if config.sinkhorn_joint else ", one plan per modality"),
        ),
        (
            "Teacher image view (training)",
            "a second augmentation" if config.teacher_image_view == "augmented" else "the student's images",
        ),
        ("Retrieval fine-tuning objective", f"{config.finetune_objective} losses + ITM"),
        ("Alignment loss (training)", f"i2t/t2i {intra}, {config.align_reduction}"),
        ("Code-alignment loss (training)", code_loss),
        ("OT loss (training)", ot_loss),
        rows[-1],
    ]


def simla_config_rows(model) -> list[tuple[str, str]]:
    """SIMLA: ALBEF's rows with the single-stream BERT, plus the XMM (MLM + MIM) and PSL settings."""
    config = model.config
    text = config.text_config
    rows = {name: (name, value) for name, value in albef_config_rows(model)}
    stream = (
        f"BERT, {_count(text.num_hidden_layers, 'layer')} with cross-attention in every layer, width "
        f"{text.hidden_size}, {_count(text.num_attention_heads, 'head')}, vocabulary {text.vocab_size}, no token "
        "types; run text-only for ITC, from the caption cross-attending to the image for ITM and MLM, and from the "
        "masked image tokens cross-attending to the caption embeddings for MIM"
    )
    psl = (
        f"top {config.psl_positions_per_head} positions per head of the CLS self-attention in layer "
        f"{config.psl_attention_layer + 1} (momentum model) vote; the {config.psl_num_keywords} most-voted caption "
        "tokens are the image's keyword targets over the word-piece vocabulary"
    )
    return [
        rows["Image encoder"],
        ("Single-stream text/fusion encoder", stream),
        rows["Contrastive (ITC) embedding"],
        rows["ITM re-ranking"],
        rows["Momentum distillation (training)"],
        (
            "Masked modelling (training)",
            f"MLM (distillation normalised over the {config.mlm_distill_axis} axis) and MIM over a "
            f"{config.mim_vocab_size}-code image tokenizer",
        ),
        ("Keyword prediction, PSL (training)", psl),
        rows["Caption format"],
        rows["Parameters in this repository"],
    ]


def fdt_config_rows(model) -> list[tuple[str, str]]:
    """FDT: ViT and causal text transformer, the FDT codebook and its grounding, the contrastive logit scale."""
    config = model.config
    vision, text = config.vision_config, config.text_config
    base = getattr(model, "base_model", model)
    scale = getattr(base, "logit_scale", None)
    scale_text = f"{scale.detach().float().exp().item():.4g}" if scale is not None else "–"
    decay = config.fdt_temperature_decay_weight
    schedule = (
        "constant"
        if decay == 1
        else f"× {decay:g} every {config.fdt_temperature_decay_every} steps, floor {config.fdt_temperature_min:g}"
    )
    image_row, image_text = _vit_row(vision)
    if vision.freeze_patch_embedding:
        image_text += ", frozen random patch embedding (as released)"
    return [
        (image_row, image_text),
        (
            "Text encoder",
            f"causal transformer: {_count(text.num_hidden_layers, 'layer')}, width {text.hidden_size}, "
            f"{_count(text.num_attention_heads, 'head')}, context {text.max_position_embeddings}, "
            f"vocabulary {text.vocab_size}",
        ),
        (
            "Finite discrete tokens",
            f"{config.fdt_num_tokens} tokens of size {config.fdt_dim}; {config.fdt_pooling} pooling over patches / "
            f"tokens, then {config.fdt_attention}; temperature {config.fdt_temperature:g} ({schedule}); padded text "
            f"positions {'scored 0 (official)' if config.fdt_pad_fill == 'zero' else 'left out'}",
        ),
        ("Contrastive logit scale", f"{scale_text} (learned; parameter clamped to {config.logit_scale_param_range})"),
        _parameter_row(model),
    ]


#: model_type -> the rows of its "Model configuration" table
CONFIG_ROWS = {
    "albef": albef_config_rows,
    "codis": codis_config_rows,
    "fdt": fdt_config_rows,
    "simla": simla_config_rows,
}


def config_rows(model) -> list[tuple[str, str]]:
    """(setting, value) rows describing `model`'s architecture and alignment settings, its method's own."""
    model_type = model.config.model_type
    if model_type not in CONFIG_ROWS:
        raise ValueError(f"No model-card configuration rows for model type {model_type!r}; add them to CONFIG_ROWS.")
    return CONFIG_ROWS[model_type](model)


__all__ = [
    "CONFIG_ROWS",
    "albef_config_rows",
    "codis_config_rows",
    "config_rows",
    "fdt_config_rows",
    "simla_config_rows",
]
