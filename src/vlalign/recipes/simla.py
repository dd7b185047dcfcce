"""Tiny SIMLA setup for the built-in synthetic dataset: ALBEF's tiny sizes as one single stream of cross-attention
layers, SIMLA's tokenizer and processor classes, and the masked-image-modelling inputs of pretraining with the
built-in image tokenizer (k-means codes fitted on the training images, no external weights)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch

from ..data.masked_image import MaskedImageModelingInputs, PatchCodebookImageTokenizer
from ..models import SimlaConfig, SimlaImageProcessor, SimlaProcessor, SimlaTokenizer
from .albef import albef_processor, build_tokenizer, tiny_albef_config

#: codes of the built-in image tokenizer the tiny model predicts (DALL-E's dVAE, which real SIMLA uses, has 8192)
TINY_MIM_VOCAB_SIZE = 256


def build_simla_tokenizer(captions: Iterable[str]) -> SimlaTokenizer:
    """A word-level `SimlaTokenizer` over the words of `captions` (see `recipes.albef.build_tokenizer`)."""
    return build_tokenizer(captions, tokenizer_class=SimlaTokenizer)


def tiny_simla_config(
    tokenizer: SimlaTokenizer,
    image_size: int = 64,
    text_layers: int = 3,
    vision_layers: int = 2,
    mim_vocab_size: int = TINY_MIM_VOCAB_SIZE,
    **overrides,
) -> SimlaConfig:
    """ALBEF's tiny config (`tiny_albef_config`: width 96, 64 px / patch 8, text init std 0.1, no dropout, embed 64,
    queue 256) as a `SimlaConfig`: a `vision_layers`-deep ViT, `text_layers` cross-attention layers shared by every
    pass (`fusion_layer=0`), enough BERT positions for MIM's image tokens (CLS + patches), and `mim_vocab_size`
    image-tokenizer codes.

    A SIMLA step runs the ViT four times (online, momentum, and both on the masked image for MIM) and the BERT stack
    on 65 image tokens twice, about 2× an ALBEF step of the same sizes, so the quick start's time goes further with a
    2-layer ViT. The stack keeps 3 layers: with 2, ITC learns too slowly for ITM's top-k to hold the right captions.
    Measured (lr 2e-3, R@1 text/image with ITM re-rank; ITC alone in brackets; 1-thread runs two at a time): ViT 2 +
    stack 3, 500 steps, seeds 0/1: 25.0/27.0 % (9.0/8.5 %), 19.0/22.5 % (5.0/10.5 %), 393 ms a step at 2 threads;
    ViT 2 + stack 2, 700 steps: 17.0/26.5 % (3.0/7.0 %), and 24.0/36.5 % and 11.0/13.0 % in two 2-thread runs,
    275 ms a step; ViT 4 + stack 2, 400-600 steps: 8.0-13.0/9.0-20.5 %.
    """
    patch_size = overrides.get("patch_size", 8)
    positions = max(64, 1 + (image_size // patch_size) ** 2)
    settings: dict[str, Any] = dict(
        text_layers=text_layers,
        vision_layers=vision_layers,
        fusion_layer=0,
        config_class=SimlaConfig,
        mim_vocab_size=mim_vocab_size,
    )
    settings.update(overrides)
    config = tiny_albef_config(tokenizer, image_size, **settings)
    config.text_config.max_position_embeddings = positions
    return config


def simla_processor(tokenizer: SimlaTokenizer, image_size: int) -> SimlaProcessor:
    """A `SimlaProcessor` at `image_size` (ALBEF's preprocessing, which SIMLA keeps)."""
    return albef_processor(tokenizer, image_size, SimlaProcessor, SimlaImageProcessor)


def simla_pretraining_inputs(
    config: SimlaConfig,
    processor: SimlaProcessor,
    train_dataset: Any,
    image_tokenizer: Any | None = None,
    image_column: str = "image",
    max_fit_images: int = 5000,
) -> dict[str, MaskedImageModelingInputs]:
    """`AlignmentCollator` arguments for SIMLA pretraining: MIM block masks and the image-tokenizer codes of the
    masked patches. `image_tokenizer` is e.g. a `DalleImageTokenizer` (the official DALL-E dVAE, converted); by
    default the built-in `PatchCodebookImageTokenizer` is fitted on the first `max_fit_images` training images (of a
    map-style dataset or a stream, e.g. `vlalign.data.streaming.ImageTextStream`) with
    `config.mim_vocab_size` codes, so no external weights are needed (a documented deviation from the official dVAE).
    """
    if image_tokenizer is None:
        vision = config.vision_config
        if isinstance(train_dataset, torch.utils.data.IterableDataset):  # a stream: its first images
            images = [row[image_column] for row in itertools.islice(train_dataset, max_fit_images)]
        else:
            images = train_dataset.select(range(min(max_fit_images, len(train_dataset))))[image_column]
        image_tokenizer = PatchCodebookImageTokenizer.fit(
            images, vision.image_size // vision.patch_size, config.mim_vocab_size
        )
    return {"masked_image_modeling": MaskedImageModelingInputs.for_config(config, image_tokenizer)}


__all__ = [
    "TINY_MIM_VOCAB_SIZE",
    "build_simla_tokenizer",
    "simla_pretraining_inputs",
    "simla_processor",
    "tiny_simla_config",
]
