"""The one rule every ViT tower's resolution follows: the image side is a whole number of patches.

A side the patch does not divide is not an error for the patch convolution: it silently drops the last
`image_size % patch_size` pixel rows and columns, so the model trains on a cropped image. The vision configs refuse
such a size at construction (`validate_image_size`), naming the nearest sizes that work.

This file is shipped with saved models (remote code): it imports nothing.
"""

from __future__ import annotations


def nearest_image_sizes(image_size: int, patch_size: int) -> tuple[int, ...]:
    """The multiples of `patch_size` nearest to `image_size`: the one below (when there is one) and the one above."""
    below = image_size // patch_size * patch_size
    return (below, below + patch_size) if below > 0 else (patch_size,)


def check_patch_grid(image_size: int, patch_size: int) -> None:
    """Raise a `ValueError` naming the sizes and the nearest valid ones unless `image_size` is a positive multiple of
    the positive `patch_size`."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be a positive number of pixels, got {patch_size}.")
    if image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}.")
    if image_size % patch_size:
        sizes = " or ".join(str(size) for size in nearest_image_sizes(image_size, patch_size))
        raise ValueError(
            f"image_size={image_size} is not a multiple of patch_size={patch_size}: the patch grid would drop the last "
            f"{image_size % patch_size} pixel rows and columns of every image. Use {sizes}."
        )


__all__ = ["check_patch_grid", "nearest_image_sizes"]
