"""Inputs of SIMLA's masked image modelling (MIM): block masks over the ViT patch grid and image-tokenizer targets.

SIMLA's pretraining step (spec 2.1) needs, per image, a BEiT block mask over the ViT's ``G × G`` patch grid and the
image tokenizer's code id of every patch: the model predicts the codes of the masked patches. This module provides

* :class:`BlockMaskGenerator` — BEiT's block masking (transformers' ``FlavaMaskingGenerator``, the same algorithm as
  the official ``MaskingGenerator``), seeded per sample without touching the global Python ``random`` state;
* two image tokenizers with one interface (``grid``, ``vocab_size``, ``view(image)``, ``map_pixels(pixels)``,
  ``get_codebook_indices(pixel_values) -> LongTensor [B, G, G]``):
  :class:`PatchCodebookImageTokenizer` (k-means codes of patch colour thumbnails, fitted on the training images: no
  external weights, for the quick start and tests) and :class:`DalleImageTokenizer` (OpenAI's DALL-E dVAE encoder as a
  ``transformers.FlavaImageCodebook``, what SIMLA uses; see :func:`vlalign.convert.dvae.convert_dalle_encoder`);
* :class:`MaskedImageModelingInputs` — turns images and per-row seeds into ``bool_masked_pos`` and ``mim_labels``;
  :class:`~vlalign.data.collator.AlignmentCollator` calls it with its resumable per-row seeds.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode, v2
from tqdm.auto import tqdm
from transformers.models.flava.image_processing_flava import FlavaMaskingGenerator

from ..models.input_checks import to_rgb
from .transforms import ALBEF_TRAIN_PRESETS, AlbefRandomAugment, ToRGB

__all__ = [
    "BlockMaskGenerator",
    "DalleImageTokenizer",
    "MaskedImageModelingInputs",
    "PatchCodebookImageTokenizer",
    "simla_codebook_view_transform",
]

#: the official settings on the 16 × 16 grid: 75 masked patches, blocks of at least 16 patches
_OFFICIAL_GRID, _OFFICIAL_MASKED, _OFFICIAL_MIN_BLOCK = 16, 75, 16


def _to_rgb(image: Any, what: str = "image") -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(f"The {what} must be a PIL image, got {type(image).__name__}.")
    return to_rgb(image, f"the {what}")


def _pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """[3, H, W] float32 in [0, 1] (torchvision's ToTensor)."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


# ---------------------------------------------------------------------------------------------------------- masks
class BlockMaskGenerator:
    """BEiT block masking on a ``grid × grid`` patch grid, reproducible per seed.

    The algorithm is transformers' ``FlavaMaskingGenerator`` (BEiT's ``MaskingGenerator``, which SIMLA uses with
    ``num_masking_patches=75, min_num_patches=16, max_num_patches=None, min_aspect=0.3`` on 16 × 16): rectangles of
    random area and log-uniform aspect are added until ``num_masking_patches`` patches are masked (at most that many;
    fewer when ten tries in a row find no rectangle that fits). It draws from the module-level Python ``random``; each
    call runs it on a state seeded from ``seed`` and restores the caller's state afterwards.

    Defaults scale the official fractions to the grid: ``num_masking_patches = round(75/256 · G²)``,
    ``min_num_patches = max(1, round(16/256 · G²))``.
    """

    def __init__(
        self,
        grid: int,
        num_masking_patches: int | None = None,
        min_num_patches: int | None = None,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ) -> None:
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
            raise ValueError(f"grid must be an int >= 2 (the ViT patch grid side), got {grid!r}.")
        area = grid * grid
        scale = area / (_OFFICIAL_GRID * _OFFICIAL_GRID)
        if num_masking_patches is None:
            num_masking_patches = round(_OFFICIAL_MASKED * scale)
        if min_num_patches is None:
            min_num_patches = max(1, round(_OFFICIAL_MIN_BLOCK * scale))
        if not 0 < num_masking_patches < area:
            raise ValueError(f"num_masking_patches={num_masking_patches} must lie in [1, {area - 1}] for grid {grid}.")
        if not 0 < min_num_patches <= num_masking_patches:
            raise ValueError(
                f"min_num_patches={min_num_patches} must lie in [1, num_masking_patches={num_masking_patches}]."
            )
        if not min_aspect > 0:
            raise ValueError(f"min_aspect must be positive, got {min_aspect!r}.")
        self.grid = grid
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = max_num_patches
        self.min_aspect = min_aspect
        self.max_aspect = max_aspect
        self._generator = FlavaMaskingGenerator(
            input_size=grid,
            total_mask_patches=num_masking_patches,
            mask_group_max_patches=max_num_patches,
            mask_group_min_patches=min_num_patches,
            mask_group_min_aspect_ratio=min_aspect,
            mask_group_max_aspect_ratio=max_aspect,
        )

    def __repr__(self) -> str:
        return (
            f"BlockMaskGenerator(grid={self.grid}, num_masking_patches={self.num_masking_patches}, "
            f"min_num_patches={self.min_num_patches}, max_num_patches={self.max_num_patches}, "
            f"min_aspect={self.min_aspect}, max_aspect={self.max_aspect})"
        )

    def __call__(self, seed: int) -> torch.Tensor:
        """The mask for ``seed``: bool ``[grid * grid]``, row-major over the patch grid (True = masked)."""
        state = random.getstate()
        try:
            random.seed(int(seed))
            mask = self._generator()
        finally:
            random.setstate(state)
        # transformers >= 5 returns a torch int tensor, older versions a numpy array
        return torch.as_tensor(np.asarray(mask)).reshape(-1).to(torch.bool)


# ---------------------------------------------------------------------------------------------------------- tokenizers
class PatchCodebookImageTokenizer(nn.Module, PyTorchModelHubMixin):
    """An image tokenizer that needs no pretrained weights: each patch of a ``grid × grid`` split of the image is
    average-pooled to a ``patch_pixels × patch_pixels`` colour thumbnail and given the id of the nearest of
    ``vocab_size`` centroids, fitted by k-means on training images (:meth:`fit`).

    A stand-in for the DALL-E dVAE in quick starts and tests (the MIM task stays "predict what the masked patch looks
    like"). ``save_pretrained(dir)`` / ``from_pretrained(dir)`` write and read ``model.safetensors`` + ``config.json``.
    Inputs are ``[0, 1]`` pixels (``map_pixels`` is the identity).
    """

    def __init__(self, grid: int, vocab_size: int, patch_pixels: int = 2) -> None:
        super().__init__()
        for name, value in (("grid", grid), ("vocab_size", vocab_size), ("patch_pixels", patch_pixels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        self.grid = grid
        self.vocab_size = vocab_size
        self.patch_pixels = patch_pixels
        self.register_buffer("codebook", torch.zeros(vocab_size, 3 * patch_pixels * patch_pixels))

    @property
    def image_size(self) -> int:
        """Side of :meth:`view`'s output: ``grid · patch_pixels``."""
        return self.grid * self.patch_pixels

    def map_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels

    def view(self, image: Image.Image) -> torch.Tensor:
        """Deterministic input view: area (box) resize to ``image_size`` px, ``[0, 1]`` float ``[3, s, s]``."""
        image = _to_rgb(image)
        size = self.image_size
        return _pil_to_tensor(image.resize((size, size), Image.Resampling.BOX))

    def descriptors(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch thumbnails ``[B, G, G, 3·p²]`` of ``[B, 3, h, w]`` pixels (area-pooled to ``G·p`` px first)."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be [B, 3, H, W], got {tuple(pixel_values.shape)}.")
        g, p = self.grid, self.patch_pixels
        pixels = pixel_values.to(self.codebook.dtype)
        if pixels.shape[-2:] != (g * p, g * p):
            pixels = F.adaptive_avg_pool2d(pixels, (g * p, g * p))
        b = pixels.shape[0]
        # [B, 3, G, p, G, p] -> [B, G, G, 3, p, p]
        return pixels.reshape(b, 3, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g, g, 3 * p * p)

    @torch.no_grad()
    def get_codebook_indices(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Code ids, long ``[B, grid, grid]``: the nearest centroid of each patch thumbnail."""
        descriptors = self.descriptors(pixel_values)
        b = descriptors.shape[0]
        flat = descriptors.reshape(-1, descriptors.shape[-1])
        return _nearest(flat, self.codebook).reshape(b, self.grid, self.grid)

    @classmethod
    def fit(
        cls,
        images: Iterable[Image.Image],
        grid: int,
        vocab_size: int,
        seed: int = 0,
        patch_pixels: int = 2,
        iterations: int = 25,
        max_descriptors: int | None = 65_536,
        progress: bool = True,
    ) -> PatchCodebookImageTokenizer:
        """Fit the codebook by k-means (k-means++ initialisation, ``iterations`` Lloyd steps, empty clusters
        re-seeded with the worst-fitted descriptors) on the patch thumbnails of ``images`` (PIL, any mode).

        Deterministic given ``seed`` (its own ``torch.Generator``; the global RNG is untouched). At most
        ``max_descriptors`` thumbnails, a seeded random subset, are clustered (``None``: all); repeated thumbnails
        are clustered once with their count as weight, and k-means++ draws from at most 16,384 of them. 2,000
        images of 64 px at grid 8 with 256 codes fit in about 1-2 s on one CPU thread.
        """
        tokenizer = cls(grid=grid, vocab_size=vocab_size, patch_pixels=patch_pixels)
        views = [tokenizer.view(image) for image in tqdm(images, desc="Image thumbnails", disable=not progress)]
        if not views:
            raise ValueError("PatchCodebookImageTokenizer.fit got no images.")
        data = tokenizer.descriptors(torch.stack(views)).reshape(-1, tokenizer.codebook.shape[1])
        generator = torch.Generator().manual_seed(int(seed))
        if max_descriptors is not None and data.shape[0] > max_descriptors:
            data = data[torch.randperm(data.shape[0], generator=generator)[:max_descriptors]]
        tokenizer.codebook.copy_(_kmeans(data, vocab_size, iterations, generator, progress))
        return tokenizer


def _scores(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``‖c‖² − 2·x·c``: the squared distance up to the per-point constant ``‖x‖²`` (one fused op)."""
    return torch.addmm(centroids.pow(2).sum(1)[None, :], points, centroids.T, alpha=-2.0)


def _nearest(points: torch.Tensor, centroids: torch.Tensor, chunk: int = 65_536) -> torch.Tensor:
    return torch.cat([_scores(points[i : i + chunk], centroids).argmin(1) for i in range(0, points.shape[0], chunk)])


def _kmeans(
    data: torch.Tensor,
    k: int,
    iterations: int,
    generator: torch.Generator,
    progress: bool = False,
    init_points: int = 16_384,
) -> torch.Tensor:
    """Weighted k-means over the distinct rows of `data` (equal to k-means over all rows, and much faster on images
    with flat regions)."""
    points, weights = torch.unique(data, dim=0, return_counts=True)
    weights = weights.to(data.dtype)
    norms = points.pow(2).sum(1)
    n = points.shape[0]
    # k-means++ initialisation (with fewer distinct points than codes, some codes repeat a point)
    # on a random subset of at most `init_points` distinct points
    subset = torch.randperm(n, generator=generator)[:init_points].sort().values if n > init_points else None
    seeds_from = points if subset is None else points[subset]
    seed_weights = weights if subset is None else weights[subset]
    seed_norms = norms if subset is None else norms[subset]
    centroids = torch.empty(k, data.shape[1], dtype=data.dtype)
    centroids[0] = seeds_from[int(torch.multinomial(seed_weights, 1, generator=generator))]
    closest = (seed_norms + _scores(seeds_from, centroids[:1])[:, 0]).clamp_min_(0.0)
    for j in range(1, k):
        mass = closest * seed_weights
        if mass.sum() > 0:
            choice = int(torch.multinomial(mass, 1, generator=generator))
        else:  # every point already coincides with a centroid
            choice = int(torch.randint(seeds_from.shape[0], (1,), generator=generator))
        centroids[j] = seeds_from[choice]
        update = (seed_norms + _scores(seeds_from, centroids[j : j + 1])[:, 0]).clamp_min_(0.0)
        closest = torch.minimum(closest, update)
    # Lloyd iterations
    for _ in tqdm(range(iterations), desc="k-means", disable=not progress):
        best, assignment = _scores(points, centroids).min(1)
        counts = torch.zeros(k, dtype=data.dtype).index_add_(0, assignment, weights)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points * weights[:, None])
        updated = sums / counts.clamp_min(1e-12)[:, None]
        empty = (counts == 0).nonzero().flatten()
        if len(empty):  # re-seed with the points farthest from their centroid
            worst = (best + norms).argsort(descending=True, stable=True)[: len(empty)]
            updated[empty[: len(worst)]] = points[worst]
            updated[empty[len(worst) :]] = centroids[empty[len(worst) :]]
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return centroids


class DalleImageTokenizer(nn.Module):
    """OpenAI's DALL-E dVAE encoder (a ``transformers.FlavaImageCodebook``) as SIMLA's MIM image tokenizer.

    Its token grid is the input side over the encoder's downsampling (8 for the released 4-group network), so
    ``grid=16`` means 128 px inputs (SIMLA's setting). Inputs are ``map_pixels`` values (``0.8·x + 0.1`` of
    ``[0, 1]`` pixels, no mean/std); ``FlavaImageCodebook.get_codebook_indices`` does not apply that mapping itself
    (transformers' ``FlavaImageProcessor`` does), so :meth:`view` and :meth:`map_pixels` apply it, once.
    """

    def __init__(self, codebook: nn.Module, grid: int = 16) -> None:
        super().__init__()
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise ValueError(f"grid must be a positive int, got {grid!r}.")
        self.codebook = codebook.eval()
        self.grid = grid
        self.vocab_size = int(codebook.config.vocab_size)
        self.downsampling = 2 ** (int(codebook.config.num_groups) - 1)

    @classmethod
    def from_pretrained(cls, path: str | Path, grid: int = 16, **kwargs: Any) -> DalleImageTokenizer:
        """Load a ``FlavaImageCodebook`` folder (e.g. written by ``convert_dalle_encoder``) or Hub repo."""
        from transformers import FlavaImageCodebook

        return cls(FlavaImageCodebook.from_pretrained(path, **kwargs), grid=grid)

    @property
    def image_size(self) -> int:
        return self.grid * self.downsampling

    def map_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """DALL-E's ``map_pixels``: ``(1 - 2ε)·x + ε`` with ε = 0.1."""
        return 0.8 * pixels + 0.1

    def view(self, image: Image.Image) -> torch.Tensor:
        """Deterministic input view: bicubic resize to ``image_size`` px, ToTensor, ``map_pixels``."""
        image = _to_rgb(image)
        size = self.image_size
        return self.map_pixels(_pil_to_tensor(image.resize((size, size), Image.Resampling.BICUBIC)))

    @torch.no_grad()
    def get_codebook_indices(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Code ids, long ``[B, h/8, w/8]``: argmax of the encoder's logits (inputs already ``map_pixels``-ed)."""
        parameter = next(self.codebook.parameters())
        pixels = pixel_values.to(device=parameter.device, dtype=parameter.dtype)
        return self.codebook.get_codebook_indices(pixels).to(torch.long)


def simla_codebook_view_transform(image_size: int = 128) -> v2.Compose:
    """SIMLA's random tokenizer view (spec 2.3, before ``map_pixels``): RandomResizedCrop(``image_size``, scale
    (0.2, 1.0), bicubic), horizontal flip, ALBEF's RandomAugment(2, 7), ToTensor — ``[0, 1]`` pixels, no mean/std.
    Use it as ``MaskedImageModelingInputs(view_transform=...)``; the tokenizer's ``map_pixels`` is applied after."""
    return v2.Compose(
        [
            ToRGB(),
            v2.RandomResizedCrop(
                size=(image_size, image_size),
                scale=ALBEF_TRAIN_PRESETS["pretrain"][1],
                ratio=(3.0 / 4.0, 4.0 / 3.0),
                interpolation=InterpolationMode.BICUBIC,
                antialias=True,
            ),
            v2.RandomHorizontalFlip(p=0.5),
            v2.ToImage(),
            AlbefRandomAugment(num_ops=2, magnitude=7),
            v2.ToDtype(torch.float32, scale=True),
            v2.ToPureTensor(),
        ]
    )


# ---------------------------------------------------------------------------------------------------------- inputs
def _derived_seed(seed: int, purpose: str) -> int:
    digest = hashlib.blake2b(f"{int(seed)}|{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class MaskedImageModelingInputs:
    """Build SIMLA's MIM inputs for a batch: ``bool_masked_pos`` bool ``[B, G²]`` (a block mask per image) and
    ``mim_labels`` long ``[B, G²]`` (the tokenizer's code of each masked patch, -100 elsewhere), row-major over the
    ViT's ``grid × grid`` patches.

    Args:
        image_tokenizer: a :class:`PatchCodebookImageTokenizer`, :class:`DalleImageTokenizer` or any object with
            ``grid``, ``vocab_size``, ``view``, ``map_pixels`` and ``get_codebook_indices`` (``[B, G, G]``).
        grid: the ViT's patch grid side (``image_size // patch_size``); must equal the tokenizer's token grid.
        num_masking_patches, min_num_patches, max_num_patches, min_aspect, max_aspect: block masking
            (:class:`BlockMaskGenerator`; ``None`` scales the official 75/256 and 16/256 to the grid).
        view_transform: optional random transform of a PIL image into ``[0, 1]`` pixels ``[3, h, w]`` (no mean/std;
            e.g. :func:`simla_codebook_view_transform`, SIMLA's independent 128-px crop); the tokenizer's
            ``map_pixels`` is applied to its output. Run under each row's own torch seed. ``None``: the tokenizer's
            deterministic ``view``.
    """

    image_tokenizer: Any
    grid: int
    num_masking_patches: int | None = None
    min_num_patches: int | None = None
    max_num_patches: int | None = None
    min_aspect: float = 0.3
    max_aspect: float | None = None
    view_transform: Callable[[Image.Image], torch.Tensor] | None = None
    mask_generator: BlockMaskGenerator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for attribute in ("grid", "vocab_size", "view", "map_pixels", "get_codebook_indices"):
            if not hasattr(self.image_tokenizer, attribute):
                raise TypeError(
                    f"image_tokenizer ({type(self.image_tokenizer).__name__}) lacks {attribute!r}; use a "
                    "PatchCodebookImageTokenizer or DalleImageTokenizer."
                )
        token_grid = self.image_tokenizer.grid
        if token_grid != self.grid:
            raise ValueError(
                f"The image tokenizer's token grid is {token_grid} × {token_grid} but the ViT's patch grid is "
                f"{self.grid} × {self.grid}; MIM labels need one code per patch. Use a tokenizer for grid={self.grid} "
                f"(PatchCodebookImageTokenizer.fit(..., grid={self.grid}) or DalleImageTokenizer(..., "
                f"grid={self.grid}), i.e. {self.grid * 8}-px dVAE inputs) or change the ViT's image_size/patch_size."
            )
        if self.view_transform is not None and not callable(self.view_transform):
            raise TypeError(f"view_transform must be callable or None, got {type(self.view_transform).__name__}.")
        self.mask_generator = BlockMaskGenerator(
            self.grid,
            num_masking_patches=self.num_masking_patches,
            min_num_patches=self.min_num_patches,
            max_num_patches=self.max_num_patches,
            min_aspect=self.min_aspect,
            max_aspect=self.max_aspect,
        )

    @classmethod
    def for_config(cls, config: Any, image_tokenizer: Any, **kwargs: Any) -> MaskedImageModelingInputs:
        """For a SIMLA config: ``grid = vision_config.image_size // vision_config.patch_size``, and the config's
        ``mim_vocab_size`` must equal the tokenizer's ``vocab_size``."""
        vision = config.vision_config
        grid = vision.image_size // vision.patch_size
        mim_vocab_size = getattr(config, "mim_vocab_size", None)
        if mim_vocab_size is None:
            raise ValueError(f"{type(config).__name__} has no mim_vocab_size: it is not a config of a MIM model.")
        if mim_vocab_size != image_tokenizer.vocab_size:
            raise ValueError(
                f"config.mim_vocab_size={mim_vocab_size} but the image tokenizer has vocab_size="
                f"{image_tokenizer.vocab_size}; the MIM head predicts the tokenizer's codes. Build the config with "
                f"mim_vocab_size={image_tokenizer.vocab_size} or fit/load a tokenizer with {mim_vocab_size} codes."
            )
        return cls(image_tokenizer=image_tokenizer, grid=grid, **kwargs)

    def masks(self, seeds: Sequence[int]) -> torch.Tensor:
        """Block masks, bool ``[B, G²]``, one per seed."""
        return torch.stack([self.mask_generator(seed) for seed in seeds])

    def views(self, images: Sequence[Image.Image], view_seeds: Sequence[int] | None = None) -> torch.Tensor:
        """The tokenizer inputs ``[B, 3, h, w]``: ``view_transform`` under each of ``view_seeds`` (torch RNG forked,
        the global stream is untouched) followed by ``map_pixels``, or the deterministic ``view`` without one."""
        images = [_to_rgb(image, f"image of row {i}") for i, image in enumerate(images)]
        if self.view_transform is None:
            return torch.stack([self.image_tokenizer.view(image) for image in images])
        if view_seeds is None or len(view_seeds) != len(images):
            raise ValueError("views() with a view_transform needs one view seed per image.")
        tensors = []
        for position, (image, seed) in enumerate(zip(images, view_seeds, strict=True)):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                pixels = self.view_transform(image)
            if not isinstance(pixels, torch.Tensor) or pixels.ndim != 3:
                found = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
                raise TypeError(f"view_transform must return a [3, H, W] tensor, got {found} for row {position}.")
            if pixels.numel() and (pixels.min() < 0 or pixels.max() > 1):
                raise ValueError(
                    f"view_transform returned values in [{pixels.min():.3g}, {pixels.max():.3g}] for row {position}; "
                    "it must give [0, 1] pixels without mean/std normalisation (the tokenizer applies its own "
                    "pixel mapping)."
                )
            tensors.append(self.image_tokenizer.map_pixels(pixels.to(torch.float32)))
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise ValueError(f"view_transform returned different shapes {sorted(shapes)}; use a fixed size.")
        return torch.stack(tensors)

    def __call__(
        self,
        images: Sequence[Image.Image],
        seeds: Sequence[int],
        views: torch.Tensor | None = None,
        view_seeds: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"bool_masked_pos": bool [B, G²], "mim_labels": long [B, G²]}`` for PIL ``images``.

        ``seeds[i]`` fixes image i's mask. ``views``: tokenizer inputs already made (``[B, 3, h, w]``, pixel mapping
        applied); otherwise :meth:`views` makes them, with ``view_seeds`` (default: derived from ``seeds``) for a
        ``view_transform``.
        """
        if len(seeds) != len(images):
            raise ValueError(f"Got {len(images)} images but {len(seeds)} seeds; pass one seed per image.")
        if views is None:
            if self.view_transform is not None and view_seeds is None:
                view_seeds = [_derived_seed(seed, "codebook_image") for seed in seeds]
            views = self.views(images, view_seeds)
        elif views.ndim != 4 or views.shape[0] != len(images):
            raise ValueError(f"views must be [B={len(images)}, 3, h, w], got {tuple(views.shape)}.")
        codes = self.image_tokenizer.get_codebook_indices(views).to("cpu", torch.long)
        b, g = len(images), self.grid
        if codes.shape not in ((b, g, g), (b, g * g)):
            raise ValueError(
                f"The image tokenizer gave codes of shape {tuple(codes.shape)} for views of shape "
                f"{tuple(views.shape)}; expected [{b}, {g}, {g}] (one per ViT patch). Give it inputs of "
                f"{getattr(self.image_tokenizer, 'image_size', 'its')} px."
            )
        codes = codes.reshape(b, g * g)
        bool_masked_pos = self.masks(seeds)
        mim_labels = torch.where(bool_masked_pos, codes, torch.full_like(codes, -100))
        return {"bool_masked_pos": bool_masked_pos, "mim_labels": mim_labels}
