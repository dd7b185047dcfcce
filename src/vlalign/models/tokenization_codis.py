"""CODIS's tokenizer: ALBEF's ("[CLS] text" without [SEP], captions cleaned like the official `pre_caption`)."""

from .tokenization_albef import AlbefTokenizer


class CodisTokenizer(AlbefTokenizer):
    """[`AlbefTokenizer`] under CODIS's name, so saved CODIS folders load their tokenizer with remote code."""


__all__ = ["CodisTokenizer"]
