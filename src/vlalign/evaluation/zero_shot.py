"""Zero-shot image classification with prompt templates, for every method: each class is the average of its
prompts' normalised text embeddings (the CLIP / FDT evaluator recipe), images are ranked against the classes by
cosine. transformers' `zero-shot-image-classification` pipeline covers the one-template case; this is the
prompt-ensemble protocol benchmarks report.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: normalisation epsilon of the official FDT evaluator (`x / (||x|| + 1e-10)`); negligible for other methods
NORM_EPS = 1e-10


def _normalize(embeds: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    return embeds / (embeds.norm(dim=-1, keepdim=True) + eps)


def fill_templates(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Class-major prompts (all templates of class 0 first); `{}` or `{0}` marks the class name."""
    return [
        template.strip().replace("{0}", name).replace("{}", name) for name in class_names for template in templates
    ]


@torch.no_grad()
def zero_shot_class_embeddings(
    model,
    text_inputs,
    class_names: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
    return_token_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Class embeddings `[classes, dim]`: the text embeddings of every prompt of a class, each normalised
    (`/(||x|| + 1e-10)`), averaged, and the mean re-normalised (`/||x||`), as the official FDT evaluator builds them.

    Args:
        model: any vlalign model (`<Method>Model`, or a training model holding one as `base_model`).
        text_inputs: the method's processor or tokenizer (called on the prompts), or precomputed token ids: a tensor
            `[classes * templates, tokens]` or a dict with `input_ids` (and `attention_mask`), class-major.
        class_names, templates: see `fill_templates`.
        return_token_weights: also return the FDT "attention view" class vectors `[classes, fdt_num_tokens]` (codebook
            weights normalised, averaged, re-normalised), which FDT's evaluator computes but does not report. Only for
            models whose text features carry `fdt_weights`.
    """
    encoder = model.base_model
    prompts = fill_templates(class_names, templates)
    if isinstance(text_inputs, torch.Tensor):
        encoded = {"input_ids": text_inputs}
    elif callable(text_inputs):
        encoded = text_inputs(text=prompts, return_tensors="pt")
    else:
        encoded = dict(text_inputs)
    input_ids, attention_mask = encoded["input_ids"], encoded.get("attention_mask")
    if input_ids.shape[0] != len(prompts):
        raise ValueError(f"Got {input_ids.shape[0]} token rows for {len(prompts)} prompts (classes × templates).")
    embeds, weights = [], []
    for start in range(0, len(prompts), batch_size):
        rows = slice(start, start + batch_size)
        mask = None if attention_mask is None else attention_mask[rows].to(encoder.device)
        output = encoder.get_text_features(input_ids=input_ids[rows].to(encoder.device), attention_mask=mask)
        embeds.append(_normalize(output.pooler_output))
        if return_token_weights:
            if getattr(output, "fdt_weights", None) is None:
                raise ValueError(f"{type(encoder).__name__} has no codebook weights; use return_token_weights=False.")
            weights.append(_normalize(output.fdt_weights))
    shape = (len(class_names), len(templates), -1)
    class_embeds = torch.cat(embeds).view(shape).mean(dim=1)
    class_embeds = class_embeds / class_embeds.norm(dim=-1, keepdim=True)
    if not return_token_weights:
        return class_embeds
    return class_embeds, _normalize(torch.cat(weights).view(shape).mean(dim=1))


@torch.no_grad()
def zero_shot_classify(
    model, processor, images, class_names: Sequence[str], templates: Sequence[str] = ("a photo of a {}.",)
) -> dict[str, torch.Tensor]:
    """Cosine `scores` `[images, classes]` of `images` against the prompt-ensemble class embeddings, and the top-1
    `preds` (what zero-shot accuracy counts)."""
    encoder = model.base_model
    class_embeds = zero_shot_class_embeddings(encoder, processor, class_names, templates)
    pixel_values = processor(images=images)["pixel_values"].to(encoder.device)
    image_embeds = _normalize(encoder.get_image_features(pixel_values=pixel_values).pooler_output)
    scores = image_embeds @ class_embeds.t()
    return {"scores": scores, "preds": scores.argmax(dim=-1)}


__all__ = ["fill_templates", "zero_shot_class_embeddings", "zero_shot_classify"]
