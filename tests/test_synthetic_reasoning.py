"""The synthetic SNLI-VE and NLVR2 sets: deterministic by seed, balanced labels, and every label right against the
scenes' recorded objects (checked here by parsing the sentences, independently of the generators)."""

import re
from collections import Counter

import pytest

from vlalign.data.nlvr import NLVR_LABELS
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.data.synthetic_nlvr import make_synthetic_nlvr_dataset
from vlalign.data.synthetic_ve import UNOBSERVABLE, make_synthetic_ve_dataset
from vlalign.data.ve import VE_LABELS

SIZES = {"num_train": 60, "num_validation": 0, "num_test": 21, "image_size": 32}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")


@pytest.fixture(scope="module")
def scenes():
    data = make_synthetic_dataset(**SIZES, captions_per_image=1, seed=3)
    return {
        row["image_id"]: row
        for split in data.values()
        for row in split.select_columns(["image_id", "objects", "background"])
    }


@pytest.fixture(scope="module")
def ve():
    return make_synthetic_ve_dataset(**SIZES, seed=3)


@pytest.fixture(scope="module")
def nlvr():
    return make_synthetic_nlvr_dataset(**SIZES, seed=3)


def test_deterministic_by_seed(ve, nlvr):
    again_ve, again_nlvr = make_synthetic_ve_dataset(**SIZES, seed=3), make_synthetic_nlvr_dataset(**SIZES, seed=3)
    for first, second in ((ve, again_ve), (nlvr, again_nlvr)):
        for split in ("train", "test"):
            assert first[split].to_dict() == second[split].to_dict()  # images included (encoded bytes)
    other = make_synthetic_ve_dataset(**SIZES, seed=4)
    assert other["train"]["sentence"] != ve["train"]["sentence"]


def test_labels_balanced(ve, nlvr):
    for split, images in (("train", 60), ("test", 21)):
        counts = Counter(ve[split]["label"])
        assert sorted(counts) == [0, 1, 2] and set(counts.values()) == {images}  # 3 hypotheses per image, one each
        by_type = Counter(zip(nlvr[split]["statement_type"], nlvr[split]["label"], strict=True))
        for kind in set(nlvr[split]["statement_type"]):  # the sentence alone tells nothing
            assert abs(by_type[kind, 1] - by_type[kind, 0]) <= 1, kind
    one = make_synthetic_ve_dataset(num_train=31, num_validation=0, num_test=0, image_size=32, hypotheses_per_image=1)
    assert max(Counter(one["train"]["label"]).values()) - min(Counter(one["train"]["label"]).values()) <= 1
    assert len(set(nlvr["train"]["statement_type"])) == 6


def _has(objects, shape=None, color=None):
    return any((shape in (None, o["shape"])) and (color in (None, o["color"])) for o in objects)


def _ve_label(sentence, scene):
    objects = scene["objects"]
    if match := re.fullmatch(r"the (\w+) (\w+) (.+)\.", sentence):
        color, shape, rest = match.groups()
        if rest in UNOBSERVABLE:  # a drawn object, its true colour: the image can neither confirm nor deny the rest
            assert _has(objects, shape, color)
            return "neutral"
    if match := re.fullmatch(r"the background is (\w+)\.", sentence):
        return "entailment" if match[1] == scene["background"] else "contradiction"
    if match := re.fullmatch(r"there is an? (\w+) (\w+)\.", sentence):
        color, shape = match.groups()
        assert _has(objects, shape)  # a contradiction names a drawn shape with a wrong colour
        return "entailment" if _has(objects, shape, color) else "contradiction"
    if match := re.fullmatch(r"the (\w+) is (\w+)\.", sentence):
        shape, color = match.groups()
        colours = {o["color"] for o in objects if o["shape"] == shape}
        assert len(colours) == 1  # asked only of a drawn shape whose objects share a colour
        return "entailment" if colours == {color} else "contradiction"
    raise AssertionError(f"unexpected hypothesis {sentence!r}")


def test_ve_labels_match_the_scenes(ve, scenes):
    for split in ("train", "test"):
        rows = ve[split].select_columns(["sentence", "label", "image_id"])
        for row in rows:
            assert VE_LABELS[row["label"]] == _ve_label(row["sentence"], scenes[row["image_id"]]), row


def _count(objects, shape):
    return sum(o["shape"] == shape for o in objects)


def _nlvr_truth(sentence, left, right):
    a, b = left["objects"], right["objects"]
    if match := re.fullmatch(r"the (left|right) image has more (\w+)s than the (left|right) one\.", sentence):
        side, shape, other = match.groups()
        assert side != other
        more, fewer = (a, b) if side == "left" else (b, a)
        return _count(more, shape) > _count(fewer, shape)
    if match := re.fullmatch(r"both images have an? (\w+) object\.", sentence):
        return _has(a, color=match[1]) and _has(b, color=match[1])
    if match := re.fullmatch(r"both images have a (\w+)\.", sentence):
        return _has(a, match[1]) and _has(b, match[1])
    if match := re.fullmatch(r"exactly one image has a (\w+)\.", sentence):
        return _has(a, match[1]) != _has(b, match[1])
    if sentence == "the two images have the same background color.":
        return left["background"] == right["background"]
    if match := re.fullmatch(r"there are (\w+) (\w+)s in total\.", sentence):
        return NUMBERS.index(match[1]) == _count(a, match[2]) + _count(b, match[2])
    raise AssertionError(f"unexpected statement {sentence!r}")


def test_nlvr_labels_match_the_scenes(nlvr, scenes):
    test_ids = set(nlvr["test"]["left_id"])
    for split in ("train", "test"):
        rows = nlvr[split].select_columns(["sentence", "label", "left_id", "right_id"])
        for row in rows:
            truth = _nlvr_truth(row["sentence"], scenes[row["left_id"]], scenes[row["right_id"]])
            assert NLVR_LABELS[row["label"]] == str(truth), row
            assert row["left_id"] != row["right_id"]
            assert (row["left_id"] in test_ids) == (split == "test") == (row["right_id"] in test_ids)
    first = nlvr["test"][0]
    assert first["image_left"].size == first["image_right"].size == (32, 32)


def test_images_are_the_recorded_scenes(ve, nlvr):
    data = make_synthetic_dataset(**SIZES, captions_per_image=1, seed=3)["test"]
    first = data[0]["image_id"]
    pixels = {row["image_id"] - first: row["image"].tobytes() for row in data}
    for row in nlvr["test"].select(range(4)):
        assert row["image_left"].tobytes() == pixels[row["left_id"] - first]
        assert row["image_right"].tobytes() == pixels[row["right_id"] - first]
    for row in ve["test"].select(range(4)):
        assert row["image"].tobytes() == pixels[row["image_id"] - first]
