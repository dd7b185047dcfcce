"""ALBEF's tokenizer: BERT WordPiece whose single sequences are "[CLS] text" with no trailing [SEP].

The released ALBEF checkpoints were trained this way (the official tokenizer drops [SEP]; ALBEF#75, #91), so feeding
them a [SEP] shifts every fused representation. Pairs keep the usual "[CLS] A [SEP] B [SEP]". Because the template
is set in `__init__`, it survives `save_pretrained`/`from_pretrained` and applies wherever the tokenizer is called
directly (e.g. by the zero-shot classification pipeline), not only through the processor.
"""

from tokenizers import processors
from transformers import BertTokenizer


class AlbefTokenizer(BertTokenizer):
    """A `BertTokenizer` that, unless `add_sep_token=True`, ends single sequences without [SEP]."""

    def __init__(self, vocab: str | dict[str, int] | None = None, add_sep_token: bool = False, **kwargs):
        super().__init__(vocab=vocab, add_sep_token=add_sep_token, **kwargs)
        self.add_sep_token = add_sep_token
        cls, sep = str(self.cls_token), str(self.sep_token)
        single = f"{cls}:0 $A:0 {sep}:0" if add_sep_token else f"{cls}:0 $A:0"
        self._tokenizer.post_processor = processors.TemplateProcessing(
            single=single,
            pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, self.cls_token_id), (sep, self.sep_token_id)],
        )


__all__ = ["AlbefTokenizer"]
