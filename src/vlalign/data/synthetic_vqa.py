"""A synthetic visual question answering set built on the synthetic shapes scenes (:mod:`vlalign.data.synthetic`),
the built-in default of VQA fine-tuning: no download, learnable on a CPU in minutes.

Each image gets questions of five types whose answer the scene annotations decide unambiguously:

* ``color``: "what color is the square?" (asked of a shape whose objects share one colour),
* ``shape``: "what shape is on the left?" (objects sit in distinct grid cells),
* ``count``: "how many circles are there?" ("0" to "3"; a shape that is absent is asked too),
* ``position``: "where is the red star?" (asked of a colour and shape that only one object has),
* ``background``: "what color is the background?".

Like a VQAv2 question, each has ten human-style answers: mostly the true answer, some a synonym a person might give
("grey" for "gray", "middle" for "center", "rhombus" for "diamond"), and a few wrong ones (another answer of the same
type, at `wrong_answer_rate`), so the VQA accuracy's votes matter. Answers are written as the VQA release writes them
(lower case, digits, no articles). Everything is drawn from the split's own :class:`random.Random` stream, so the
same seed gives the same questions and answers. The candidate answers to rank are those of the training split:
``vlalign.data.vqa.build_answer_list(dataset["train"])``.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import datasets

from .loaders import _assemble
from .synthetic import BACKGROUNDS, COLORS, POSITIONS, SHAPES, make_synthetic_dataset
from .vqa import vqa_features

__all__ = ["QUESTION_TYPES", "SYNONYMS", "make_synthetic_vqa_dataset"]

QUESTION_TYPES: tuple[str, ...] = ("color", "shape", "count", "position", "background")
#: answers a person may give instead of the true one (the true answer stays the most frequent)
SYNONYMS: dict[str, tuple[str, ...]] = {
    "gray": ("grey",),
    "purple": ("violet",),
    "cyan": ("turquoise", "light blue"),
    "beige": ("tan",),
    "diamond": ("rhombus",),
    "circle": ("round",),
    "center": ("middle",),
    "top left": ("upper left",),
    "top right": ("upper right",),
    "bottom left": ("lower left",),
    "bottom right": ("lower right",),
    "left": ("left side",),
    "right": ("right side",),
}
_PHRASES: dict[str, str] = {
    "top left": "in the top left corner",
    "top": "at the top",
    "top right": "in the top right corner",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left corner",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}
_COUNTS = ("0", "1", "2", "3")
#: the true answers of each question type (wrong answers are drawn from them)
_ANSWERS: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "count": _COUNTS,
    "position": POSITIONS,
    "background": tuple(BACKGROUNDS),
}
_HUMANS = 10
_SYNONYM_RATE = 0.15


def _candidates(objects: list[dict[str, Any]], background: str, rng: random.Random) -> dict[str, tuple[str, str]]:
    """One (question, true answer) per question type that this scene can answer unambiguously."""
    candidates = {"background": ("what color is the background?", background)}
    by_shape: dict[str, set[str]] = {}
    for obj in objects:
        by_shape.setdefault(obj["shape"], set()).add(obj["color"])
    one_colour = [shape for shape, colours in by_shape.items() if len(colours) == 1]
    if one_colour:
        shape = rng.choice(one_colour)
        candidates["color"] = (f"what color is the {shape}?", next(iter(by_shape[shape])))
    obj = rng.choice(objects)
    candidates["shape"] = (f"what shape is {_PHRASES[obj['position']]}?", obj["shape"])
    shape = rng.choice(SHAPES) if rng.random() < 0.25 else rng.choice(objects)["shape"]
    count = sum(o["shape"] == shape for o in objects)
    candidates["count"] = (f"how many {shape}s are there?", str(count))
    kinds = Counter((o["color"], o["shape"]) for o in objects)
    unique = [o for o in objects if kinds[o["color"], o["shape"]] == 1]
    if unique:
        obj = rng.choice(unique)
        candidates["position"] = (f"where is the {obj['color']} {obj['shape']}?", obj["position"])
    return candidates


def _human_answers(truth: str, question_type: str, rng: random.Random, wrong_answer_rate: float) -> list[str]:
    """Ten answers: the truth, a synonym now and then, another answer of the type at `wrong_answer_rate`; drawn again
    in the rare case that the truth is not strictly the most frequent, so the majority answer is always right."""
    while True:
        answers = []
        for _ in range(_HUMANS):
            draw = rng.random()
            if draw < wrong_answer_rate:
                answers.append(rng.choice([a for a in _ANSWERS[question_type] if a != truth]))
            elif draw < wrong_answer_rate + _SYNONYM_RATE and truth in SYNONYMS:
                answers.append(rng.choice(SYNONYMS[truth]))
            else:
                answers.append(truth)
        (first, votes), *others = Counter(answers).most_common(2)
        if first == truth and all(count < votes for _, count in others):
            return answers


def _questions(scenes: datasets.Dataset, per_image: int, rng: random.Random) -> tuple[list[int], dict[str, list]]:
    """The scene row of every question and the question columns, `per_image` questions of distinct types per
    image (fewer when the scene answers fewer types)."""
    rows: list[int] = []
    columns: dict[str, list] = {"question_id": [], "question": [], "question_type": [], "image_id": []}
    truths: list[str] = []
    for row, (objects, background, image_id) in enumerate(
        zip(scenes["objects"], scenes["background"], scenes["image_id"], strict=True)
    ):
        candidates = _candidates(objects, background, rng)
        for index, question_type in enumerate(rng.sample(sorted(candidates), min(per_image, len(candidates)))):
            question, truth = candidates[question_type]
            rows.append(row)
            columns["question_id"].append(image_id * len(QUESTION_TYPES) + index)
            columns["question"].append(question)
            columns["question_type"].append(question_type)
            columns["image_id"].append(image_id)
            truths.append(truth)
    columns["truth"] = truths
    return rows, columns


def make_synthetic_vqa_dataset(
    num_train: int = 3000,
    num_validation: int = 200,
    num_test: int = 200,
    image_size: int = 48,
    questions_per_image: int = 3,
    wrong_answer_rate: float = 0.05,
    seed: int = 0,
) -> datasets.DatasetDict:
    """Generate the synthetic VQA set: splits ``"train"``, ``"validation"`` and ``"test"`` of the scenes of
    ``make_synthetic_dataset(num_train, num_validation, num_test, image_size, seed=seed)``.

    Args:
        num_train, num_validation, num_test: images per split.
        image_size: side of the images in pixels.
        questions_per_image: questions per image (1 to 5), of distinct types, drawn among those the scene answers.
        wrong_answer_rate: chance that a human answer is wrong (another answer of the question's type).
        seed: master seed of the scenes and of the questions.

    Returns:
        The VQA layout (:mod:`vlalign.data.vqa`): ``image``, ``question_id`` (unique across splits),
        ``question``, ``answers`` (ten human answers), ``dataset`` ("vqa"), ``question_type``; plus ``image_id``
        (the scene's) and ``answer`` (the true answer, for inspection; metrics score against ``answers``).
    """
    if not 1 <= questions_per_image <= len(QUESTION_TYPES):
        raise ValueError(f"questions_per_image must be between 1 and {len(QUESTION_TYPES)}, got {questions_per_image}")
    if not 0.0 <= wrong_answer_rate < 0.5:
        raise ValueError(f"wrong_answer_rate must be in [0, 0.5) so the true answer leads, got {wrong_answer_rate}")
    scenes = make_synthetic_dataset(num_train, num_validation, num_test, image_size, captions_per_image=1, seed=seed)
    features = dict(vqa_features(question_type=True))
    del features["image"]
    features.update(image_id=datasets.Value("int64"), answer=datasets.Value("string"))
    split_features = datasets.Features({"image": datasets.Image(), **features})
    splits = {}
    for index, (name, split) in enumerate(scenes.items()):
        rng = random.Random(f"vqa-{seed}-{index}")
        rows, columns = _questions(split, questions_per_image, rng)
        truths = columns.pop("truth")
        columns["answers"] = [
            _human_answers(truth, kind, rng, wrong_answer_rate)
            for truth, kind in zip(truths, columns["question_type"], strict=True)
        ]
        columns["dataset"] = ["vqa"] * len(rows)
        columns["answer"] = truths
        ordered = {name: columns[name] for name in features}
        if rows:
            splits[name] = _assemble(split.select_columns(["image"]), rows, ordered, features)
        else:  # an empty split keeps every column
            splits[name] = datasets.Dataset.from_dict({"image": [], **ordered}, features=split_features)
    return datasets.DatasetDict(splits)
