"""FDT's tokenizer: OpenAI CLIP byte-level BPE with FDT's vocabulary layout.

FDT (inherited from DeCLIP) appends a `<|mask|>` token *before* the two special tokens, so against OpenAI/HF CLIP
every BPE id is the same but `<|mask|>` = 49406, `<|startoftext|>` = 49407, `<|endoftext|>` = 49408 (49409 ids).
Sequences are `[SOT] + bpe + [EOT]`; longer ones keep SOT, the first `context_length - 2` BPE tokens and EOT; all are
padded with id 0 (the byte token `!`) to exactly `context_length` (`model_max_length`, 77 by default).

Text cleaning follows the official tokenizer: `ftfy.fix_text`, HTML-unescape twice, strip, collapse whitespace,
lower-case. `ftfy` is optional here (the file may run as remote code): without it a small stand-in does NFC plus the
commonest ftfy fixes (curly quotes, Latin ligatures, full-width ASCII, control characters) and ids can differ on
mojibake or rarer characters — install `ftfy` for exact parity.

Padding uses id 0 without registering `!` as a special token (that would split `!!` out of captions); `pad_token` is
therefore a read-only property. `<|mask|>` is an ordinary vocabulary entry, not an added token, because the official
tokenizer does not recognise a literal `<|mask|>` in text.
"""

from __future__ import annotations

import gzip
import html
import re
import unicodedata
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers.tokenization_utils_tokenizers import TokenizersBackend
from transformers.utils import logging

try:
    import ftfy
except ImportError:  # pragma: no cover - exercised only where ftfy is missing
    ftfy = None

logger = logging.get_logger(__name__)

MASK_TOKEN = "<|mask|>"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
#: id of the padding token (`!`, the first byte token), as in the official code
PAD_TOKEN_ID = 0
#: merges of `bpe_simple_vocab_16e6.txt.gz` the official tokenizer reads (lines 1 … 48894 after the header)
NUM_CLIP_MERGES = 49152 - 256 - 2

_SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'ſ|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_WHITESPACE = re.compile(r"\s+")
_SINGLE_QUOTES = re.compile("[\u02bc\u2018-\u201b]")
_DOUBLE_QUOTES = re.compile("[\u201c-\u201f]")
_LIGATURES = re.compile("[\u0132\u0133\u0149\u01c4-\u01cc\u01f1-\u01f3\ufb00-\ufb06]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f\u206a-\u206f\ufeff\ufff9-\ufffc]")
_FULL_WIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-character table, in vocabulary order (ids 0…255)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + extra)
            extra += 1
    return {byte: table[byte] for byte in [*printable, *(b for b in range(256) if b not in printable)]}


def _approximate_fix_text(text: str) -> str:
    """A dependency-free stand-in for `ftfy.fix_text` covering its commonest effects (not mojibake repair)."""
    text = _CONTROL.sub("", text)
    text = _SINGLE_QUOTES.sub("'", _DOUBLE_QUOTES.sub('"', text))
    text = _LIGATURES.sub(lambda match: unicodedata.normalize("NFKC", match.group()), text)
    return unicodedata.normalize("NFC", text.translate(_FULL_WIDTH))


def clean_text(text: str) -> str:
    """The official cleaning: ftfy fix, HTML-unescape twice, strip, collapse whitespace, lower-case."""
    text = ftfy.fix_text(text) if ftfy is not None else _approximate_fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def _build_backend(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    tokenizer = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=EOS_TOKEN,
        )
    )
    # The Python-side `clean_text` does the official cleaning; whitespace/lower-case make tokenizer.json usable on its
    # own too (both are idempotent on cleaned text; NFC is not, after lower-casing, so it is left to ftfy). The
    # official split regex is case-insensitive, so it never matches U+0345 (a mark that case-folds to a letter): it
    # acts as a separator, like a space; and "'ſ" matches its "'s" (see _SPLIT_PATTERN).
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Lowercase(),
            normalizers.Replace("\u0345", " "),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace("</w>", " ")])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        pair=f"{BOS_TOKEN} $A {EOS_TOKEN} $B:1 {EOS_TOKEN}:1",
        special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN]), (EOS_TOKEN, vocab[EOS_TOKEN])],
    )
    return tokenizer


def _vocab_from_merges(merges: list[tuple[str, str]]) -> dict[str, int]:
    """256 byte tokens, their 256 `</w>` forms, one entry per merge, then `<|mask|>`, SOT, EOT."""
    symbols = list(bytes_to_unicode().values())
    words = [*symbols, *(symbol + "</w>" for symbol in symbols), *("".join(merge) for merge in merges)]
    words += [MASK_TOKEN, BOS_TOKEN, EOS_TOKEN]
    vocab = {}
    for word in words:
        vocab.setdefault(word, len(vocab))
    return vocab


class FdtTokenizer(TokenizersBackend):
    """CLIP BPE with FDT's ids (`<|mask|>` 49406, SOT 49407, EOT 49408), pad id 0 and fixed-length output.

    Calling the tokenizer pads and truncates to `model_max_length` (the context length) by default and returns
    `input_ids` and `attention_mask` (1 for SOT, BPE tokens and EOT; 0 for padding). `encode` returns the unpadded
    `[SOT] + bpe + [EOT]`. Build it with [`FdtTokenizer.from_bpe_file`] (the official merges file) or
    [`FdtTokenizer.from_words`] (a closed vocabulary, no download).

    Args:
        vocab: token → id; must contain `<|mask|>`, `<|startoftext|>` and `<|endoftext|>`.
        merges: BPE merges, as `(left, right)` pairs or `"left right"` strings, highest priority first.
        model_max_length: the context length (77 in the released model).
    """

    vocab_files_names = {"tokenizer_file": "tokenizer.json"}
    model_input_names = ["input_ids", "attention_mask"]
    model = BPE

    def __init__(
        self,
        vocab: dict[str, int] | None = None,
        merges: list[tuple[str, str]] | list[str] | None = None,
        model_max_length: int = 77,
        **kwargs,
    ):
        kwargs.pop("pad_token", None)  # padding is id 0 without a special token; see the module docstring
        kwargs.pop("mask_token", None)
        if vocab is not None and kwargs.get("tokenizer_file") is None:
            merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in merges or []]
            missing = [token for token in (MASK_TOKEN, BOS_TOKEN, EOS_TOKEN) if token not in vocab]
            if missing:
                raise ValueError(
                    f"The vocabulary lacks {missing}; build it with FdtTokenizer.from_bpe_file/from_words."
                )
            self._tokenizer = _build_backend(dict(vocab), merges)
        kwargs.setdefault("bos_token", BOS_TOKEN)
        kwargs.setdefault("eos_token", EOS_TOKEN)
        kwargs.setdefault("unk_token", EOS_TOKEN)
        super().__init__(model_max_length=model_max_length, **kwargs)

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_bpe_file(cls, path: str, context_length: int = 77, **kwargs) -> FdtTokenizer:
        """Build the released tokenizer from OpenAI's `bpe_simple_vocab_16e6.txt.gz` (gzip or plain text)."""
        with open(path, "rb") as handle:
            raw = handle.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        lines = raw.decode("utf-8").split("\n")[1 : NUM_CLIP_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        if len(merges) != NUM_CLIP_MERGES or any(len(merge) != 2 for merge in merges):
            raise ValueError(f"{path} is not a CLIP BPE merges file (expected {NUM_CLIP_MERGES} merge lines).")
        return cls(vocab=_vocab_from_merges(merges), merges=merges, model_max_length=context_length, **kwargs)

    @classmethod
    def from_words(cls, words: Iterable[str], context_length: int = 77, **kwargs) -> FdtTokenizer:
        """A closed-vocabulary tokenizer in which each (cleaned) word of `words` is a single token.

        The layout mirrors the released one: 256 byte tokens, 256 `</w>` tokens, one entry per merge, then
        `<|mask|>`, SOT, EOT; pad id 0. Any other text still tokenizes, byte by byte. Words are split like captions
        (so "red-ish" gives the tokens "red", "-", "ish").
        """
        splitter = _build_backend(_vocab_from_merges([]), []).pre_tokenizer
        pieces: list[str] = []
        for word in words:
            if not isinstance(word, str):
                raise TypeError(f"words must be strings, got {type(word).__name__}.")
            for piece, _ in splitter.pre_tokenize_str(clean_text(word)):
                if piece not in pieces:
                    pieces.append(piece)
        merges: list[tuple[str, str]] = []
        for piece in pieces:
            # merge the first two symbols the current merges leave, until the piece is one token
            while len(symbols := [token.value for token in _bpe_model(merges).tokenize(piece)]) > 1:
                merges.append((symbols[0], symbols[1]))
        return cls(vocab=_vocab_from_merges(merges), merges=merges, model_max_length=context_length, **kwargs)

    # -- special tokens --------------------------------------------------------------------------------------

    @property
    def pad_token(self) -> str:
        """`!` (id 0): the official padding value; not a special token, so `!` in captions tokenizes normally."""
        return self.convert_ids_to_tokens(PAD_TOKEN_ID)

    @property
    def pad_token_id(self) -> int:
        return PAD_TOKEN_ID

    @property
    def mask_token_id(self) -> int:
        """Id of `<|mask|>` (unused by the FDT model; kept so the embedding table matches the release)."""
        return self.convert_tokens_to_ids(MASK_TOKEN)

    # -- encoding ----------------------------------------------------------------------------------------------

    def clean_text(self, text: str) -> str:
        """The official caption cleaning (see [`clean_text`])."""
        return clean_text(text)

    def __call__(self, text=None, text_pair=None, *args, padding="max_length", truncation=True, **kwargs):
        """Tokenize like the official code: padded and truncated to `model_max_length` unless told otherwise."""
        return super().__call__(text, text_pair, *args, padding=padding, truncation=truncation, **kwargs)

    def _encode_plus(self, text, text_pair=None, is_split_into_words: bool = False, **kwargs):
        if not is_split_into_words:
            text = self._clean_input(text)
            text_pair = self._clean_input(text_pair) if text_pair is not None else None
        return super()._encode_plus(text, text_pair, is_split_into_words=is_split_into_words, **kwargs)

    def _clean_input(self, text):
        if isinstance(text, str):
            return clean_text(text)
        if isinstance(text, (list, tuple)):
            return [clean_text(item) if isinstance(item, str) else item for item in text]
        return text

    def _decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None, **kwargs):
        text = super()._decode(token_ids, skip_special_tokens, clean_up_tokenization_spaces=False, **kwargs)
        return text.strip()


def _bpe_model(merges: list[tuple[str, str]]) -> BPE:
    return BPE(
        vocab=_vocab_from_merges(merges), merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>"
    )


__all__ = ["FdtTokenizer", "bytes_to_unicode", "clean_text"]
