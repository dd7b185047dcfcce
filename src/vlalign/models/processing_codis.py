"""CODIS preprocessing: ALBEF's, unchanged (CODIS trains on ALBEF's data pipeline and evaluates with its protocol).

The classes exist so that a CODIS folder names its own processor and loads through the Auto classes and
`trust_remote_code=True` like every other family.
"""

from .processing_albef import AlbefImageProcessor, AlbefProcessor


class CodisImageProcessor(AlbefImageProcessor):
    """ALBEF's image preprocessing (square bicubic resize, CLIP normalisation); see [`AlbefImageProcessor`]."""


class CodisProcessor(AlbefProcessor):
    """ALBEF's processor (caption cleaning, length presets) for CODIS; see [`AlbefProcessor`]."""


__all__ = ["CodisImageProcessor", "CodisProcessor"]
