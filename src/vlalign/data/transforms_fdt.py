"""FDT image transforms, written with ``torchvision.transforms.v2``.

Training (the official ``MOCOV2_single`` augmentation of the released CC3M config)::

    RandomResizedCrop(s, scale=(0.2, 1.0))                  # bilinear, ratio (3/4, 4/3)
    -> RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)
    -> RandomGrayscale(p=0.2)                               # 3 output channels
    -> RandomApply([GaussianBlur(sigma ~ U[0.1, 2.0])], p=0.5)   # PIL ImageFilter.GaussianBlur(radius=sigma)
    -> RandomHorizontalFlip(0.5)
    -> ToTensor -> Normalize(ImageNet mean/std)

Evaluation: ``Resize(round(s·256/224))`` (shorter side, bilinear) -> ``CenterCrop(s)`` -> ToTensor -> Normalize, the
same numbers as :class:`~vlalign.FdtImageProcessor.from_image_size` (256 -> 224 at ``s = 224``).

Every op runs on the PIL image, as in the official (torchvision v1) pipeline, so resampling, jitter and blur are
PIL's. Randomness: the torchvision ops use the global torch RNG (Trainer seeding and DataLoader per-worker seeding make
them reproducible); a ``generator`` passed to :func:`fdt_train_transform` drives only the blur radius. The official
blur draws its radius with Python's ``random``; the distribution is the same.
"""

from __future__ import annotations

from typing import Any

import PIL.Image
import PIL.ImageFilter
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from .transforms import ToRGB

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FdtGaussianBlur",
    "fdt_eval_transform",
    "fdt_train_transform",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class FdtGaussianBlur(v2.Transform):
    """PIL Gaussian blur with a radius drawn uniformly from ``sigma`` (MoCo-v2's ``GaussianBlur``); always applies.

    Args:
        sigma: ``(low, high)`` radius range.
        generator: ``torch.Generator`` for the radius (global torch RNG when ``None``).
    """

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0), generator: torch.Generator | None = None) -> None:
        super().__init__()
        low, high = (float(value) for value in sigma)
        if not 0 <= low <= high:
            raise ValueError(f"sigma must be (low, high) with 0 <= low <= high, got {sigma!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.sigma = (low, high)
        self.generator = generator

    def sample_radius(self) -> float:
        low, high = self.sigma
        return low + (high - low) * float(torch.rand(1, generator=self.generator).item())

    def forward(self, *inputs: Any) -> Any:
        image = inputs[0] if len(inputs) == 1 else inputs
        if not isinstance(image, PIL.Image.Image):
            raise TypeError(f"FdtGaussianBlur works on PIL images, got {type(image).__name__}")
        return image.filter(PIL.ImageFilter.GaussianBlur(radius=self.sample_radius()))

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


def _check_image_size(image_size: Any) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return image_size


def _to_normalized_tensor() -> list[v2.Transform]:
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),  # == ToTensor's /255
        v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
        v2.ToPureTensor(),
    ]


def fdt_train_transform(image_size: int = 224, generator: torch.Generator | None = None) -> v2.Compose:
    """FDT's training augmentation (MoCo-v2, ``MOCOV2_single``) at ``image_size`` (224 in the release).

    Returns:
        A ``v2.Compose`` mapping a PIL image (any mode) or a uint8 ``[1|3, H, W]`` tensor to a normalised
        ``float32 [3, s, s]`` tensor.
    """
    size = _check_image_size(image_size)
    return v2.Compose(
        [
            ToRGB(pil_output=True),
            v2.RandomResizedCrop(
                size=(size, size), scale=(0.2, 1.0), interpolation=InterpolationMode.BILINEAR, antialias=True
            ),
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([FdtGaussianBlur((0.1, 2.0), generator=generator)], p=0.5),
            v2.RandomHorizontalFlip(p=0.5),
            *_to_normalized_tensor(),
        ]
    )


def fdt_eval_transform(image_size: int = 224) -> v2.Compose:
    """FDT's evaluation transform: shorter side to ``round(s·256/224)`` (bilinear), center crop ``s``, normalise."""
    size = _check_image_size(image_size)
    return v2.Compose(
        [
            ToRGB(pil_output=True),
            v2.Resize(round(size * 256 / 224), interpolation=InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(size),
            *_to_normalized_tensor(),
        ]
    )
