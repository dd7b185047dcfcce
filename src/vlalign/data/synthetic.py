"""Procedurally generated image–caption data ("synthetic shapes") for smoke tests, tutorials and benchmarks.

Real retrieval benchmarks (COCO, Flickr30k) need downloads and hours of GPU time before a model shows any
signal.  This module draws a small compositional world with PIL instead: each 64×64 image holds one to three
simple shapes (circle, square, triangle, diamond, star) in one of eight clearly distinct colours, in two sizes,
at one of nine grid positions, on one of four background colours.  Several captions per image are produced
from varied templates; every caption names the colour and shape of every object, and some also mention size,
position, count ("two red circles"), spatial relations ("above") or the background.

Because thousands of images share attributes, retrieval is not trivial (a caption like "a red circle" fits
many images), but it is learnable from the attributes alone, so a tiny ALBEF model trained for a couple of
minutes on CPU gets well above chance in retrieval.  Because every caption names the colours, colour, background
and position are enough to match most captions, and such a model classifies the single-shape images by shape at
about chance; :func:`single_attribute_images` builds the zero-shot sets that show it (shape, and colour as the
control).  Object boxes and attributes are stored alongside the images so that grounding checks (e.g. Grad-CAM
maps) can be scored against the truth.

Generation is deterministic: every split uses its own :class:`random.Random` stream derived from ``seed``
(never the global RNG), so the same seed gives identical pixels and captions, and changing the size of one
split does not change the content of the others.

The evaluation layout (one row per image, ``captions`` list, like ALBEF's ``*_test.json``) is returned by
:func:`make_synthetic_dataset`; :func:`to_pair_dataset` flattens it into the training layout (one row per
image–caption pair, like ALBEF's ``*_train.json``).
"""

from __future__ import annotations

import math
import random
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from datasets.table import InMemoryTable
from PIL import Image, ImageDraw

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "COLOR_TEMPLATES",
    "POSITIONS",
    "SHAPES",
    "SHAPE_TEMPLATES",
    "SIZES",
    "ZERO_SHOT_CLASSES",
    "make_synthetic_dataset",
    "single_attribute_images",
    "synthetic_features",
    "to_pair_dataset",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
"""Drawable shape names (singular); the plural adds an ``s``."""

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 215, 40),
    "green": (40, 160, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 70, 210),
    "purple": (130, 50, 170),
    "pink": (240, 120, 180),
}
"""Object colour names and their nominal RGB (each object gets a small per-channel jitter, stored as ``rgb``)."""

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "beige": (235, 220, 185),
}
"""Background colour names and their exact RGB (backgrounds are flat, without jitter)."""

SIZES: dict[str, float] = {"small": 0.2, "large": 0.375}
"""Nominal object side length as a fraction of the image size."""

POSITIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
"""Position labels of the 3×3 grid cells, row-major; an object's label is the cell holding its box centre."""

SHAPE_TEMPLATES: tuple[str, ...] = ("a {}", "a picture of a {}", "one {}")
"""Prompt templates of zero-shot shape classification (no colour named: a class embedding names only the shape)."""

COLOR_TEMPLATES: tuple[str, ...] = tuple(f"a {{}} {shape}" for shape in SHAPES)
"""Prompt templates of zero-shot colour classification: a colour's prompt is averaged over every shape, so the class
embedding says nothing about shape (the captions always name the shape)."""

ZERO_SHOT_CLASSES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "color": tuple(COLORS)}
"""The class names of zero-shot classification by object attribute (see :func:`single_attribute_images`)."""

_POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left corner", "at the top left"),
    "top": ("at the top", "near the top"),
    "top right": ("in the top right corner", "at the top right"),
    "left": ("on the left", "on the left side"),
    "center": ("in the center", "in the middle"),
    "right": ("on the right", "on the right side"),
    "bottom left": ("in the bottom left corner", "at the bottom left"),
    "bottom": ("at the bottom", "near the bottom"),
    "bottom right": ("in the bottom right corner", "at the bottom right"),
}
_COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
_NUM_OBJECTS_WEIGHTS = (0.45, 0.45, 0.10)  # P(1), P(2), P(3) objects per image
_SAME_KIND_PROB = 0.3  # chance that an extra object repeats the first object's shape and colour (counts)
_COLOR_JITTER = 12  # max per-channel deviation of an object's colour from its nominal RGB
_MIN_GAP = 2  # pixels of background kept between object boxes
_SPLITS = ("train", "validation", "test")


def synthetic_features() -> datasets.Features:
    """Return the :class:`datasets.Features` of the evaluation layout produced by :func:`make_synthetic_dataset`."""
    obj = {
        "shape": datasets.Value("string"),
        "color": datasets.Value("string"),
        "rgb": datasets.List(datasets.Value("uint8"), length=3),
        "size": datasets.Value("string"),
        "position": datasets.Value("string"),
        "box": datasets.List(datasets.Value("int32"), length=4),
    }
    return datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("int64"),
            "captions": datasets.List(datasets.Value("string")),
            "objects": datasets.List(obj),
            "background": datasets.Value("string"),
        }
    )


# --------------------------------------------------------------------------------------------------------------
# scene sampling and drawing
# --------------------------------------------------------------------------------------------------------------


def _position_label(box: list[int], image_size: int) -> str:
    cx = (box[0] + box[2]) / 2
    cy = (box[1] + box[3]) / 2
    col = min(2, int(cx * 3 / image_size))
    row = min(2, int(cy * 3 / image_size))
    return POSITIONS[row * 3 + col]


def _boxes_separated(a: list[int], b: list[int]) -> bool:
    return a[2] + _MIN_GAP <= b[0] or b[2] + _MIN_GAP <= a[0] or a[3] + _MIN_GAP <= b[1] or b[3] + _MIN_GAP <= a[1]


def _place(rng: random.Random, cell: int, side: int, image_size: int) -> list[int]:
    """Box ``[x0, y0, x1, y1]`` (x1/y1 exclusive) of a ``side``-pixel object centred near grid cell ``cell``."""
    jitter = max(1, image_size // 32)
    cx = (cell % 3 + 0.5) * image_size / 3 + rng.randint(-jitter, jitter)
    cy = (cell // 3 + 0.5) * image_size / 3 + rng.randint(-jitter, jitter)
    x0 = min(max(round(cx - side / 2), 0), image_size - side)
    y0 = min(max(round(cy - side / 2), 0), image_size - side)
    return [x0, y0, x0 + side, y0 + side]


def _side(rng: random.Random, size: str, image_size: int) -> int:
    jitter = max(0, image_size // 32)
    return max(4, round(SIZES[size] * image_size) + rng.randint(-jitter, jitter))


def _sample_scene(rng: random.Random, image_size: int) -> tuple[str, list[dict[str, Any]]]:
    """Sample a background name and a list of non-overlapping objects."""
    background = rng.choice(list(BACKGROUNDS))
    num_objects = rng.choices((1, 2, 3), weights=_NUM_OBJECTS_WEIGHTS)[0]
    color_names = list(COLORS)
    objects: list[dict[str, Any]] = []
    for i in range(num_objects):
        if i > 0 and rng.random() < _SAME_KIND_PROB:
            shape, color, size = objects[0]["shape"], objects[0]["color"], objects[0]["size"]
        else:
            shape, color, size = rng.choice(SHAPES), rng.choice(color_names), rng.choice(list(SIZES))
        used = {o["cell"] for o in objects}
        free = [c for c in range(9) if c not in used]
        rng.shuffle(free)
        box, found_cell = None, -1
        for try_size in (size, "small") if size == "large" else (size,):
            side = _side(rng, try_size, image_size)
            for cell in free:
                cand = _place(rng, cell, side, image_size)
                if all(_boxes_separated(cand, o["box"]) for o in objects):
                    box, size, found_cell = cand, try_size, cell
                    break
            if box is not None:
                break
        if box is None:  # no room left (only possible for tiny images); keep the objects placed so far
            break
        base = COLORS[color]
        rgb = [min(255, max(0, v + rng.randint(-_COLOR_JITTER, _COLOR_JITTER))) for v in base]
        objects.append(
            {
                "shape": shape,
                "color": color,
                "rgb": rgb,
                "size": size,
                "position": _position_label(box, image_size),
                "box": box,
                "cell": found_cell,
            }
        )
    for o in objects:
        del o["cell"]
    return background, objects


def _star_points(box: list[int]) -> list[tuple[float, float]]:
    """Five-pointed star stretched so that it touches all four sides of ``box``."""
    raw = []
    for k in range(10):
        radius = 1.0 if k % 2 == 0 else 0.45
        angle = -math.pi / 2 + k * math.pi / 5
        raw.append((radius * math.cos(angle), radius * math.sin(angle)))
    xs, ys = [p[0] for p in raw], [p[1] for p in raw]
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    x0, y0, x1, y1 = box[0], box[1], box[2] - 1, box[3] - 1
    return [(x0 + (x - x_lo) / (x_hi - x_lo) * (x1 - x0), y0 + (y - y_lo) / (y_hi - y_lo) * (y1 - y0)) for x, y in raw]


def _draw_object(draw: ImageDraw.ImageDraw, obj: dict[str, Any]) -> None:
    x0, y0, x1, y1 = obj["box"]
    x1, y1 = x1 - 1, y1 - 1  # PIL coordinates are inclusive
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    fill = tuple(obj["rgb"])
    shape = obj["shape"]
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif shape == "star":
        draw.polygon(_star_points(obj["box"]), fill=fill)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(f"unknown shape {shape!r}")


def _render(background: str, objects: list[dict[str, Any]], image_size: int) -> Image.Image:
    image = Image.new("RGB", (image_size, image_size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    for obj in objects:
        _draw_object(draw, obj)
    return image


# --------------------------------------------------------------------------------------------------------------
# captions
# --------------------------------------------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _groups(objects: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Objects grouped by (shape, colour), in order of first appearance."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for o in objects:
        groups.setdefault((o["shape"], o["color"]), []).append(o)
    return list(groups.values())


def _noun_phrase(group: list[dict[str, Any]], with_size: bool, article: bool = True) -> str:
    first = group[0]
    words = []
    if with_size and all(o["size"] == first["size"] for o in group):
        words.append(first["size"])
    words.append(first["color"])
    words.append(first["shape"] + ("s" if len(group) > 1 else ""))
    if len(group) > 1:
        return " ".join([_COUNT_WORDS[len(group)], *words])
    return " ".join([_article(words[0]), *words]) if article else " ".join(words)


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _relation(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Where ``a`` is relative to ``b``."""
    dx = (a["box"][0] + a["box"][2]) - (b["box"][0] + b["box"][2])
    dy = (a["box"][1] + a["box"][3]) - (b["box"][1] + b["box"][3])
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def _caption_candidates(rng: random.Random, background: str, objects: list[dict[str, Any]]) -> list[str]:
    """One caption per applicable template, in random order (random sub-choices inside each template)."""
    groups = _groups(objects)
    rng.shuffle(groups)
    bg = background

    def size() -> bool:
        return rng.random() < 0.5

    def pos(o: dict[str, Any]) -> str:
        return rng.choice(_POSITION_PHRASES[o["position"]])

    def listing(with_size: bool) -> str:
        return _join([_noun_phrase(g, with_size) for g in groups])

    out: list[str] = []
    if len(objects) == 1:
        o = objects[0]
        g = groups[0]
        out += [
            f"{_noun_phrase(g, True)} {pos(o)}",
            f"{_noun_phrase(g, size())} on {_article(bg)} {bg} background",
            f"{bg} image with {_noun_phrase(g, size())} {pos(o)}",
            f"{_noun_phrase(g, size())} {pos(o)} of {_article(bg)} {bg} background",
            f"there is {_noun_phrase(g, size())} {pos(o)}",
            f"a picture of {_noun_phrase(g, size())}",
            f"{_noun_phrase(g, size())} against {_article(bg)} {bg} backdrop",
            f"one {_noun_phrase(g, size(), article=False)} {pos(o)}",
        ]
    else:
        with_pos = []
        for g in groups:
            phrase = _noun_phrase(g, size())
            with_pos.append(f"{phrase} {pos(g[0])}" if len(g) == 1 else phrase)
        out += [
            listing(size()),
            f"{listing(size())} on {_article(bg)} {bg} background",
            f"{bg} image with {listing(size())}",
            _join(with_pos),
            f"{_COUNT_WORDS[len(objects)]} shapes: {listing(size())}",
            f"a picture of {listing(size())}",
            f"{listing(size())} against {_article(bg)} {bg} backdrop",
        ]
        if len(objects) == 2:
            a, b = objects if rng.random() < 0.5 else objects[::-1]
            if len(groups) == 2:
                ga = groups[0] if groups[0][0] is a else groups[1]
                gb = groups[1] if ga is groups[0] else groups[0]
                out.append(f"{_noun_phrase(ga, size())} {_relation(a, b)} {_noun_phrase(gb, size())}")
            else:
                out.append(f"{_noun_phrase(groups[0], size())}, one {pos(a)} and one {pos(b)}")
    rng.shuffle(out)
    return out


def _captions(rng: random.Random, background: str, objects: list[dict[str, Any]], n: int) -> list[str]:
    captions: list[str] = []
    for _ in range(20):
        for caption in _caption_candidates(rng, background, objects):
            if caption not in captions:
                captions.append(caption)
                if len(captions) == n:
                    return captions
    raise RuntimeError(f"could not generate {n} distinct captions for one image; lower captions_per_image")


# --------------------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------------------


def _split_rng(seed: int, split_index: int) -> random.Random:
    state = np.random.SeedSequence([seed, split_index]).generate_state(2, dtype=np.uint64)
    return random.Random(int(state[0]) << 64 | int(state[1]))


def _make_split(rng: random.Random, num: int, first_id: int, image_size: int, captions_per_image: int) -> dict:
    columns: dict[str, list] = {"image": [], "image_id": [], "captions": [], "objects": [], "background": []}
    for i in range(num):
        background, objects = _sample_scene(rng, image_size)
        columns["image"].append(_render(background, objects, image_size))
        columns["image_id"].append(first_id + i)
        columns["captions"].append(_captions(rng, background, objects, captions_per_image))
        columns["objects"].append(objects)
        columns["background"].append(background)
    return columns


def make_synthetic_dataset(
    num_train: int = 3000,
    num_validation: int = 200,
    num_test: int = 200,
    image_size: int = 64,
    captions_per_image: int = 2,
    seed: int = 0,
) -> datasets.DatasetDict:
    """Generate the synthetic shapes image–caption dataset.

    Args:
        num_train, num_validation, num_test: number of images in each split (0 is allowed).
        image_size: side of the square RGB images in pixels (at least 16).
        captions_per_image: distinct captions per image (1–5).
        seed: master seed; each split draws from its own stream derived from it.

    Returns:
        A :class:`datasets.DatasetDict` with splits ``"train"``, ``"validation"`` and ``"test"`` in the evaluation
        layout: ``image`` (PIL RGB image), ``image_id`` (int, unique across splits: train ids come first),
        ``captions`` (list of str), ``objects`` (list of ``{"shape", "color", "rgb", "size", "position", "box"}``,
        ``box`` = ``[x0, y0, x1, y1]`` in pixels with ``x1``/``y1`` exclusive, ``rgb`` = the exact fill colour)
        and ``background`` (colour name).  Use :func:`to_pair_dataset` for the one-row-per-caption training layout.
    """
    sizes = {"train": num_train, "validation": num_validation, "test": num_test}
    for name, num in sizes.items():
        if num < 0:
            raise ValueError(f"num_{name} must be >= 0, got {num}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if not 1 <= captions_per_image <= 5:
        raise ValueError(f"captions_per_image must be between 1 and 5, got {captions_per_image}")

    features = synthetic_features()
    splits = {}
    first_id = 0
    for index, name in enumerate(_SPLITS):
        columns = _make_split(_split_rng(seed, index), sizes[name], first_id, image_size, captions_per_image)
        splits[name] = datasets.Dataset.from_dict(columns, features=features, split=datasets.Split(name))
        first_id += sizes[name]
    return datasets.DatasetDict(splits)


def single_attribute_images(dataset: datasets.Dataset, attribute: str) -> datasets.Dataset:
    """The images of a synthetic split whose objects all share one value of ``attribute`` (``"shape"`` or
    ``"color"``), labelled with it: columns ``image`` and ``label`` (a :class:`datasets.ClassLabel` over
    ``ZERO_SHOT_CLASSES[attribute]``), a zero-shot classification set."""
    if attribute not in ZERO_SHOT_CLASSES:
        raise ValueError(f"attribute must be one of {sorted(ZERO_SHOT_CLASSES)}, got {attribute!r}")
    names = ZERO_SHOT_CLASSES[attribute]
    rows = [row for row, objects in enumerate(dataset["objects"]) if len({o[attribute] for o in objects}) == 1]
    subset = dataset.select(rows).select_columns(["image", "objects"])
    labels = [names.index(objects[0][attribute]) for objects in subset["objects"]]
    return subset.remove_columns("objects").add_column("label", labels, feature=datasets.ClassLabel(names=list(names)))


def to_pair_dataset(dataset: datasets.Dataset) -> datasets.Dataset:
    """Flatten the evaluation layout into the training layout: one row per image–caption pair.

    ``dataset`` needs ``image``, ``captions`` (list of str) and ``image_id`` columns; the result has ``image``,
    ``caption`` and ``image_id``, with the captions of each image in consecutive rows, in order.  Images are not
    decoded or re-encoded.
    """
    missing = {"image", "captions", "image_id"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"to_pair_dataset needs columns image, captions and image_id; missing {sorted(missing)}")
    caption_lists = dataset["captions"]
    row_indices = [row for row, caps in enumerate(caption_lists) for _ in caps]
    captions = [caption for caps in caption_lists for caption in caps]
    # Take rows at the Arrow level: no image decoding, no progress bars, no cache files.
    table = dataset.select_columns(["image", "image_id"]).with_format("arrow")[row_indices]
    table = table.append_column("caption", pa.array(captions, pa.string()))
    table = table.select(["image", "caption", "image_id"]).replace_schema_metadata(None)
    features = datasets.Features(
        {
            "image": dataset.features["image"],
            "caption": datasets.Value("string"),
            "image_id": dataset.features["image_id"],
        }
    )
    return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=features), split=dataset.split)
