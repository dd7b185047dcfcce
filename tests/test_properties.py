"""Property-based tests (hypothesis): processors on random captions (any unicode) and random image sizes and modes,
the collator on random batch compositions, and ITM hard-negative sampling on random similarities and image indices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlalign.data.collator import AlignmentCollator
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.methods import get_method, method_names
from vlalign.models.input_checks import is_blank
from vlalign.models.losses import sample_hard_negatives
from vlalign.recipes import dataset_captions

IMAGE_SIZE = 32
PROPERTY_SETTINGS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16"]


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic_dataset(num_train=12, num_validation=0, num_test=0, image_size=IMAGE_SIZE, seed=3)


@pytest.fixture(scope="module", params=method_names())
def processor(request, dataset):
    method = get_method(request.param)
    return method.build_processor(method.build_tokenizer(dataset_captions(dataset)), IMAGE_SIZE)


@st.composite
def images(draw) -> Image.Image:
    """A random image of any supported mode and size (1–64 px a side)."""
    width, height = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    mode = draw(st.sampled_from(MODES))
    seed = draw(st.integers(0, 2**16))
    depth = np.uint16 if mode == "I;16" else np.uint8
    samples = np.random.default_rng(seed).integers(0, np.iinfo(depth).max, (height, width, 4), dtype=depth)
    if mode == "I;16":
        return Image.fromarray(samples[..., 0])
    return Image.fromarray(samples).convert(mode)  # an RGBA image in the drawn mode


@PROPERTY_SETTINGS
@given(caption=st.text(st.characters(exclude_categories=()), max_size=200))  # lone surrogates included
def test_any_caption_gives_valid_ids_or_a_clear_error(processor, caption):
    try:
        encoded = processor(text=[caption, "a red circle"], preset="eval")
    except (ValueError, TypeError) as err:
        assert "Text 0" in str(err)
        assert is_blank(processor.clean_caption(caption)) or "not valid Unicode" in str(err)  # blank: invisible only
        return
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert 0 <= int(ids.min()) and int(ids.max()) < len(processor.tokenizer)
    assert mask[:, 0].all()


@PROPERTY_SETTINGS
@given(image=images())
def test_any_image_mode_and_size_gives_finite_pixel_values(processor, image):
    pixel_values = processor(images=image)["pixel_values"]
    assert pixel_values.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.isfinite(pixel_values).all()
    if image.mode != "I;16":  # every 8-bit mode is what the official loaders' `.convert("RGB")` gives
        torch.testing.assert_close(pixel_values, processor(images=image.convert("RGB"))["pixel_values"])


@PROPERTY_SETTINGS
@given(
    picks=st.lists(st.integers(0, 11), min_size=1, max_size=6),
    pair_layout=st.booleans(),
    preset=st.sampled_from(["pretrain", "train", "eval"]),
)
def test_collator_on_any_batch_composition(processor, dataset, picks, pair_layout, preset):
    """Any batch size, repeated images (pair rows of one image), either layout: one row per input, idx kept."""
    rows = [dataset["train"][i] for i in picks]
    if pair_layout:
        rows = [
            {"image": r["image"], "caption": r["captions"][0], "image_id": r["image_id"], "idx": i}
            for r, i in zip(rows, picks, strict=True)
        ]
    collator = AlignmentCollator(
        processor, preset=preset, text_column="caption" if pair_layout else "captions", idx_column="idx"
    )
    batch = collator(rows)
    assert batch["pixel_values"].shape == (len(rows), 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == len(rows)
    if pair_layout:
        assert batch["idx"].tolist() == picks
        for i, j in np.argwhere(np.equal.outer(picks, picks)):  # one image collates to the same pixels
            torch.testing.assert_close(batch["pixel_values"][i], batch["pixel_values"][j])
    else:
        assert "idx" not in batch


@st.composite
def similarities(draw) -> tuple[torch.Tensor, torch.Tensor]:
    """A `[B, B]` similarity (some entries possibly ±inf/NaN) and `[B]` image indices with duplicates."""
    size = draw(st.integers(1, 8))
    idx = torch.tensor(draw(st.lists(st.integers(0, 3), min_size=size, max_size=size)))
    values = draw(
        st.lists(
            st.one_of(st.floats(-50, 50), st.sampled_from([float("inf"), float("-inf"), float("nan")])),
            min_size=size * size,
            max_size=size * size,
        )
    )
    return torch.tensor(values).view(size, size), idx


@settings(max_examples=200, deadline=None)
@given(case=similarities(), seed=st.integers(0, 2**31))
def test_hard_negatives_are_never_the_positive_nor_the_same_image(case, seed):
    similarity, idx = case
    same_image = idx[:, None] == idx[None, :]
    rows, negatives = sample_hard_negatives(similarity, same_image, torch.Generator().manual_seed(seed))
    assert rows.tolist() == [i for i in range(len(idx)) if (idx != idx[i]).any()]  # exactly the rows that have one
    assert rows.shape == negatives.shape
    assert not same_image[rows, negatives].any()
    assert (negatives != rows).all()


@settings(max_examples=50, deadline=None)
@given(size=st.integers(2, 6), seed=st.integers(0, 2**31))
def test_hard_negative_weights_follow_the_similarity(size, seed):
    """One dominant candidate per row is drawn (softmax weights are valid: normalised over non-positives only)."""
    similarity = torch.zeros(size, size)
    target = (torch.arange(size) + 1) % size
    similarity[torch.arange(size), target] = 60.0
    similarity.fill_diagonal_(1e4)  # a huge positive similarity must not leak into the draw
    rows, negatives = sample_hard_negatives(
        similarity, torch.eye(size, dtype=torch.bool), torch.Generator().manual_seed(seed)
    )
    assert rows.tolist() == list(range(size))
    assert negatives.tolist() == target.tolist()
