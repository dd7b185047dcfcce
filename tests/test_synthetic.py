"""Tests of the procedurally generated synthetic shapes dataset."""

from __future__ import annotations

import collections
import re

import datasets
import numpy as np
import pytest

from vlalign.data.synthetic import (
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    ZERO_SHOT_CLASSES,
    make_synthetic_dataset,
    single_attribute_images,
    to_pair_dataset,
)

SPLITS = ("train", "validation", "test")


def _raw(dataset: datasets.Dataset) -> list[dict]:
    """Rows with encoded image bytes instead of decoded images (for exact comparisons)."""
    return list(dataset.cast_column("image", datasets.Image(decode=False)))


@pytest.fixture(scope="module")
def small() -> datasets.DatasetDict:
    return make_synthetic_dataset(num_train=120, num_validation=30, num_test=30, seed=0)


@pytest.fixture(scope="module")
def medium_train() -> datasets.Dataset:
    return make_synthetic_dataset(num_train=600, num_validation=0, num_test=0, seed=3)["train"]


def test_splits_sizes_and_features(small):
    assert list(small) == list(SPLITS)
    assert [small[s].num_rows for s in SPLITS] == [120, 30, 30]
    assert set(small["train"].column_names) == {"image", "image_id", "captions", "objects", "background"}
    assert isinstance(small["train"].features["image"], datasets.Image)
    row = small["test"][0]
    assert row["image"].mode == "RGB" and row["image"].size == (64, 64)
    assert row["background"] in BACKGROUNDS


def test_other_image_size():
    ds = make_synthetic_dataset(num_train=5, num_validation=0, num_test=0, image_size=32)
    assert ds["train"][0]["image"].size == (32, 32)
    assert all(0 <= v <= 32 for objs in ds["train"]["objects"] for o in objs for v in o["box"])


def test_deterministic_for_same_seed(small):
    again = make_synthetic_dataset(num_train=120, num_validation=30, num_test=30, seed=0)
    for split in SPLITS:
        assert _raw(small[split]) == _raw(again[split])


def test_different_seed_gives_different_content(small):
    other = make_synthetic_dataset(num_train=120, num_validation=30, num_test=30, seed=1)
    for split in SPLITS:
        a, b = _raw(small[split]), _raw(other[split])
        assert sum(x["image"]["bytes"] != y["image"]["bytes"] for x, y in zip(a, b, strict=True)) > 0.9 * len(a)
        assert small[split]["captions"] != other[split]["captions"]


def test_splits_differ_and_are_independent(small):
    train, val = _raw(small["train"]), _raw(small["validation"])
    assert train[0]["image"]["bytes"] != val[0]["image"]["bytes"]
    assert [r["captions"] for r in train[:30]] != [r["captions"] for r in val]
    # each split has its own random stream: resizing the train split leaves the others unchanged
    resized = make_synthetic_dataset(num_train=7, num_validation=30, num_test=30, seed=0)
    assert [r["captions"] for r in _raw(resized["validation"])] == [r["captions"] for r in val]
    assert _raw(resized["test"]) == [
        {**r, "image_id": r["image_id"] - 113} for r in _raw(small["test"])
    ]  # same content, ids shifted by the smaller train split


def test_image_ids_unique_across_splits(small):
    ids = [i for split in SPLITS for i in small[split]["image_id"]]
    assert len(ids) == len(set(ids)) == 180


def test_captions_distinct_and_mention_every_object(small):
    for split in SPLITS:
        for row in small[split].select_columns(["captions", "objects"]):
            caps = row["captions"]
            assert len(caps) == 2 and len(set(caps)) == 2
            kinds = collections.Counter((o["shape"], o["color"]) for o in row["objects"])
            for caption in caps:
                assert caption == caption.strip() and caption
                for (shape, color), n in kinds.items():
                    assert color in caption and shape in caption, (caption, row["objects"])
                    # plural (and a count word) exactly when several objects share shape and colour
                    plural = re.search(rf"\b(two|three) (small |large )?{color} {shape}s\b", caption)
                    assert bool(plural) == (n > 1), (caption, row["objects"])


def test_more_captions_per_image():
    ds = make_synthetic_dataset(num_train=40, num_validation=0, num_test=0, captions_per_image=5, seed=2)
    for caps in ds["train"]["captions"]:
        assert len(caps) == 5 and len(set(caps)) == 5


def test_objects_attributes_and_layout(small):
    for split in SPLITS:
        for row in small[split].select_columns(["objects"]):
            objects = row["objects"]
            assert 1 <= len(objects) <= 3
            for o in objects:
                assert o["shape"] in SHAPES and o["color"] in COLORS and o["size"] in SIZES
                assert o["position"] in POSITIONS
                x0, y0, x1, y1 = o["box"]
                assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
                col, row_ = min(2, int((x0 + x1) / 2 * 3 / 64)), min(2, int((y0 + y1) / 2 * 3 / 64))
                assert o["position"] == POSITIONS[row_ * 3 + col]
                assert max(abs(a - b) for a, b in zip(o["rgb"], COLORS[o["color"]], strict=True)) <= 12
            for i, a in enumerate(objects):  # boxes never overlap, so every object is fully visible
                for b in objects[i + 1 :]:
                    assert (
                        a["box"][2] <= b["box"][0]
                        or b["box"][2] <= a["box"][0]
                        or (a["box"][3] <= b["box"][1] or b["box"][3] <= a["box"][1])
                    )


def test_pixels_match_stored_boxes_and_colours(small):
    """The drawn pixels agree with the stored annotations (centre colour, tight box, background outside)."""
    for split in SPLITS:
        for row in small[split]:
            pixels = np.asarray(row["image"])
            background = np.array(BACKGROUNDS[row["background"]])
            covered = np.zeros(pixels.shape[:2], dtype=bool)
            for o in row["objects"]:
                x0, y0, x1, y1 = o["box"]
                rgb = np.array(o["rgb"])
                assert (pixels[(y0 + y1 - 1) // 2, (x0 + x1 - 1) // 2] == rgb).all(), o
                mask = (pixels[y0:y1, x0:x1] == rgb).all(-1)
                ys, xs = np.nonzero(mask)
                # the object touches all four sides of its box: the box is tight
                assert (xs.min(), ys.min(), xs.max(), ys.max()) == (0, 0, x1 - x0 - 1, y1 - y0 - 1), o
                # a filled shape: a good part of the box, and more for squares
                assert mask.mean() > (0.95 if o["shape"] == "square" else 0.3), o
                covered[y0:y1, x0:x1] = True
            # everything outside the boxes is plain background
            assert (pixels[~covered] == background).all()


def test_attributes_repeat_and_wording_varies(medium_train):
    rows = list(medium_train.select_columns(["captions", "objects", "background"]))
    # attribute combinations repeat, so no single attribute identifies an image
    kinds = collections.Counter(frozenset((o["shape"], o["color"]) for o in r["objects"]) for r in rows)
    shared = sum(n for n in kinds.values() if n > 1)
    assert shared > 0.3 * len(rows)
    assert all(sum(any(o["color"] == c for o in r["objects"]) for r in rows) > 0.1 * len(rows) for c in COLORS)
    assert {o["size"] for r in rows for o in r["objects"]} == set(SIZES)
    assert {r["background"] for r in rows} == set(BACKGROUNDS)
    assert {len(r["objects"]) for r in rows} == {1, 2, 3}
    # but captions are varied: most caption strings are distinct, and several templates are in use
    captions = [c for r in rows for c in r["captions"]]
    assert len(set(captions)) > 0.7 * len(captions)
    assert sum(r["background"] in " ".join(r["captions"]) for r in rows) > 0.3 * len(rows)
    assert sum(any(s in c for c in r["captions"] for s in ("small", "large")) for r in rows) > 0.2 * len(rows)
    assert any(re.search(r"\b(two|three) ", c) for c in captions)
    assert any(re.search(r"\b(above|below|to the left of|to the right of)\b", c) for c in captions)


def test_to_pair_dataset(small):
    evaluation = small["validation"]
    pairs = to_pair_dataset(evaluation)
    assert pairs.column_names == ["image", "caption", "image_id"]
    expected = [(r["image_id"], c) for r in evaluation for c in r["captions"]]
    assert list(zip(pairs["image_id"], pairs["caption"], strict=True)) == expected
    raw_eval = {r["image_id"]: r["image"]["bytes"] for r in _raw(evaluation)}
    for r in _raw(pairs):
        assert r["image"]["bytes"] == raw_eval[r["image_id"]]
    assert pairs[0]["image"].size == (64, 64)
    assert to_pair_dataset(evaluation.select([])).num_rows == 0
    with pytest.raises(ValueError, match="captions"):
        to_pair_dataset(pairs)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_train": -1}, {"image_size": 8}, {"captions_per_image": 0}, {"captions_per_image": 6}],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        make_synthetic_dataset(**{"num_train": 2, "num_validation": 0, "num_test": 0, **kwargs})


@pytest.mark.parametrize("attribute", ["shape", "color"])
def test_single_attribute_images(small, attribute):
    """The zero-shot sets: every image whose objects share one value of the attribute, labelled with that value."""
    test = small["test"]
    expected = [objects[0][attribute] for objects in test["objects"] if len({o[attribute] for o in objects}) == 1]
    labelled = single_attribute_images(test, attribute)
    assert labelled.column_names == ["image", "label"]
    names = labelled.features["label"].names
    assert names == list(ZERO_SHOT_CLASSES[attribute]) and len(names) == (5 if attribute == "shape" else 8)
    assert [names[label] for label in labelled["label"]] == expected and 0 < len(expected) < len(test)


def test_single_attribute_images_refuses_other_attributes(small):
    with pytest.raises(ValueError, match="attribute must be one of \\['color', 'shape'\\], got 'size'"):
        single_attribute_images(small["test"], "size")
