"""SIMLA's tokenizer: ALBEF's ("[CLS] text" without [SEP], captions cleaned like the official `pre_caption`)."""

from .tokenization_albef import AlbefTokenizer


class SimlaTokenizer(AlbefTokenizer):
    """[`AlbefTokenizer`] under SIMLA's name, so saved SIMLA folders load their tokenizer with remote code."""


__all__ = ["SimlaTokenizer"]
