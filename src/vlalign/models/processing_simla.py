"""SIMLA preprocessing: ALBEF's (SIMLA keeps ALBEF's caption cleaning, "[CLS] text" tokens without [SEP], CLIP
normalisation and bicubic square resize; spec §2).

The classes exist so that a SIMLA folder names its own processor and loads through the Auto classes and
`trust_remote_code=True` like every other family. The masked-image-modelling inputs of pretraining (block masks and
image-tokenizer targets) come from the collator (`vlalign.data.masked_image`), not from this processor.
"""

from .processing_albef import AlbefImageProcessor, AlbefProcessor


class SimlaImageProcessor(AlbefImageProcessor):
    """ALBEF's image preprocessing (square bicubic resize, CLIP normalisation); see [`AlbefImageProcessor`]."""


class SimlaProcessor(AlbefProcessor):
    """ALBEF's processor (caption cleaning, length presets) for SIMLA; see [`AlbefProcessor`]."""


__all__ = ["SimlaImageProcessor", "SimlaProcessor"]
