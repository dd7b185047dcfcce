"""Tiny CODIS setup for the built-in synthetic dataset: ALBEF's tiny model (`recipes.albef`) plus a codebook sized
for the data, with CODIS's own tokenizer and processor classes."""

from __future__ import annotations

from collections.abc import Iterable

from ..models import CodisConfig, CodisImageProcessor, CodisProcessor, CodisTokenizer
from .albef import albef_processor, build_tokenizer, tiny_albef_config


def build_codis_tokenizer(captions: Iterable[str]) -> CodisTokenizer:
    """A word-level `CodisTokenizer` over the words of `captions` (see `recipes.albef.build_tokenizer`)."""
    return build_tokenizer(captions, tokenizer_class=CodisTokenizer)


def tiny_codis_config(
    tokenizer: CodisTokenizer, image_size: int = 64, codebook_size: int = 128, **overrides
) -> CodisConfig:
    """ALBEF's tiny config (`tiny_albef_config`, same sizes) as a `CodisConfig` with `codebook_size` prototypes.

    128 prototypes: more than a batch of 32 (Sinkhorn's equal partition needs K above the batch to stay a clustering,
    not a matching) and about as many as the synthetic data's colour × shape × position combinations.
    """
    return tiny_albef_config(tokenizer, image_size, config_class=CodisConfig, codebook_size=codebook_size, **overrides)


def codis_processor(tokenizer: CodisTokenizer, image_size: int) -> CodisProcessor:
    """A `CodisProcessor` at `image_size` (ALBEF's preprocessing)."""
    return albef_processor(tokenizer, image_size, CodisProcessor, CodisImageProcessor)


__all__ = ["build_codis_tokenizer", "codis_processor", "tiny_codis_config"]
