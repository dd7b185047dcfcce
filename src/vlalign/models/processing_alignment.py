"""What every vlalign processor shares: an image processor and a tokenizer behind one call, named text presets per
training stage, and input checks whose errors name the fix. Each method's processor subclasses it with its presets
and caption cleaning.

This file is shipped with saved models (remote code): it imports only transformers and its siblings.
"""

from __future__ import annotations

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .input_checks import check_caption, is_blank


class AlignmentProcessor(ProcessorMixin):
    """Image processor + tokenizer: `processor(images=..., text=..., preset=..., return_tensors="pt")`.

    Subclasses set `text_presets` (preset name → tokenizer keyword arguments, the official text settings of each
    stage: `"pretrain"`, `"train"`, `"eval"`) and may override `clean_caption`. Keyword arguments such as
    `max_length` / `padding` override the preset.
    """

    #: preset name -> tokenizer keyword arguments; collators validate their preset against it
    text_presets: dict[str, dict] = {}

    def clean_caption(self, text: str) -> str:
        """The method's caption cleaning before tokenizing (default: strip surrounding whitespace)."""
        return text.strip()

    def clean_text(self, text: str, preset: str | None = None) -> str:
        """The cleaning `preset` applies to one text before tokenizing (default: `clean_caption`, whatever the
        preset); a processor whose presets handle other kinds of text (VQA questions, answers) overrides it."""
        return self.clean_caption(text)

    def clean(self, texts: list[str], preset: str | None = None) -> list[str]:
        """Validate captions ([`check_caption`]) and clean them for `preset` (`clean_text`); an empty caption, or one
        of only invisible characters ([`is_blank`]: zero-width spaces, BOM, soft hyphens, ...), is an error, not a
        silent empty sequence."""
        cleaned = []
        for position, text in enumerate(texts):
            check_caption(text, f"Text {position}")
            result = self.clean_text(text, preset)
            if is_blank(result):
                invisible = " (it holds only invisible characters)" if result else ""
                raise ValueError(
                    f"Text {position} ({text!r}) is empty after cleaning{invisible}. Remove empty captions from the "
                    "data (the data loaders report them) or pass a non-empty string."
                )
            cleaned.append(result)
        return cleaned

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        preset: str = "eval",
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Preprocess images and/or captions.

        Args:
            images: PIL images (converted to RGB; see `input_checks.to_rgb`), arrays or tensors (float ones finite,
                in [0, 1]).
            text: one caption or a list.
            preset: one of `text_presets`.
            return_tensors: `"pt"` (default), `"np"` or `None`.
        """
        if images is None and text is None:
            raise ValueError("Pass images, text, or both.")
        if preset not in self.text_presets:
            raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(self.text_presets)}.")
        data = {}
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            if not texts:
                raise ValueError("text is an empty list; pass at least one caption.")
            text_kwargs = {**self.text_presets[preset], **kwargs}
            data.update(self.tokenizer(self.clean(texts, preset), return_tensors=return_tensors, **text_kwargs))
        if images is not None:  # the image processor validates them (`RgbImageProcessorMixin`)
            data.update(self.image_processor(images, return_tensors=return_tensors))
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


__all__ = ["AlignmentProcessor"]
