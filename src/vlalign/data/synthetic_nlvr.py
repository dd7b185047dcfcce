"""A synthetic NLVR2 set (pairs of images and a statement, true or false) built on the synthetic shapes scenes
(:mod:`vlalign.data.synthetic`), the built-in default of visual reasoning fine-tuning: no download, learnable on a CPU
in minutes.

Each example pairs two scenes of a split (left, right) with a statement about both, whose truth the scenes' recorded
objects decide:

* ``more``: "the left image has more circles than the right one" (or "the right image ... the left one"),
* ``both color``: "both images have a red object",
* ``both shape``: "both images have a square",
* ``one shape``: "exactly one image has a star",
* ``background``: "the two images have the same background color",
* ``total``: "there are three triangles in total".

Labels are balanced within each statement type (so the sentence alone tells nothing): the statement type is drawn,
true and false alternate within each type, and the right image and the statement's subject are drawn until the
statement has the wanted truth on that pair. Everything comes from the split's own
:class:`random.Random` stream, so the same seed gives the same set.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import datasets
import pyarrow as pa

from .loaders import _arrow_dataset
from .nlvr import NLVR_LABELS, nlvr_features
from .synthetic import COLORS, SHAPES, make_synthetic_dataset

__all__ = ["STATEMENT_TYPES", "make_synthetic_nlvr_dataset", "statement_truth"]

STATEMENT_TYPES: tuple[str, ...] = ("more", "both color", "both shape", "one shape", "background", "total")
_TRIES = 100
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")


def _count(objects: list[dict[str, Any]], key: str, value: str) -> int:
    return sum(obj[key] == value for obj in objects)


def statement_truth(kind: str, value: Any, left: dict[str, Any], right: dict[str, Any]) -> bool:
    """Whether the statement of type `kind` about `value` holds for the scenes `left` and `right` (each with
    ``objects`` and ``background``). `value`: ``(shape, "left"|"right")`` for ``"more"`` (the side said to have
    more), ``(shape, number)`` for ``"total"``, a colour or a shape for the others, None for ``"background"``."""
    a, b = left["objects"], right["objects"]
    if kind == "more":
        shape, side = value
        more, fewer = (a, b) if side == "left" else (b, a)
        return _count(more, "shape", shape) > _count(fewer, "shape", shape)
    if kind == "both color":
        return _count(a, "color", value) > 0 and _count(b, "color", value) > 0
    if kind == "both shape":
        return _count(a, "shape", value) > 0 and _count(b, "shape", value) > 0
    if kind == "one shape":
        return (_count(a, "shape", value) > 0) != (_count(b, "shape", value) > 0)
    if kind == "background":
        return left["background"] == right["background"]
    if kind == "total":
        shape, number = value
        return _count(a, "shape", shape) + _count(b, "shape", shape) == number
    raise ValueError(f"unknown statement type {kind!r}; one of {STATEMENT_TYPES}")


def _statement(kind: str, left: dict[str, Any], right: dict[str, Any], rng: random.Random) -> tuple[str, Any]:
    """A statement of type `kind` about the pair (its text and value), its subject drawn mostly among what the two
    scenes show."""
    shown = [obj for obj in left["objects"] + right["objects"]]
    shape = rng.choice(shown)["shape"] if rng.random() < 0.75 else rng.choice(SHAPES)
    if kind == "more":
        side = rng.choice(("left", "right"))
        other = "right" if side == "left" else "left"
        return f"the {side} image has more {shape}s than the {other} one.", (shape, side)
    if kind == "both color":
        color = rng.choice(shown)["color"] if rng.random() < 0.75 else rng.choice(list(COLORS))
        return f"both images have {'an' if color[0] in 'aeiou' else 'a'} {color} object.", color
    if kind == "both shape":
        return f"both images have a {shape}.", shape
    if kind == "one shape":
        return f"exactly one image has a {shape}.", shape
    if kind == "background":
        return "the two images have the same background color.", None
    total = _count(left["objects"], "shape", shape) + _count(right["objects"], "shape", shape)
    number = max(0, total + rng.choice((0, 0, -1, 1)))
    return f"there are {_NUMBERS[number]} {shape}s in total.", (shape, number)


def _examples(split: datasets.Dataset, num_pairs: int, rng: random.Random) -> dict[str, list]:
    scenes = [
        {"objects": objects, "background": background}
        for objects, background in zip(split["objects"], split["background"], strict=True)
    ]
    columns: dict[str, list] = {"left": [], "right": [], "sentence": [], "label": [], "statement_type": []}
    made: Counter[str] = Counter()
    for example in range(num_pairs):
        left_row, found = example % len(scenes), None
        while found is None:  # a type, then right images and subjects until the statement has the wanted truth
            kind = rng.choice(STATEMENT_TYPES)
            wanted = made[kind] % 2 == 0  # true and false alternate within each statement type
            for _ in range(_TRIES):  # bounded: in a small split some (type, truth) may be impossible for this image
                right_row = rng.choice([r for r in range(len(scenes)) if r != left_row] or [left_row])
                sentence, value = _statement(kind, scenes[left_row], scenes[right_row], rng)
                if statement_truth(kind, value, scenes[left_row], scenes[right_row]) == wanted:
                    found = (right_row, sentence)
                    break
        made[kind] += 1
        columns["left"].append(left_row)
        columns["right"].append(found[0])
        columns["sentence"].append(found[1])
        columns["label"].append(NLVR_LABELS.index(str(wanted)))
        columns["statement_type"].append(kind)
    return columns


def make_synthetic_nlvr_dataset(
    num_train: int = 2000,
    num_validation: int = 0,
    num_test: int = 200,
    image_size: int = 48,
    seed: int = 0,
) -> datasets.DatasetDict:
    """Generate the synthetic NLVR2 set: splits ``"train"``, ``"validation"`` and ``"test"`` of `num_*` pairs each,
    over the scenes of ``make_synthetic_dataset(num_train, num_validation, num_test, image_size, seed=seed)`` (the
    pairs of a split use that split's scenes only; each scene is a left image once).

    Returns:
        The NLVR2 layout (:func:`vlalign.data.nlvr.nlvr_features`): ``image_left``, ``image_right``, ``sentence``,
        ``label`` (ClassLabel False 0 / True 1, balanced within each statement type: half true, ±1);
        plus ``left_id`` / ``right_id`` (the scenes' ``image_id``) and ``statement_type`` (:data:`STATEMENT_TYPES`).
    """
    scenes = make_synthetic_dataset(num_train, num_validation, num_test, image_size, captions_per_image=1, seed=seed)
    features = {
        **nlvr_features(),
        "left_id": datasets.Value("int64"),
        "right_id": datasets.Value("int64"),
        "statement_type": datasets.Value("string"),
    }
    splits = {}
    for index, (name, split) in enumerate(scenes.items()):
        rng = random.Random(f"nlvr-{seed}-{index}")
        columns = _examples(split, len(split), rng) if len(split) > 1 else {k: [] for k in ("left", "right")}
        images = split.select_columns(["image"]).with_format("arrow")
        ids = split["image_id"]
        left, right = columns["left"], columns["right"]
        data = {
            "image_left": images[left]["image"] if left else pa.array([], images[:0]["image"].type),
            "image_right": images[right]["image"] if right else pa.array([], images[:0]["image"].type),
            "sentence": columns.get("sentence", []),
            "label": columns.get("label", []),
            "left_id": [ids[row] for row in left],
            "right_id": [ids[row] for row in right],
            "statement_type": columns.get("statement_type", []),
        }
        splits[name] = _arrow_dataset(data, features)
    return datasets.DatasetDict(splits)
