"""ALBEF's tokenizer: BERT WordPiece over captions cleaned like the official `pre_caption`, whose single sequences are
"[CLS] text" with no trailing [SEP].

The released ALBEF checkpoints were trained this way (the official tokenizer drops [SEP]; ALBEF#75, #91), so feeding
them a [SEP] shifts every fused representation. Pairs keep the usual "[CLS] A [SEP] B [SEP]". Because the template
and the cleaning belong to the tokenizer, they survive `save_pretrained`/`from_pretrained` and apply wherever the
tokenizer is called directly (e.g. by transformers' zero-shot image classification pipeline), not only through the
processor.
"""

import re

from tokenizers import processors
from transformers import BertTokenizer

_DELETED_CHARACTERS = re.compile(r"[,.'!?\"()*#:;~]")
_SPACED_CHARACTERS = re.compile(r"[-/]")
_WHITESPACE_RUNS = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int = 30) -> str:
    """ALBEF's caption cleaning: lower-case; delete , . ' ! ? " ( ) * # : ; ~; turn - and / into spaces;
    `<person>` → `person`; collapse whitespace; strip; keep the first `max_words` words. Idempotent."""
    caption = _DELETED_CHARACTERS.sub("", caption.lower())
    caption = _SPACED_CHARACTERS.sub(" ", caption).replace("<person>", "person")
    caption = _WHITESPACE_RUNS.sub(" ", caption).rstrip("\n").strip(" ")
    return " ".join(caption.split(" ")[:max_words])


def pre_question(question: str, max_words: int = 30) -> str:
    """ALBEF's VQA question cleaning: `pre_caption` without the `<person>` rule and the whitespace collapsing (only
    trailing spaces are removed); the first `max_words` space-separated pieces are kept (30 when training, 50 when
    testing). Idempotent."""
    question = _DELETED_CHARACTERS.sub("", question.lower())
    question = _SPACED_CHARACTERS.sub(" ", question).rstrip(" ")
    return " ".join(question.split(" ")[:max_words])


class AlbefTokenizer(BertTokenizer):
    """A `BertTokenizer` that cleans captions with `pre_caption` (unless `clean_captions=False`) and, unless
    `add_sep_token=True`, ends single sequences without [SEP]."""

    def __init__(
        self,
        vocab: str | dict[str, int] | None = None,
        add_sep_token: bool = False,
        clean_captions: bool = True,
        max_words: int = 30,
        **kwargs,
    ):
        super().__init__(
            vocab=vocab, add_sep_token=add_sep_token, clean_captions=clean_captions, max_words=max_words, **kwargs
        )
        self.add_sep_token = add_sep_token
        self.clean_captions = clean_captions
        self.max_words = max_words
        cls, sep = str(self.cls_token), str(self.sep_token)
        single = f"{cls}:0 $A:0 {sep}:0" if add_sep_token else f"{cls}:0 $A:0"
        self._tokenizer.post_processor = processors.TemplateProcessing(
            single=single,
            pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, self.cls_token_id), (sep, self.sep_token_id)],
        )

    def __call__(self, text=None, *args, clean_captions: bool | None = None, **kwargs):
        """BERT tokenization of `pre_caption`-cleaned text; `clean_captions=False` skips the cleaning for this call
        (text the caller cleaned otherwise, e.g. VQA questions and answers; see `AlbefProcessor`'s presets)."""
        clean_captions = self.clean_captions if clean_captions is None else clean_captions
        if clean_captions and text is not None:
            text = pre_caption(text, self.max_words) if isinstance(text, str) else self._clean_batch(text)
        return super().__call__(text, *args, **kwargs)

    def _clean_batch(self, texts):
        return [pre_caption(t, self.max_words) if isinstance(t, str) else t for t in texts]


__all__ = ["AlbefTokenizer", "pre_caption", "pre_question"]
