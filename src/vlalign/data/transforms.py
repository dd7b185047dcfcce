"""ALBEF training-time image augmentations, written with ``torchvision.transforms.v2``.

This module reproduces the image pipeline of the official ALBEF code (salesforce/ALBEF) for the
pretraining and retrieval fine-tuning stages::

    RandomResizedCrop(s, scale, ratio=(3/4, 4/3), bicubic)
    -> RandomHorizontalFlip(0.5)
    -> RandomAugment(N=2, M=7)            # ALBEF's own RandAugment variant, see AlbefRandomAugment
    -> ToTensor (float in [0, 1])
    -> Normalize(CLIP_MEAN, CLIP_STD)

Presets (see :func:`albef_train_transform`):

* ``"pretrain"``: ``s = 256``, ``scale = (0.2, 1.0)``
* ``"train"`` / ``"retrieval"``: ``s = 384``, ``scale = (0.5, 1.0)``

Randomness
----------
* :class:`AlbefRandomAugment` draws every random choice (op indices, the apply coin of each op and the
  sign of signed ops) with ``torch.randint`` / ``torch.rand`` on an optional ``torch.Generator``. With
  ``generator=None`` (the default) it uses the global torch RNG, so ``torch.manual_seed`` / Trainer
  seeding and DataLoader per-worker seeding make it reproducible.
* ``RandomResizedCrop`` and ``RandomHorizontalFlip`` are torchvision's own classes; they always use the
  **global** torch RNG (they take no generator). A generator passed to :func:`albef_train_transform`
  therefore only controls the RandomAugment part.
* Caveat: an explicit generator is copied into every DataLoader worker with the *same* state, so all
  workers would replay the same op sequence. For multi-worker loading prefer ``generator=None`` (the
  DataLoader seeds each worker's global RNG differently) or re-seed ``AlbefRandomAugment.generator`` in a
  ``worker_init_fn``.

Numerical differences from the official (OpenCV/numpy) implementation
---------------------------------------------------------------------
The ops follow the official definitions (same op list, levels, magnitudes, fill value, sampling with
replacement, apply probability 0.5, shear origin at the top-left pixel and rotation centre ``(W/2, H/2)``
in OpenCV pixel coordinates). The result is faithful *in distribution*, not bit-exact:

* Geometric ops (shear/translate/rotate) use torchvision's bilinear ``grid_sample`` instead of
  ``cv2.warpAffine(INTER_LINEAR)``. OpenCV quantises sampling positions to 1/32 px and uses fixed-point
  weights, so pixels can differ by about one grey level (``BORDER_CONSTANT`` fill blending at the seam
  is reproduced). Integer translations (7 px) are exact in both.
* Sharpness saturates to [0, 255]; the official code casts an unclipped float array to ``uint8`` (wrap
  around / undefined for out-of-range values). Saturation is what PIL's ``ImageEnhance.Sharpness`` does and
  is the evident intent.
* AutoContrast computes its scale in float32 instead of float64, so a pixel may land one level lower at
  truncation boundaries.
* Brightness (uint8 truncation after multiplying), Equalize (PIL's algorithm) and Identity match exactly.
* The crop/flip run on the PIL image exactly like the official ``torchvision.transforms`` (v1) pipeline
  (PIL bicubic resampling). If a tensor is given instead of a PIL image, torchvision's tensor bicubic
  (antialiased) resize is used, which differs slightly from PIL.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ..models.input_checks import to_rgb

__all__ = [
    "ALBEF_AUGMENT_OPS",
    "ALBEF_TRAIN_PRESETS",
    "CLIP_MEAN",
    "CLIP_STD",
    "MAX_LEVEL",
    "AlbefRandomAugment",
    "SampledOp",
    "ToRGB",
    "albef_eval_transform",
    "albef_train_transform",
]

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

#: Level scale of the official RandAugment implementation (a magnitude ``M`` means ``M / MAX_LEVEL``).
MAX_LEVEL: int = 10

#: The ops ALBEF's training transform enables (``augs=[...]`` in the official configs), in that order.
ALBEF_AUGMENT_OPS: tuple[str, ...] = (
    "Identity",
    "AutoContrast",
    "Equalize",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
)

#: preset name -> (image size, RandomResizedCrop scale range)
ALBEF_TRAIN_PRESETS: dict[str, tuple[int, tuple[float, float]]] = {
    "pretrain": (256, (0.2, 1.0)),
    "train": (384, (0.5, 1.0)),
    "retrieval": (384, (0.5, 1.0)),
}

_SIGNED_OPS = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})
_FILL_VALUE = 128  # official replace_value (128, 128, 128)
_TRANSLATE_CONST = 10.0  # pixels at MAX_LEVEL
_SHEAR_CONST = 0.3  # shear factor at MAX_LEVEL
_ROTATE_CONST = 30.0  # degrees at MAX_LEVEL


def _warp_with_fill(image: torch.Tensor, warp: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Bilinear warp of a uint8 image with OpenCV ``BORDER_CONSTANT`` semantics and fill value 128.

    ``warp`` is run (with zero padding) on the float image plus a coverage channel of ones; OpenCV gives
    ``sum_in(w * v) + (1 - sum_in(w)) * fill``, which is reproduced here (up to its fixed-point rounding) (torchvision's own ``fill``
    argument instead blends ``coverage * (interp - fill) + fill``, which differs at the seam).
    """
    channels = image.shape[-3]
    stacked = torch.cat([image.to(torch.float32), torch.ones_like(image[..., :1, :, :], dtype=torch.float32)], -3)
    warped = warp(stacked)
    values, coverage = warped[..., :channels, :, :], warped[..., channels:, :, :]
    out = values + (1.0 - coverage) * _FILL_VALUE
    return out.round_().clamp_(0, 255).to(torch.uint8)


class SampledOp(NamedTuple):
    """One op drawn by :meth:`AlbefRandomAugment.sample_ops`.

    ``value`` is the signed op argument (enhance factor, shear factor, pixels or degrees), ``None`` for
    argument-less ops and for ops that were drawn but not applied.
    """

    name: str
    applied: bool
    value: float | None


def _is_image_tensor(inpt: Any) -> bool:
    return isinstance(inpt, tv_tensors.Image) or (
        isinstance(inpt, torch.Tensor) and not isinstance(inpt, tv_tensors.TVTensor)
    )


class AlbefRandomAugment(v2.Transform):
    """ALBEF's ``RandomAugment(N, M)``: apply ``num_ops`` ops, each with probability ``apply_prob``.

    Behaviour of the official implementation, reproduced here:

    * ``num_ops`` op names are drawn uniformly **with replacement** from ``ops`` (default
      :data:`ALBEF_AUGMENT_OPS`).
    * Each drawn op is applied with probability ``apply_prob`` (0.5), always at the fixed level
      ``magnitude`` (no magnitude sampling).
    * Arguments at level ``M`` (``m = M / MAX_LEVEL``): Brightness/Sharpness enhance factor
      ``0.1 + 1.8 m`` (1.36 for M=7, i.e. only brighten/sharpen); ShearX/ShearY shear factor ``0.3 m``
      (affine shear coefficient, origin at the top-left pixel); TranslateX/TranslateY ``10 m`` pixels;
      Rotate ``30 m`` degrees about ``(W/2, H/2)``. Geometric ops take a random sign and fill with
      ``(128, 128, 128)``.
    * Works on ``uint8`` RGB images: a PIL image (returned as a PIL image) or a ``uint8`` tensor
      ``[..., C, H, W]`` (returned as a tensor of the same type).

    RNG consumption order (per call): ``torch.randint`` for the op indices, then for each drawn op one
    ``torch.rand`` apply coin and, if applied and signed, one ``torch.rand`` for the sign. All draws use
    ``generator`` (global torch RNG when ``None``).

    See the module docstring for where the numerics differ from the OpenCV-based original.
    """

    _transformed_types = (PIL.Image.Image, _is_image_tensor)

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 7,
        generator: torch.Generator | None = None,
        *,
        ops: Sequence[str] | None = None,
        apply_prob: float = 0.5,
    ) -> None:
        super().__init__()
        if isinstance(num_ops, bool) or not isinstance(num_ops, int) or num_ops < 0:
            raise ValueError(f"num_ops must be a non-negative int, got {num_ops!r}")
        if isinstance(magnitude, bool) or not isinstance(magnitude, (int, float)) or not 0 <= magnitude <= MAX_LEVEL:
            raise ValueError(f"magnitude must be a number in [0, {MAX_LEVEL}], got {magnitude!r}")
        if isinstance(apply_prob, bool) or not isinstance(apply_prob, (int, float)) or not 0.0 <= apply_prob <= 1.0:
            raise ValueError(f"apply_prob must be a number in [0, 1], got {apply_prob!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if ops is None:
            ops = ALBEF_AUGMENT_OPS
        if isinstance(ops, str):
            raise TypeError("ops must be a sequence of op names, not a single string")
        ops = tuple(ops)
        unknown = [op for op in ops if op not in ALBEF_AUGMENT_OPS]
        if unknown:
            raise ValueError(f"Unsupported RandomAugment op(s) {unknown}; supported ops are {list(ALBEF_AUGMENT_OPS)}")
        if not ops:
            raise ValueError("ops must contain at least one op name")

        self.num_ops = num_ops
        self.magnitude = float(magnitude)
        self.apply_prob = float(apply_prob)
        self.ops = ops
        self.generator = generator

    # ------------------------------------------------------------------ sampling
    def op_magnitude(self, name: str) -> float | None:
        """Unsigned argument of op ``name`` at this transform's magnitude (``None`` if it takes none)."""
        m = self.magnitude / MAX_LEVEL
        if name in ("Brightness", "Sharpness"):
            return 0.1 + 1.8 * m
        if name in ("ShearX", "ShearY"):
            return _SHEAR_CONST * m
        if name in ("TranslateX", "TranslateY"):
            return _TRANSLATE_CONST * m
        if name == "Rotate":
            return _ROTATE_CONST * m
        if name in ALBEF_AUGMENT_OPS:
            return None
        raise ValueError(f"Unknown op {name!r}; supported ops are {list(ALBEF_AUGMENT_OPS)}")

    def _rand(self) -> float:
        return float(torch.rand(1, generator=self.generator).item())

    def sample_ops(self) -> list[SampledOp]:
        """Draw the ops for one image (consumes the RNG exactly like a call of the transform)."""
        if self.num_ops == 0:
            return []
        indices = torch.randint(len(self.ops), (self.num_ops,), generator=self.generator).tolist()
        sampled = []
        for index in indices:
            name = self.ops[index]
            # official: ``if np.random.random() > prob: continue``
            if self._rand() > self.apply_prob:
                sampled.append(SampledOp(name, False, None))
                continue
            value = self.op_magnitude(name)
            if name in _SIGNED_OPS and self._rand() > 0.5:
                value = -value
            sampled.append(SampledOp(name, True, value))
        return sampled

    # ------------------------------------------------------------------ applying
    @staticmethod
    def apply_op(image: torch.Tensor, name: str, value: float | None = None) -> torch.Tensor:
        """Apply one op with an explicit (signed) argument to a ``uint8`` image tensor ``[..., C, H, W]``.

        Sign conventions follow the official affine matrices: ShearX maps ``x -> x + value * y`` and ShearY
        ``y -> y + value * x`` (origin at the top-left pixel centre); TranslateX/Y move the content by
        ``-value`` pixels (the official matrix is ``[[1, 0, -offset], [0, 1, 0]]``); Rotate turns the
        content counter-clockwise by ``value`` degrees about ``(W/2, H/2)`` (``cv2.getRotationMatrix2D``).
        """
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8:
            found = image.dtype if isinstance(image, torch.Tensor) else type(image).__name__
            raise TypeError(f"AlbefRandomAugment works on uint8 images (as the original); got {found}")
        if image.ndim < 3 or image.shape[-3] not in (1, 3):
            raise ValueError(f"Expected an image tensor of shape [..., 1 or 3, H, W], got {tuple(image.shape)}")
        if name not in ALBEF_AUGMENT_OPS:
            raise ValueError(f"Unknown op {name!r}; supported ops are {list(ALBEF_AUGMENT_OPS)}")
        if name in ("Identity", "AutoContrast", "Equalize"):
            if name == "AutoContrast":
                return F.autocontrast(image)
            if name == "Equalize":
                return F.equalize(image)
            return image
        if value is None:
            raise ValueError(f"Op {name!r} needs a value")
        if name == "Brightness":
            return F.adjust_brightness(image, value)
        if name == "Sharpness":
            return F.adjust_sharpness(image, value)

        height, width = image.shape[-2:]
        bilinear = InterpolationMode.BILINEAR
        # torchvision's ``center`` is measured from the top-left image *corner*; OpenCV's origin is the
        # *centre* of the top-left pixel, hence the +0.5 offsets below.
        if name in ("ShearX", "ShearY"):
            # torchvision's forward shear matrix is [[1, -tan(sx)], [-tan(sy), 1]] (angles in degrees).
            angle = -math.degrees(math.atan(value))
            shear = [angle, 0.0] if name == "ShearX" else [0.0, angle]
            return _warp_with_fill(
                image,
                lambda x: F.affine(
                    x,
                    angle=0.0,
                    translate=[0.0, 0.0],
                    scale=1.0,
                    shear=shear,
                    interpolation=bilinear,
                    center=[0.5, 0.5],
                ),
            )
        if name in ("TranslateX", "TranslateY"):
            translate = [-value, 0.0] if name == "TranslateX" else [0.0, -value]
            return _warp_with_fill(
                image,
                lambda x: F.affine(
                    x, angle=0.0, translate=translate, scale=1.0, shear=[0.0, 0.0], interpolation=bilinear
                ),
            )
        if name == "Rotate":
            center = [width / 2 + 0.5, height / 2 + 0.5]
            return _warp_with_fill(
                image,
                lambda x: F.rotate(x, angle=value, interpolation=bilinear, expand=False, center=center),
            )
        raise ValueError(f"Unknown op {name!r}; supported ops are {list(ALBEF_AUGMENT_OPS)}")

    # ------------------------------------------------------------------ v2.Transform API
    def check_inputs(self, flat_inputs: list[Any]) -> None:
        others = [
            type(x).__name__
            for x in flat_inputs
            if isinstance(x, tv_tensors.TVTensor) and not isinstance(x, tv_tensors.Image)
        ]
        if others:
            raise TypeError(f"AlbefRandomAugment only transforms images; got unsupported input(s) {others}")
        if not any(isinstance(x, (PIL.Image.Image, torch.Tensor)) for x in flat_inputs):
            found = [type(x).__name__ for x in flat_inputs]
            raise TypeError(f"AlbefRandomAugment expects a PIL image or a uint8 image tensor, got {found}")

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"ops": [op for op in self.sample_ops() if op.applied]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, PIL.Image.Image):
            if inpt.mode not in ("RGB", "L"):
                raise ValueError(f"AlbefRandomAugment expects an RGB (or L) PIL image, got mode {inpt.mode!r}")
            image = F.pil_to_tensor(inpt)
            for op in params["ops"]:
                image = self.apply_op(image, op.name, op.value)
            return F.to_pil_image(image, mode=inpt.mode)
        image = inpt.as_subclass(torch.Tensor)
        for op in params["ops"]:
            image = self.apply_op(image, op.name, op.value)
        return tv_tensors.wrap(image, like=inpt) if isinstance(inpt, tv_tensors.Image) else image

    def extra_repr(self) -> str:
        return (
            f"num_ops={self.num_ops}, magnitude={self.magnitude}, apply_prob={self.apply_prob}, ops={list(self.ops)}"
        )


class ToRGB(v2.Transform):
    """Validate the input image and convert it to RGB (PIL: :func:`~vlalign.models.input_checks.to_rgb`, i.e.
    ``.convert("RGB")`` with 16-bit images scaled to 8 bits and 32-bit int / float images refused; uint8 tensor:
    1 -> 3 channels).

    Args:
        pil_output: return tensors as RGB PIL images too, for pipelines of PIL-only operations (FDT's MoCo-v2).
    """

    def __init__(self, pil_output: bool = False) -> None:
        super().__init__()
        self.pil_output = pil_output

    def forward(self, *inputs: Any) -> Any:
        if len(inputs) != 1:
            raise TypeError(f"The image transform takes a single image, got {len(inputs)} inputs")
        inpt = inputs[0]
        if isinstance(inpt, PIL.Image.Image):
            return to_rgb(inpt)
        if _is_image_tensor(inpt):
            if inpt.ndim != 3 or inpt.shape[0] not in (1, 3):
                raise ValueError(f"Expected an image tensor of shape [1 or 3, H, W], got {tuple(inpt.shape)}")
            if inpt.dtype != torch.uint8:
                raise TypeError(f"Expected a uint8 image tensor, got dtype {inpt.dtype}")
            rgb = F.grayscale_to_rgb(inpt)
            return F.to_pil_image(rgb) if self.pil_output else tv_tensors.Image(rgb)
        hint = " (use PIL.Image.fromarray first)" if type(inpt).__module__ == "numpy" else ""
        raise TypeError(f"Expected a PIL image or a uint8 image tensor, got {type(inpt).__name__}{hint}")


def _check_image_size(image_size: Any) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return image_size


def _to_normalized_tensor() -> list[v2.Transform]:
    return [
        v2.ToImage(),  # PIL -> uint8 tensor (no-op for tensors)
        v2.ToDtype(torch.float32, scale=True),  # == ToTensor's /255
        v2.Normalize(mean=list(CLIP_MEAN), std=list(CLIP_STD)),
        v2.ToPureTensor(),
    ]


def albef_train_transform(
    preset: str = "pretrain",
    image_size: int | None = None,
    generator: torch.Generator | None = None,
) -> v2.Compose:
    """ALBEF's training image transform.

    Args:
        preset: ``"pretrain"`` (256 px, crop scale (0.2, 1.0)) or ``"train"`` / ``"retrieval"``
            (384 px, crop scale (0.5, 1.0)).
        image_size: overrides the preset's output resolution (e.g. 32-64 px for tiny models).
        generator: ``torch.Generator`` for :class:`AlbefRandomAugment`. ``RandomResizedCrop`` and
            ``RandomHorizontalFlip`` are torchvision classes and always use the global torch RNG.

    Returns:
        A ``v2.Compose`` mapping a PIL image (any mode; converted to RGB) or a ``uint8`` ``[1|3, H, W]``
        tensor to a normalised ``float32`` tensor ``[3, s, s]``.
    """
    if not isinstance(preset, str) or preset.lower() not in ALBEF_TRAIN_PRESETS:
        raise ValueError(f"Unknown ALBEF transform preset {preset!r}; valid presets are {sorted(ALBEF_TRAIN_PRESETS)}")
    size, scale = ALBEF_TRAIN_PRESETS[preset.lower()]
    if image_size is not None:
        size = _check_image_size(image_size)
    return v2.Compose(
        [
            ToRGB(),
            v2.RandomResizedCrop(
                size=(size, size),
                scale=scale,
                ratio=(3.0 / 4.0, 4.0 / 3.0),
                interpolation=InterpolationMode.BICUBIC,
                antialias=True,
            ),
            v2.RandomHorizontalFlip(p=0.5),
            v2.ToImage(),  # the official RandomAugment works on np.array(img) (uint8 HWC)
            AlbefRandomAugment(num_ops=2, magnitude=7, generator=generator),
            *_to_normalized_tensor(),
        ]
    )


def albef_eval_transform(image_size: int = 384) -> v2.Compose:
    """ALBEF's evaluation transform: square bicubic ``Resize((s, s))`` (no crop) -> ToTensor -> Normalize."""
    size = _check_image_size(image_size)
    return v2.Compose(
        [
            ToRGB(),
            v2.Resize((size, size), interpolation=InterpolationMode.BICUBIC, antialias=True),
            *_to_normalized_tensor(),
        ]
    )
