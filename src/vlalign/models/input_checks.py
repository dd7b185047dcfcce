"""Input checks shared by every vlalign model, processor and data path: bad inputs raise a `ValueError` or `TypeError`
that names the argument, what was found and the fix, instead of a silent wrong result or a dependency's traceback.

Images: every PIL mode is converted to RGB as the official loaders do (`image.convert("RGB")`: palettes expanded,
alpha dropped, CMYK converted by PIL), except the high-bit modes PIL would clip to 8 bits (a 16-bit image turns
white): 16-bit images (`I;16`, `I;16B`, `I;16L`, as PIL opens 16-bit PNG/TIFF files) are scaled to 8 bits
(`round(v / 257)`, so 65535 -> 255); 32-bit integer (`I`) and float (`F`) images have no known range and are refused.
Float arrays and tensors must be finite and in [0, 1], integer ones in [0, 255].

Image files are opened with [`open_image`], which refuses images larger than a configurable pixel limit (PIL's
`Image.MAX_IMAGE_PIXELS` unless `max_pixels` or the `VLALIGN_MAX_IMAGE_PIXELS` environment variable says otherwise)
with the size, the limit and how to raise it, instead of PIL's `DecompressionBombError`.

A caption made only of invisible characters (whitespace, and Unicode format and control characters: zero-width
space and joiners, BOM, soft hyphen, ...) is blank ([`is_blank`]) and treated as empty wherever captions are checked.

The model checks cost one or two reductions per tensor (e.g. `torch.isfinite(pixel_values).all()`) per encoder call.

This file is shipped with saved models (remote code): it imports only numpy, PIL and torch.
"""

from __future__ import annotations

import io
import os
import threading
import unicodedata
from collections.abc import Mapping
from typing import Any

import numpy as np
import PIL.Image
import torch

#: `v / 257` maps 16-bit samples onto 0..255 exactly (65535 / 257 = 255)
_UINT16_TO_UINT8 = 257

#: environment variable that sets the largest image (in pixels) `open_image` opens; "none" for no limit
MAX_IMAGE_PIXELS_ENV = "VLALIGN_MAX_IMAGE_PIXELS"

#: Unicode categories of invisible characters: format (zero-width space/joiners, BOM, soft hyphen, ...) and control
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Cc"})

_PIL_LIMIT_LOCK = threading.Lock()


class NonFiniteInputError(ValueError, FloatingPointError):
    """NaN or infinite values in a model input. A `ValueError`, and a `FloatingPointError` as the training loss check
    (`losses.check_loss_finite`) raised for non-finite pixels before they were checked at the input."""


class ImageTooLargeError(ValueError):
    """An image with more pixels than the configured limit ([`image_pixel_limit`]); possibly a decompression bomb."""


def is_blank(text: str) -> bool:
    """True when `text` shows nothing: only whitespace and Unicode format/control characters (e.g. "\\u200b\\ufeff")."""
    stripped = text.strip()
    if stripped[:1].isalnum():  # the common case, without a category look-up per character
        return False
    return all(char.isspace() or unicodedata.category(char) in _INVISIBLE_CATEGORIES for char in stripped)


def image_pixel_limit(max_pixels: int | None = None) -> int | None:
    """The largest image `open_image` opens, in pixels: `max_pixels` when given, else the `VLALIGN_MAX_IMAGE_PIXELS`
    environment variable (an integer, or "none" for no limit), else PIL's `Image.MAX_IMAGE_PIXELS` (read at each
    call, so a limit set there is followed)."""
    if max_pixels is not None:
        return int(max_pixels)
    configured = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not configured:
        return PIL.Image.MAX_IMAGE_PIXELS
    if configured.lower() == "none":
        return None
    try:
        return int(configured)
    except ValueError:
        raise ValueError(
            f"{MAX_IMAGE_PIXELS_ENV}={configured!r} is not a number of pixels; set it to an integer (e.g. 400000000) "
            "or to 'none' for no limit."
        ) from None


def _open_without_pil_limit(fp: Any) -> PIL.Image.Image:
    """`PIL.Image.open` with PIL's own size check off, for an image PIL refused: to report its size, or to open it
    under a higher limit the caller asked for. PIL's setting is restored at once, under a lock."""
    with _PIL_LIMIT_LOCK:
        saved, PIL.Image.MAX_IMAGE_PIXELS = PIL.Image.MAX_IMAGE_PIXELS, None
        try:
            return PIL.Image.open(fp)
        finally:
            PIL.Image.MAX_IMAGE_PIXELS = saved


def open_image(source: Any, name: str = "image", max_pixels: int | None = None) -> PIL.Image.Image:
    """Open `source` (a path, encoded bytes, a `{"bytes", "path"}` dict as `datasets.Image(decode=False)` gives, or a
    PIL image) lazily, refusing an image larger than [`image_pixel_limit`] with an [`ImageTooLargeError`] that gives
    its size, the limit and how to raise it, instead of PIL's `DecompressionBombError` (PIL may still warn first for
    an image between its limit and twice that).
    """
    if isinstance(source, Mapping):
        source = source.get("bytes") if source.get("bytes") is not None else source.get("path")
    if isinstance(source, (bytes, bytearray)):
        fp: Any = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        fp = source
    elif isinstance(source, PIL.Image.Image):
        image = source
        fp = None
    else:
        raise TypeError(f"{name} is a {type(source).__name__}; expected a path, encoded image bytes or a PIL image.")
    limit = image_pixel_limit(max_pixels)
    if fp is not None:
        pil_limit = PIL.Image.MAX_IMAGE_PIXELS
        if pil_limit is not None and (limit is None or limit > pil_limit):
            image = _open_without_pil_limit(fp)  # the caller allows more than PIL would
        else:
            try:
                image = PIL.Image.open(fp)
            except PIL.Image.DecompressionBombError:
                image = _open_without_pil_limit(fp)  # only to report its size below
    width, height = image.size
    if limit is not None and width * height > limit:
        image.close()
        raise ImageTooLargeError(
            f"{name} is {width}×{height} = {width * height} pixels, more than the limit of {limit} pixels (a guard "
            f"against decompression bombs). Downscale the image, or raise the limit: set the environment variable "
            f"{MAX_IMAGE_PIXELS_ENV}={width * height} (or 'none'), or pass max_pixels to open_image."
        )
    return image


def image_file(image: Any) -> str | None:
    """The file an image comes from, when known (for messages): a path, a `{"path"}` dict's path without bytes, a PIL
    image's `filename`."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    if isinstance(image, Mapping) and image.get("bytes") is None and image.get("path"):
        return str(image["path"])
    return getattr(image, "filename", None) or None


def to_rgb(image: PIL.Image.Image, name: str = "image") -> PIL.Image.Image:
    """`image` as an 8-bit RGB PIL image (see the module docstring for the conversion of each mode)."""
    width, height = image.size
    if width < 1 or height < 1:
        raise ValueError(f"{name} is empty ({width}×{height} pixels); remove it from the data.")
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):
        samples = np.asarray(image).astype(np.float32)
        return PIL.Image.fromarray(np.round(samples / _UINT16_TO_UINT8).astype(np.uint8)).convert("RGB")
    if image.mode == "I":
        raise ValueError(
            f"{name} is a 32-bit integer image (mode 'I'), whose value range is unknown (8, 16 or 32 bits?). "
            "Convert it to 8 bits yourself, e.g. Image.fromarray(np.uint8(np.asarray(image) // 257)).convert('RGB') "
            "for 16-bit values, or open the file so that PIL keeps its 16-bit mode ('I;16')."
        )
    if image.mode == "F":
        raise ValueError(
            f"{name} is a floating-point image (mode 'F'), whose value range is unknown (0–1? 0–255?). Convert it to "
            "8 bits yourself, e.g. Image.fromarray(np.uint8(np.clip(a, 0, 1) * 255)).convert('RGB') for values in "
            "[0, 1], or pass it as a float array in [0, 1]."
        )
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ValueError(f"{name} (mode {image.mode!r}) cannot be converted to RGB: {err}") from err


def _first_bad(bad: torch.Tensor, name: str, batch: bool) -> str:
    """`name`, or for a batch the first of its images where `bad` (a mask of the batch's values) holds."""
    if not batch:
        return name
    return f"Image {int(bad.flatten(1).any(1).nonzero()[0, 0])} of the batch"


def _check_array(image: Any, name: str, batch: bool = False) -> None:
    """Reject empty, non-finite and out-of-range image arrays/tensors: float ones must be in [0, 1], integer ones in
    [0, 255] (the ranges the image processors rescale from). `batch`: `image` is `[B, C, H, W]`; name the image."""
    if image.size == 0 if isinstance(image, np.ndarray) else image.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(image.shape)}); remove it from the data.")
    values = torch.as_tensor(image)
    floating = values.is_floating_point()
    if not floating:
        values = values.to(torch.int64)
    if floating and not torch.isfinite(values).all():
        where = _first_bad(~torch.isfinite(values), name, batch)
        raise NonFiniteInputError(f"{where} contains NaN or infinite values; repair or remove the image.")
    top = 1 if floating else 255
    low, high = values.min().item(), values.max().item()
    if low >= 0 and high <= top:
        return
    where = _first_bad((values < 0) | (values > top), name, batch)
    if floating:
        raise ValueError(
            f"{where} is a float image with values in [{low:g}, {high:g}]; float images must be in [0, 1]. Divide "
            "0–255 values by 255, or pass a uint8 array or a PIL image."
        )
    raise ValueError(
        f"{where} is an integer image with values in [{low}, {high}]; integer images must be 8-bit, in [0, 255]. "
        "Scale it to 8 bits (e.g. `np.uint8(a // 257)` for 16-bit values) or pass a PIL image."
    )


def check_image(image: Any, name: str = "image", batch: bool = False) -> Any:
    """Validate one image (a PIL image, or an `[H, W]` / `[H, W, C]` / `[C, H, W]` array or tensor with C in (1, 3, 4);
    with `batch`, also one `[B, C, H, W]` batch) and return it ready for an image processor (PIL: [`to_rgb`])."""
    if isinstance(image, PIL.Image.Image):
        return to_rgb(image, name)
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        raise TypeError(f"{name} is a {type(image).__name__}; pass PIL images, numpy arrays or torch tensors.")
    dims = tuple(image.shape)
    channel_dims = dims[1:] if batch and len(dims) == 4 else dims
    layout_ok = len(channel_dims) == 2 or (len(channel_dims) == 3 and {channel_dims[0], channel_dims[-1]} & {1, 3, 4})
    if not layout_ok:
        raise ValueError(
            f"{name} has shape {dims}; expected [H, W], [H, W, C] or [C, H, W] with C in (1, 3, 4) (or a batch "
            "[B, C, H, W]). Convert it, e.g. `PIL.Image.fromarray(array).convert('RGB')`."
        )
    _check_array(image, name, batch=batch and len(dims) == 4)
    return image


def prepare_images(images: Any) -> Any:
    """Validate images for an image processor and convert PIL images to RGB ([`check_image`]); returns what to
    process. Accepts one image, a list of images, or one `[B, C, H, W]` batch."""
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    if not items:
        raise ValueError("images is an empty list; pass at least one image.")
    prepared = [
        check_image(image, "image" if single else f"Image {position}", batch=single)
        for position, image in enumerate(items)
    ]
    return prepared[0] if single else prepared


class RgbImageProcessorMixin:
    """Image-processor mixin: validates every input and converts PIL images with [`to_rgb`] before preprocessing."""

    def preprocess(self, images: Any, *args, **kwargs):
        return super().preprocess(prepare_images(images), *args, **kwargs)


def check_pixel_values(
    pixel_values: torch.Tensor, config: Any, interpolate_pos_encoding: bool = False, square_grid: bool = True
) -> None:
    """Raise a clear error for `pixel_values` a vision encoder of `config` (`num_channels`, `image_size`,
    `patch_size`) cannot take: not a float `[batch, channels, H, W]` tensor, another channel count, another size
    (unless interpolating; then a square grid of whole patches when `square_grid`), NaN or infinite values."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}.")
    if pixel_values.dim() != 4:
        raise ValueError(
            f"pixel_values must be a 4-D tensor [batch, channels, height, width], got shape {tuple(pixel_values.shape)}."
            " Preprocess images with the model's processor (it returns batched pixel_values)."
        )
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"pixel_values has dtype {pixel_values.dtype}; the model takes normalised float images. Preprocess images "
            "with the model's processor."
        )
    channels, height, width = pixel_values.shape[1:]
    if channels != config.num_channels:
        raise ValueError(
            f"pixel_values has {channels} channels but the model expects {config.num_channels} (shape "
            f"{tuple(pixel_values.shape)}). Convert images to RGB (the processor does this) and pass channels-first "
            "tensors [batch, channels, height, width] (e.g. `pixel_values.permute(0, 3, 1, 2)` for [batch, H, W, C])."
        )
    if interpolate_pos_encoding:
        if square_grid and (height % config.patch_size or width % config.patch_size or height != width):
            raise ValueError(
                f"Images of {height}x{width} do not form a square grid of {config.patch_size}-pixel patches; resize "
                "them to a square multiple of the patch size."
            )
    elif (height, width) != (config.image_size, config.image_size):
        raise ValueError(
            f"Images are {height}x{width} but the model expects {config.image_size}x{config.image_size}. Resize them "
            "with the model's processor, or pass interpolate_pos_encoding=True to run at another size."
        )
    if not torch.isfinite(pixel_values).all():
        raise NonFiniteInputError(
            "pixel_values is not finite: it contains NaN or infinite values, and the model would return NaN. Check "
            "the image data and the preprocessing (the processor refuses non-finite images)."
        )


def check_text_inputs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, vocab_size: int, max_length: int | None = None
) -> None:
    """Raise a clear error for `input_ids` that are not integer `[batch, tokens]` ids in `[0, vocab_size)` (or longer
    than `max_length` positions, when given), or an `attention_mask` of another shape."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}.")
    if input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must be a 2-D tensor [batch, tokens], got shape {tuple(input_ids.shape)}. Tokenize with the "
            "model's processor (it returns batched ids), or add a batch dimension with `input_ids[None]`."
        )
    if input_ids.is_floating_point() or input_ids.dtype == torch.bool or input_ids.is_complex():
        raise TypeError(f"input_ids has dtype {input_ids.dtype}; token ids must be integers (torch.long).")
    if max_length is not None and input_ids.shape[1] > max_length:
        raise ValueError(
            f"Text of {input_ids.shape[1]} tokens is longer than the model's {max_length} positions. Tokenize with "
            "truncation=True and max_length (the processor does this)."
        )
    if input_ids.numel():
        low, high = input_ids.min().item(), input_ids.max().item()
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"input_ids holds token ids in [{low}, {high}] but the model's vocabulary has ids 0..{vocab_size - 1}. "
                "Tokenize with this model's own tokenizer (processor), not another model's."
            )
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids {tuple(input_ids.shape)}; pass the "
            "mask the tokenizer returned with these ids (one entry per token)."
        )


def check_pairs(pixel_values: torch.Tensor, input_ids: torch.Tensor) -> None:
    """Training objectives take image-text pairs: as many images as texts (the encoders check ranks and contents)."""
    if pixel_values.dim() == 4 and input_ids.dim() == 2 and pixel_values.shape[0] != input_ids.shape[0]:
        raise ValueError(
            f"Got {pixel_values.shape[0]} images and {input_ids.shape[0]} texts. Alignment objectives take image-text "
            "pairs: pass one caption per image (repeat images that have several captions)."
        )


def check_caption(text: Any, name: str) -> None:
    """Reject a caption that is not a str, or that cannot be encoded as UTF-8 (lone surrogates)."""
    if isinstance(text, (bytes, bytearray)):
        raise TypeError(
            f"{name} is {type(text).__name__}, expected a string. Decode it first, e.g. "
            "`text.decode('utf-8', errors='replace')` (which also replaces bytes that are not UTF-8)."
        )
    if not isinstance(text, str):
        raise TypeError(f"{name} is a {type(text).__name__}, expected a string.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{name} ({text!r}) is not valid Unicode: {err.reason} at position {err.start}, usually a file decoded "
            "with errors='surrogateescape'. Repair the caption, e.g. "
            "`text.encode('utf-8', errors='replace').decode('utf-8')`."
        ) from err


__all__ = [
    "MAX_IMAGE_PIXELS_ENV",
    "ImageTooLargeError",
    "NonFiniteInputError",
    "RgbImageProcessorMixin",
    "check_caption",
    "check_image",
    "check_pairs",
    "check_pixel_values",
    "check_text_inputs",
    "image_file",
    "image_pixel_limit",
    "is_blank",
    "open_image",
    "prepare_images",
    "to_rgb",
]
