"""Tests for the ALBEF training-time image augmentations (vlalign.data.transforms)."""

from __future__ import annotations

import math
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from vlalign.data.transforms import (
    ALBEF_AUGMENT_OPS,
    CLIP_MEAN,
    CLIP_STD,
    AlbefRandomAugment,
    albef_eval_transform,
    albef_train_transform,
)

MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)


def _random_pil(height: int = 90, width: int = 120, seed: int = 0, mode: str = "RGB") -> Image.Image:
    array = np.random.RandomState(seed).randint(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(array, mode="RGB").convert(mode)


def _normalized(value: float) -> torch.Tensor:
    """CLIP-normalised value of a uint8 grey level, per channel."""
    return (torch.full((3, 1, 1), value / 255.0) - MEAN) / STD


def _cv2_warp_reference(src: np.ndarray, matrix: np.ndarray, fill: float = 128.0) -> np.ndarray:
    """Float re-statement of cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT) with a forward 2x3 matrix."""
    channels, height, width = src.shape
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    sx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    sy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = sx - x0, sy - y0
    out = np.zeros(src.shape, dtype=np.float64)
    for dy in (0, 1):
        for dx in (0, 1):
            weight = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
            taps = src[:, np.clip(yi, 0, height - 1), np.clip(xi, 0, width - 1)].astype(np.float64)
            out += weight * np.where(inside, taps, fill)
    return np.clip(np.round(out), 0, 255)


# ----------------------------------------------------------------------------- constants & presets


def test_clip_stats():
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


@pytest.mark.parametrize(
    ("preset", "image_size", "expected"),
    [("pretrain", None, 256), ("train", None, 384), ("retrieval", None, 384), ("pretrain", 48, 48), ("train", 32, 32)],
)
def test_train_transform_output(preset, image_size, expected):
    torch.manual_seed(0)
    out = albef_train_transform(preset, image_size=image_size)(_random_pil())
    assert type(out) is torch.Tensor
    assert out.shape == (3, expected, expected)
    assert out.dtype == torch.float32
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    assert bool((out >= low - 1e-5).all()) and bool((out <= high + 1e-5).all())
    assert out.std() > 0.1  # a real (non-constant) image came through


def test_crop_scale_and_structure_follow_the_preset():
    for preset, scale, size in [("pretrain", (0.2, 1.0), 256), ("retrieval", (0.5, 1.0), 384)]:
        transforms = albef_train_transform(preset).transforms
        crop = next(t for t in transforms if type(t).__name__ == "RandomResizedCrop")
        assert tuple(crop.scale) == scale and tuple(crop.size) == (size, size)
        assert crop.ratio == pytest.approx((3 / 4, 4 / 3))
        assert crop.interpolation.value == "bicubic"
        names = [type(t).__name__ for t in transforms]
        assert names.index("RandomResizedCrop") < names.index("RandomHorizontalFlip")
        assert names.index("RandomHorizontalFlip") < names.index("AlbefRandomAugment") < names.index("Normalize")
        augment = transforms[names.index("AlbefRandomAugment")]
        assert (augment.num_ops, augment.magnitude, augment.apply_prob) == (2, 7.0, 0.5)
        assert augment.ops == ALBEF_AUGMENT_OPS


def test_constant_gray_image_normalises_to_expected_levels():
    # A uniform 128 image survives crop/flip/geometric ops (fill is 128) and AutoContrast/Equalize/Sharpness;
    # only Brightness changes it: 128 -> 174 -> 236. Checks ToTensor scaling and CLIP normalisation exactly.
    image = Image.new("RGB", (70, 50), (128, 128, 128))
    allowed = [_normalized(v) for v in (128, 174, 236)]
    seen = set()
    for seed in range(30):
        torch.manual_seed(seed)
        out = albef_train_transform("pretrain", image_size=32)(image)
        assert torch.allclose(out, out[:, :1, :1].expand_as(out), atol=1e-6)
        matches = [i for i, ref in enumerate(allowed) if torch.allclose(out[:, :1, :1], ref, atol=1e-5)]
        assert len(matches) == 1, out[:, 0, 0]
        seen.add(matches[0])
    assert seen >= {0, 1}


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_any_pil_mode_is_converted_to_rgb(mode):
    torch.manual_seed(0)
    out = albef_train_transform("pretrain", image_size=40)(_random_pil(mode=mode))
    assert out.shape == (3, 40, 40)


def test_uint8_tensor_input_is_accepted():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8)
    assert albef_train_transform("train", image_size=36)(image).shape == (3, 36, 36)
    gray = torch.randint(0, 256, (1, 60, 80), dtype=torch.uint8)
    assert albef_train_transform("train", image_size=36)(gray).shape == (3, 36, 36)


def test_eval_transform_is_square_resize_and_normalise():
    image = Image.new("RGB", (100, 40), (10, 128, 250))
    out = albef_eval_transform(24)(image)
    assert out.shape == (3, 24, 24)
    expected = (torch.tensor([10, 128, 250]).view(3, 1, 1) / 255.0 - MEAN) / STD
    assert torch.allclose(out, expected.expand(3, 24, 24), atol=1e-5)


def test_transform_is_picklable_with_generator():
    transform = albef_train_transform("pretrain", image_size=32, generator=torch.Generator().manual_seed(3))
    clone = pickle.loads(pickle.dumps(transform))
    image = _random_pil()
    torch.manual_seed(1)
    a = transform(image)
    torch.manual_seed(1)
    b = clone(image)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- reproducibility


def _run_train(seed_global: int, seed_gen: int, n: int = 6) -> list[torch.Tensor]:
    transform = albef_train_transform("pretrain", image_size=48, generator=torch.Generator().manual_seed(seed_gen))
    torch.manual_seed(seed_global)
    return [transform(_random_pil(seed=i)) for i in range(n)]


def test_same_seeds_reproduce_and_different_seeds_differ():
    first, again = _run_train(0, 0), _run_train(0, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    other_global = _run_train(1, 0)
    assert not all(torch.equal(a, b) for a, b in zip(first, other_global, strict=True))
    other_gen = _run_train(0, 1)
    assert not all(torch.equal(a, b) for a, b in zip(first, other_gen, strict=True))


def test_generator_controls_augment_and_leaves_global_rng_alone():
    image = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(9))
    outs = []
    for seed in (5, 5, 6):
        augment = AlbefRandomAugment(generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(123)
        outs.append(torch.stack([augment(image) for _ in range(8)]))
        # the global RNG was not consumed
        assert torch.equal(torch.rand(4), _fresh_rand(123))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def _fresh_rand(seed: int) -> torch.Tensor:
    return torch.rand(4, generator=torch.Generator().manual_seed(seed))


def test_global_rng_drives_augment_without_generator():
    image = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(9))
    augment = AlbefRandomAugment()
    results = []
    for seed in (11, 11, 12):
        torch.manual_seed(seed)
        results.append(torch.stack([augment(image) for _ in range(8)]))
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], results[2])


def test_call_applies_exactly_the_sampled_ops():
    image = torch.randint(0, 256, (3, 33, 41), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    augment = AlbefRandomAugment(generator=torch.Generator().manual_seed(4))
    planner = AlbefRandomAugment(generator=torch.Generator().manual_seed(4))
    applied_any = False
    for _ in range(20):
        expected = image
        for op in planner.sample_ops():
            if op.applied:
                applied_any = applied_any or op.name != "Identity"
                expected = AlbefRandomAugment.apply_op(expected, op.name, op.value)
        assert torch.equal(augment(image), expected)
    assert applied_any


def test_pil_in_pil_out():
    augment = AlbefRandomAugment(generator=torch.Generator().manual_seed(0))
    out = augment(_random_pil())
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (120, 90)


# ----------------------------------------------------------------------------- individual ops


def test_op_magnitudes_at_level_7():
    augment = AlbefRandomAugment(num_ops=2, magnitude=7)
    assert augment.op_magnitude("Brightness") == pytest.approx(1.36)
    assert augment.op_magnitude("Sharpness") == pytest.approx(1.36)
    assert augment.op_magnitude("ShearX") == pytest.approx(0.21)
    assert augment.op_magnitude("ShearY") == pytest.approx(0.21)
    assert augment.op_magnitude("TranslateX") == pytest.approx(7.0)
    assert augment.op_magnitude("TranslateY") == pytest.approx(7.0)
    assert augment.op_magnitude("Rotate") == pytest.approx(21.0)
    for name in ("Identity", "AutoContrast", "Equalize"):
        assert augment.op_magnitude(name) is None


def test_brightness_brightens_mid_gray_by_factor():
    gray = torch.full((3, 8, 8), 128, dtype=torch.uint8)
    out = AlbefRandomAugment.apply_op(gray, "Brightness", 1.36)
    assert torch.equal(out, torch.full_like(gray, 174))  # floor(128 * 1.36 = 174.08), as the official LUT
    bright = torch.full((3, 4, 4), 200, dtype=torch.uint8)
    assert torch.equal(AlbefRandomAugment.apply_op(bright, "Brightness", 1.36), torch.full_like(bright, 255))


def test_sharpness_matches_official_formula():
    image = torch.randint(0, 256, (3, 12, 14), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = AlbefRandomAugment.apply_op(image, "Sharpness", 1.36).numpy().astype(np.float64)
    img = image.numpy().astype(np.float64)
    kernel = np.ones((3, 3)) / 13.0
    kernel[1, 1] = 5.0 / 13.0
    degenerate = np.zeros_like(img)
    for dy in range(3):
        for dx in range(3):
            degenerate[:, 1:-1, 1:-1] += kernel[dy, dx] * img[:, dy : dy + 10, dx : dx + 12]
    degenerate = np.round(degenerate)
    expected = img.copy()
    expected[:, 1:-1, 1:-1] = np.floor(
        np.clip(degenerate[:, 1:-1, 1:-1] + 1.36 * (img[:, 1:-1, 1:-1] - degenerate[:, 1:-1, 1:-1]), 0, 255)
    )
    assert np.abs(out - expected).max() <= 1
    assert np.array_equal(out[:, 0], img[:, 0]) and np.array_equal(out[:, :, -1], img[:, :, -1])  # borders kept
    assert np.abs(out - img).max() > 10  # it did sharpen


def test_autocontrast_stretches_each_channel():
    image = torch.zeros(3, 6, 6, dtype=torch.uint8)
    image[0] = torch.linspace(50, 150, 36).round().to(torch.uint8).view(6, 6)
    image[1] = 77  # constant channel is left unchanged
    image[2] = torch.linspace(0, 255, 36).round().to(torch.uint8).view(6, 6)
    out = AlbefRandomAugment.apply_op(image, "AutoContrast")
    assert out[0].min() == 0 and out[0].max() >= 254
    assert torch.equal(out[1], image[1])
    assert torch.equal(out[2], image[2])


def test_equalize_matches_pil():
    pil = _random_pil(40, 50, seed=3)
    pil = Image.fromarray((np.asarray(pil) // 3 + 40).astype(np.uint8))  # narrow histogram
    out = AlbefRandomAugment.apply_op(torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1), "Equalize")
    expected = torch.from_numpy(np.asarray(ImageOps.equalize(pil)).copy()).permute(2, 0, 1)
    assert torch.equal(out, expected)


def test_identity_is_identity():
    image = torch.randint(0, 256, (3, 9, 9), dtype=torch.uint8)
    assert torch.equal(AlbefRandomAugment.apply_op(image, "Identity"), image)


@pytest.mark.parametrize(("name", "axis"), [("TranslateX", 1), ("TranslateY", 0)])
@pytest.mark.parametrize("value", [7.0, -7.0])
def test_translate_moves_pixel_by_exactly_7_and_fills_128(name, axis, value):
    image = torch.zeros(3, 30, 30, dtype=torch.uint8)
    image[:, 15, 15] = 255
    out = AlbefRandomAugment.apply_op(image, name, value)
    interior = out[:, 8:23, 8:23]
    bright = (interior == 255).nonzero()
    assert bright.shape[0] == 3  # one pixel, three channels, nothing smeared
    position = [15, 15]
    position[axis] -= int(value)  # official matrix [[1, 0, -offset], [0, 1, 0]]
    assert torch.equal(out[:, position[0], position[1]], torch.full((3,), 255, dtype=torch.uint8))
    assert int((interior > 0).sum()) == 3
    # the 7-pixel strip uncovered by the shift holds the fill value
    if axis == 1:
        strip = out[:, :, -7:] if value > 0 else out[:, :, :7]
    else:
        strip = out[:, -7:, :] if value > 0 else out[:, :7, :]
    assert bool((strip == 128).all())


def test_shear_factor_is_affine_coefficient_from_top_left_origin():
    image = torch.zeros(3, 40, 40, dtype=torch.uint8)
    image[:, 20, 10] = 200  # (x=10, y=20)
    out = AlbefRandomAugment.apply_op(image, "ShearX", 0.21)  # x' = x + 0.21 * y = 14.2
    assert out[0, 20, 13].item() == 0 and out[0, 20, 16].item() == 0
    assert out[0, 20, 14].item() == 160 and out[0, 20, 15].item() == 40
    out = AlbefRandomAugment.apply_op(image, "ShearX", -0.21)  # x' = 10 - 4.2 = 5.8
    assert out[0, 20, 5].item() == 40 and out[0, 20, 6].item() == 160
    transposed = image.transpose(1, 2).contiguous()  # (x=20, y=10)
    out = AlbefRandomAugment.apply_op(transposed, "ShearY", 0.21)  # y' = y + 0.21 * x = 14.2
    assert out[0, 14, 20].item() == 160 and out[0, 15, 20].item() == 40


def test_rotate_fills_with_128_and_turns_counter_clockwise():
    black = torch.zeros(3, 32, 32, dtype=torch.uint8)
    out = AlbefRandomAugment.apply_op(black, "Rotate", 21.0)
    for corner in (out[:, 0, 0], out[:, 0, -1], out[:, -1, 0], out[:, -1, -1]):
        assert torch.equal(corner, torch.full((3,), 128, dtype=torch.uint8))
    assert bool((out[:, 12:20, 12:20] == 0).all())
    # a bright blob right of the centre, rotated counter-clockwise (on screen) for a positive angle
    image = torch.zeros(3, 41, 41, dtype=torch.uint8)
    image[:, 19:22, 29:32] = 255
    ys = torch.arange(41, dtype=torch.float64).view(-1, 1)
    for angle in (21.0, -21.0):
        rotated = AlbefRandomAugment.apply_op(image, "Rotate", angle)[0].double()
        fill_only = AlbefRandomAugment.apply_op(torch.zeros_like(image), "Rotate", angle)[0].double()
        blob = rotated - fill_only  # the warp is linear: remove the fill contribution
        cy = float((blob * ys).sum() / blob.sum())
        # cv2.getRotationMatrix2D about (W/2, H/2) = (20.5, 20.5): y' - cy = -sin(a) (x - cx) + cos(a) (y - cy)
        rad = math.radians(angle)
        expected = 20.5 - math.sin(rad) * (30 - 20.5) + math.cos(rad) * (20 - 20.5)
        assert cy == pytest.approx(expected, abs=0.2)
        assert (cy < 20) == (angle > 0)  # positive angle: the blob right of the centre moves up


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ShearX", 0.21),
        ("ShearX", -0.21),
        ("ShearY", 0.21),
        ("ShearY", -0.21),
        ("TranslateX", 7.0),
        ("TranslateY", -7.0),
        ("Rotate", 21.0),
        ("Rotate", -21.0),
    ],
)
def test_geometric_ops_match_opencv_warp_semantics(name, value):
    height, width = 36, 44
    src = np.random.RandomState(5).randint(0, 256, size=(3, height, width)).astype(np.uint8)
    if name == "ShearX":
        matrix = np.array([[1.0, value, 0.0], [0.0, 1.0, 0.0]])
    elif name == "ShearY":
        matrix = np.array([[1.0, 0.0, 0.0], [value, 1.0, 0.0]])
    elif name == "TranslateX":
        matrix = np.array([[1.0, 0.0, -value], [0.0, 1.0, 0.0]])
    elif name == "TranslateY":
        matrix = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, -value]])
    else:  # cv2.getRotationMatrix2D((W / 2, H / 2), value, 1)
        alpha, beta = math.cos(math.radians(value)), math.sin(math.radians(value))
        cx, cy = width / 2, height / 2
        matrix = np.array([[alpha, beta, (1 - alpha) * cx - beta * cy], [-beta, alpha, beta * cx + (1 - alpha) * cy]])
    expected = _cv2_warp_reference(src, matrix)
    out = AlbefRandomAugment.apply_op(torch.from_numpy(src), name, value).numpy().astype(np.float64)
    diff = np.abs(out - expected)
    assert diff.max() <= 1.0
    assert (diff > 0).mean() < 0.05


# ----------------------------------------------------------------------------- sampling statistics


def test_sampling_with_replacement_uniform_ops_and_apply_probability():
    augment = AlbefRandomAugment(num_ops=2, magnitude=7, generator=torch.Generator().manual_seed(2024))
    draws = [augment.sample_ops() for _ in range(4000)]
    assert all(len(d) == 2 for d in draws)
    repeats = sum(d[0].name == d[1].name for d in draws) / len(draws)
    assert 0.08 < repeats < 0.12  # 1/10 with replacement (0 without)
    counts = Counter(op.name for d in draws for op in d)
    assert set(counts) == set(ALBEF_AUGMENT_OPS)
    for name in ALBEF_AUGMENT_OPS:
        assert 0.085 < counts[name] / 8000 < 0.115, (name, counts[name])
    applied = [op for d in draws for op in d if op.applied]
    assert 0.47 < len(applied) / 8000 < 0.53
    signed = [op for op in applied if op.name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")]
    negative = sum(op.value < 0 for op in signed) / len(signed)
    assert 0.45 < negative < 0.55
    for op in applied:
        magnitude = augment.op_magnitude(op.name)
        if magnitude is None:
            assert op.value is None
        else:
            assert abs(op.value) == pytest.approx(magnitude)
            if op.name in ("Brightness", "Sharpness"):
                assert op.value > 1.0  # only brighten / sharpen
    assert all(op.value is None for d in draws for op in d if not op.applied)


def test_apply_probability_extremes():
    image = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    never = AlbefRandomAugment(num_ops=3, apply_prob=0.0, ops=["Brightness"], generator=torch.Generator())
    assert torch.equal(never(image), image)
    always = AlbefRandomAugment(num_ops=2, apply_prob=1.0, ops=["Brightness"], generator=torch.Generator())
    assert torch.equal(always(image), torch.full_like(image, int(int(100 * 1.36) * 1.36)))


# ----------------------------------------------------------------------------- errors


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="valid presets.*pretrain.*retrieval.*train"):
        albef_train_transform("finetune")


@pytest.mark.parametrize("size", [0, -4, 32.0, True])
def test_bad_image_size(size):
    with pytest.raises(ValueError, match="image_size"):
        albef_train_transform("pretrain", image_size=size)


@pytest.mark.parametrize("bad", ["image.jpg", np.zeros((8, 8, 3), dtype=np.uint8), None, 3])
def test_non_image_input_raises(bad):
    with pytest.raises(TypeError, match="PIL image"):
        albef_train_transform("pretrain", image_size=32)(bad)
    with pytest.raises(TypeError):
        AlbefRandomAugment()(bad)


def test_bad_tensor_inputs_raise():
    with pytest.raises(TypeError, match="uint8"):
        albef_train_transform("pretrain", image_size=32)(torch.rand(3, 20, 20))
    with pytest.raises(ValueError, match="shape"):
        albef_train_transform("pretrain", image_size=32)(torch.zeros(4, 20, 20, dtype=torch.uint8))
    augment = AlbefRandomAugment(apply_prob=1.0, generator=torch.Generator())
    with pytest.raises(TypeError, match="uint8"):
        augment(torch.rand(3, 20, 20))


def test_bad_augment_arguments():
    with pytest.raises(ValueError, match="Unsupported RandomAugment op"):
        AlbefRandomAugment(ops=["Identity", "Solarize"])
    with pytest.raises(ValueError, match="magnitude"):
        AlbefRandomAugment(magnitude=11)
    with pytest.raises(ValueError, match="num_ops"):
        AlbefRandomAugment(num_ops=-1)
    with pytest.raises(ValueError, match="apply_prob"):
        AlbefRandomAugment(apply_prob=1.5)
    with pytest.raises(TypeError, match="generator"):
        AlbefRandomAugment(generator=1234)
    with pytest.raises(ValueError, match="Unknown op 'Solarize'"):
        AlbefRandomAugment.apply_op(torch.zeros(3, 4, 4, dtype=torch.uint8), "Solarize", 1.0)
    with pytest.raises(ValueError, match="needs a value"):
        AlbefRandomAugment.apply_op(torch.zeros(3, 4, 4, dtype=torch.uint8), "Rotate")
