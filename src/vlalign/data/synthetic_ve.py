"""A synthetic visual entailment set (SNLI-VE layout) built on the synthetic shapes scenes
(:mod:`vlalign.data.synthetic`), the built-in default of visual entailment fine-tuning: no download, learnable on a CPU
in minutes.

Each image (the premise) gets hypotheses with all three labels, decided by the scene's recorded objects:

* ``entailment``: a true statement about what is drawn: "there is a red circle", "there is an orange star", "the square is blue" (of a shape
  whose objects share one colour), "the background is gray".
* ``contradiction``: the same statements with a visible attribute wrong: "there is a green circle" (a circle is
  present, none of them green), "the square is red" (the square is blue), "the background is black" (it is gray).
* ``neutral``: a statement about an object that *is* drawn, with its true colour, plus something a drawing cannot show
  ("the red circle is made of wood", "the blue square was drawn by a child"): the image neither confirms nor denies it.

So the visible part of a neutral hypothesis is always true (the image never contradicts it), and entailment and
contradiction share their templates: telling those two apart needs the image; telling a neutral one needs the text's
unobservable part. Labels are balanced (the three labels rotate over the hypotheses of a split) and everything is drawn
from the split's own :class:`random.Random` stream, so the same seed gives the same set.
"""

from __future__ import annotations

import random
from typing import Any

import datasets

from .loaders import _assemble
from .synthetic import BACKGROUNDS, COLORS, make_synthetic_dataset
from .ve import VE_LABELS, ve_features

__all__ = ["UNOBSERVABLE", "make_synthetic_ve_dataset"]

#: what a drawing of a shape cannot show: the neutral hypotheses' predicates
UNOBSERVABLE: tuple[str, ...] = (
    "is made of wood",
    "is made of metal",
    "was drawn by a child",
    "was drawn yesterday",
    "is very heavy",
    "belongs to my sister",
    "is somebody's favorite",
    "smells like lemons",
)
_ENTAILMENT, _NEUTRAL, _CONTRADICTION = (VE_LABELS.index(name) for name in ("entailment", "neutral", "contradiction"))


def _entailment(objects: list[dict[str, Any]], background: str, rng: random.Random) -> tuple[str, str]:
    by_shape = _colours_by_shape(objects)
    kinds = ["present", "background"] + (["shape color"] if _one_colour(by_shape) else [])
    kind = rng.choice(kinds)
    if kind == "background":
        return f"the background is {background}.", kind
    if kind == "shape color":
        shape = rng.choice(_one_colour(by_shape))
        return f"the {shape} is {next(iter(by_shape[shape]))}.", kind
    obj = rng.choice(objects)
    return f"there is {_a(obj['color'])} {obj['shape']}.", kind


def _contradiction(objects: list[dict[str, Any]], background: str, rng: random.Random) -> tuple[str, str]:
    by_shape = _colours_by_shape(objects)
    kinds = ["present", "background"] + (["shape color"] if _one_colour(by_shape) else [])
    kind = rng.choice(kinds)
    if kind == "background":
        return f"the background is {rng.choice([b for b in BACKGROUNDS if b != background])}.", kind
    shape = rng.choice(_one_colour(by_shape) if kind == "shape color" else sorted(by_shape))
    wrong = rng.choice([c for c in COLORS if c not in by_shape[shape]])
    if kind == "shape color":
        return f"the {shape} is {wrong}.", kind
    return f"there is {_a(wrong)} {shape}.", kind


def _neutral(objects: list[dict[str, Any]], background: str, rng: random.Random) -> tuple[str, str]:
    obj = rng.choice(objects)
    return f"the {obj['color']} {obj['shape']} {rng.choice(UNOBSERVABLE)}.", "unobservable"


def _a(word: str) -> str:
    """`word` with its indefinite article."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _colours_by_shape(objects: list[dict[str, Any]]) -> dict[str, set[str]]:
    by_shape: dict[str, set[str]] = {}
    for obj in objects:
        by_shape.setdefault(obj["shape"], set()).add(obj["color"])
    return by_shape


def _one_colour(by_shape: dict[str, set[str]]) -> list[str]:
    return sorted(shape for shape, colours in by_shape.items() if len(colours) == 1)


_MAKERS = {_ENTAILMENT: _entailment, _NEUTRAL: _neutral, _CONTRADICTION: _contradiction}


def make_synthetic_ve_dataset(
    num_train: int = 2000,
    num_validation: int = 0,
    num_test: int = 200,
    image_size: int = 48,
    hypotheses_per_image: int = 3,
    seed: int = 0,
) -> datasets.DatasetDict:
    """Generate the synthetic visual entailment set: splits ``"train"``, ``"validation"`` and ``"test"`` over the
    scenes of ``make_synthetic_dataset(num_train, num_validation, num_test, image_size, seed=seed)``.

    Args:
        num_train, num_validation, num_test: images per split.
        image_size: side of the images in pixels.
        hypotheses_per_image: hypotheses per image (1 to 3), of distinct labels; the labels rotate over the split's
            hypotheses, so each label has a third of them (±1).
        seed: master seed of the scenes and of the hypotheses.

    Returns:
        The VE layout (:func:`vlalign.data.ve.ve_features`): ``image``, ``sentence`` (the hypothesis), ``label``
        (ClassLabel in the official order); plus ``image_id`` (the scene's) and ``hypothesis_type`` (``"present"``,
        ``"shape color"``, ``"background"`` or ``"unobservable"``).
    """
    if not 1 <= hypotheses_per_image <= len(VE_LABELS):
        raise ValueError(f"hypotheses_per_image must be between 1 and {len(VE_LABELS)}, got {hypotheses_per_image}")
    scenes = make_synthetic_dataset(num_train, num_validation, num_test, image_size, captions_per_image=1, seed=seed)
    features = dict(ve_features())
    del features["image"]
    features.update(image_id=datasets.Value("int64"), hypothesis_type=datasets.Value("string"))
    splits = {}
    for index, (name, split) in enumerate(scenes.items()):
        rng = random.Random(f"ve-{seed}-{index}")
        rows: list[int] = []
        columns: dict[str, list] = {"sentence": [], "label": [], "image_id": [], "hypothesis_type": []}
        for row, (objects, background, image_id) in enumerate(
            zip(split["objects"], split["background"], split["image_id"], strict=True)
        ):
            first = (row * hypotheses_per_image) % len(VE_LABELS)
            for offset in range(hypotheses_per_image):
                label = (first + offset) % len(VE_LABELS)
                sentence, kind = _MAKERS[label](objects, background, rng)
                rows.append(row)
                columns["sentence"].append(sentence)
                columns["label"].append(label)
                columns["image_id"].append(image_id)
                columns["hypothesis_type"].append(kind)
        order = list(range(len(rows)))
        rng.shuffle(order)
        rows = [rows[i] for i in order]
        columns = {key: [values[i] for i in order] for key, values in columns.items()}
        ordered = {key: columns[key] for key in features}
        if rows:
            splits[name] = _assemble(split.select_columns(["image"]), rows, ordered, features)
        else:
            splits[name] = datasets.Dataset.from_dict(
                {"image": [], **ordered}, features=datasets.Features({"image": datasets.Image(), **features})
            )
    return datasets.DatasetDict(splits)
