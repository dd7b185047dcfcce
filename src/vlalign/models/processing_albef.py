"""ALBEF preprocessing: the official evaluation image transform, caption cleaning and tokenization presets.

Images: square bicubic resize (PIL, no crop), scale to [0, 1], normalise with CLIP's mean/std — numerically the
official `Resize((s, s), BICUBIC) → ToTensor → Normalize` eval transform. The random train-time augmentations
(RandomResizedCrop, flip, ALBEF's RandomAugment) live in `vlalign.data.transforms`.

Text: the official `pre_caption` cleaning, then "[CLS] text" without [SEP] (see `AlbefTokenizer`), with the official
lengths: 25 tokens when pretraining, 30 (padded to 30) when evaluating retrieval, untruncated when fine-tuning.
VQA (`VQA.py`): questions cleaned by `pre_question` (30 words and 25 tokens when training, 50 words untruncated when
testing); answers uncleaned, with the end-of-answer token appended as text ("red[SEP]" → "[CLS] red [SEP]"), which the
answer decoder learns to predict.
"""

from transformers.image_processing_backends import PilBackend
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from .input_checks import RgbImageProcessorMixin, is_blank
from .processing_alignment import AlignmentProcessor
from .tokenization_albef import pre_caption, pre_question

#: text settings of the official code, per stage (VQA texts are cleaned by the processor, not again by the tokenizer;
#: answers, which the official code never truncates, are cut at the training questions' 25 tokens, far above any VQA or
#: Visual Genome answer, so that no text overflows the model's positions)
TEXT_PRESETS: dict[str, dict] = {
    "pretrain": {"max_length": 25, "padding": "longest", "truncation": True},
    "train": {"padding": "longest", "truncation": False},
    "eval": {"max_length": 30, "padding": "max_length", "truncation": True},
    "vqa_question": {"max_length": 25, "padding": "longest", "truncation": True, "clean_captions": False},
    "vqa_test_question": {"padding": "longest", "truncation": False, "clean_captions": False},
    "vqa_answer": {"max_length": 25, "padding": "longest", "truncation": True, "clean_captions": False},
}

#: words `pre_question` keeps per VQA question preset (the official max_ques_words of training and testing)
VQA_QUESTION_WORDS: dict[str, int] = {"vqa_question": 30, "vqa_test_question": 50}

#: image resolution of the official configs, per stage
IMAGE_PRESETS: dict[str, int] = {"pretrain": 256, "train": 384, "eval": 384}


class AlbefImageProcessor(RgbImageProcessorMixin, PilBackend):
    """Square bicubic resize + CLIP normalisation, as ALBEF's evaluation transform (PIL backend for exact numerics).
    PIL images are converted to RGB as the official loaders do (alpha dropped; 16-bit scaled; see `input_checks`).

    `AlbefImageProcessor.from_preset("pretrain" | "train" | "eval")` gives the official resolutions (256/384/384).
    """

    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"height": 256, "width": 256}
    default_to_square = True
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    model_input_names = ["pixel_values"]

    @classmethod
    def from_preset(cls, preset: str, **kwargs) -> "AlbefImageProcessor":
        if preset not in IMAGE_PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(IMAGE_PRESETS)}.")
        side = IMAGE_PRESETS[preset]
        return cls(size={"height": side, "width": side}, **kwargs)


class AlbefProcessor(AlignmentProcessor):
    """Image processor + `AlbefTokenizer` with ALBEF's caption cleaning and length presets.

    Args:
        image_processor: an [`AlbefImageProcessor`].
        tokenizer: an [`AlbefTokenizer`] (or any BERT tokenizer; then [SEP] handling is the tokenizer's).
        max_words: captions are cut to this many words by `pre_caption`.
        clean_captions: apply `pre_caption` (the official cleaning) before tokenizing.
    """

    #: the official text settings per stage, selected with `preset=` (collators validate against it)
    text_presets = TEXT_PRESETS

    def __init__(self, image_processor=None, tokenizer=None, max_words: int = 30, clean_captions: bool = True):
        self.max_words = max_words
        self.clean_captions = clean_captions
        super().__init__(image_processor, tokenizer)

    def clean_caption(self, text: str) -> str:
        """The official `pre_caption` (the tokenizer applies it too: it is idempotent)."""
        return pre_caption(text, self.max_words) if self.clean_captions else text.strip()

    def clean_text(self, text: str, preset: str | None = None) -> str:
        """Captions: `clean_caption`. VQA questions: the official `pre_question` (30 words when training, 50 when
        testing). VQA answers: left as they are, with the tokenizer's [SEP] appended as the end-of-answer token (the
        official `eos`); a blank answer stays blank, so `clean` refuses it."""
        if preset in VQA_QUESTION_WORDS:
            return pre_question(text, VQA_QUESTION_WORDS[preset]) if self.clean_captions else text.strip()
        if preset == "vqa_answer":
            answer = text.strip()
            return answer if is_blank(answer) else answer + str(self.tokenizer.sep_token)
        return self.clean_caption(text)


__all__ = ["AlbefImageProcessor", "AlbefProcessor", "pre_caption", "pre_question"]
