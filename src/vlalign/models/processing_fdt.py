"""FDT preprocessing: the official evaluation image transform and fixed-length caption tokenization.

Images: `Resize(256)` of the shorter side (PIL bilinear) → `CenterCrop(224)` → scale to [0, 1] → ImageNet
mean/std, numerically torchvision's `Resize`/`CenterCrop`/`ToTensor`/`Normalize` on PIL images (FDT does not use CLIP's
statistics). Sizes are configurable: `FdtImageProcessor.from_image_size(64)` keeps the 256/224 resize-to-crop ratio.
The random training augmentation (MoCo-v2) lives in `vlalign.data.transforms_fdt`.

Text: captions are `strip()`-ed, then cleaned and tokenized by [`FdtTokenizer`]; every preset pads and truncates to the
tokenizer's context length (`model_max_length`, 77 in the release), as the official code does.
"""

from __future__ import annotations

from transformers.image_processing_backends import PilBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from .input_checks import RgbImageProcessorMixin
from .processing_alignment import AlignmentProcessor

#: text settings per stage; FDT always pads/truncates to the context length (the tokenizer's `model_max_length`)
TEXT_PRESETS: dict[str, dict] = {
    "pretrain": {"padding": "max_length", "truncation": True},
    "train": {"padding": "max_length", "truncation": True},
    "eval": {"padding": "max_length", "truncation": True},
}

#: the official evaluation transform: resize the shorter side to 256, center-crop 224
RESIZE_TO_CROP = 256 / 224


class FdtImageProcessor(RgbImageProcessorMixin, PilBackend):
    """Shorter-side bilinear resize, center crop, ImageNet normalisation: FDT's evaluation transform (PIL backend).

    `FdtImageProcessor()` is the released 256 → 224 setting; `FdtImageProcessor(size={"shortest_edge": s},
    crop_size={"height": c, "width": c})` (or plain integers) changes it, and `from_image_size(c)` picks
    `s = round(c · 256 / 224)`. PIL images are converted to RGB as the official loaders do (`image.convert("RGB")`:
    alpha dropped, not composited on white as transformers does; 16-bit scaled; see `input_checks`).
    """

    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 256}
    crop_size = {"height": 224, "width": 224}
    default_to_square = False
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    model_input_names = ["pixel_values"]

    def __init__(self, **kwargs):
        if isinstance(kwargs.get("size"), int):
            kwargs["size"] = {"shortest_edge": kwargs["size"]}
        if isinstance(kwargs.get("crop_size"), int):
            kwargs["crop_size"] = {"height": kwargs["crop_size"], "width": kwargs["crop_size"]}
        super().__init__(**kwargs)

    def center_crop(self, image, size, **kwargs):
        """torchvision's `CenterCrop` offsets, `round((H - h) / 2)` with round-half-to-even (HF floors instead)."""
        height, width = image.shape[-2:]
        if size.height is None or size.width is None or height < size.height or width < size.width:
            return super().center_crop(image, size, **kwargs)  # validation, or torchvision-like zero padding
        top, left = int(round((height - size.height) / 2.0)), int(round((width - size.width) / 2.0))
        return image[..., top : top + size.height, left : left + size.width]

    @classmethod
    def from_image_size(cls, image_size: int, **kwargs) -> FdtImageProcessor:
        """The official transform scaled to `image_size`: resize the shorter side to `round(image_size·256/224)`."""
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}.")
        shortest = round(image_size * RESIZE_TO_CROP)
        return cls(size={"shortest_edge": shortest}, crop_size={"height": image_size, "width": image_size}, **kwargs)


class FdtProcessor(AlignmentProcessor):
    """[`FdtImageProcessor`] + [`FdtTokenizer`] with FDT's caption handling (`strip()`, then the tokenizer's cleaning).

    `processor(images=..., text=..., preset=..., return_tensors="pt")`: every preset in `text_presets`
    (`"pretrain"`, `"train"`, `"eval"`) pads and truncates captions to the tokenizer's context length; keyword
    arguments such as `max_length` override the preset.
    """

    #: the official text settings per stage, selected with `preset=` (collators validate against it)
    text_presets = TEXT_PRESETS

    def __init__(self, image_processor=None, tokenizer=None):
        super().__init__(image_processor, tokenizer)


__all__ = ["FdtImageProcessor", "FdtProcessor", "TEXT_PRESETS"]
