"""Warn about repeated rows in a retrieval evaluation set: the protocol counts only a query's own row as correct, so an
image given twice, or one caption given to two images, adds a candidate that scores exactly like the right one and
counts as wrong (with two copies, R@1 of the affected queries falls by up to half)."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from typing import Any

import datasets

__all__ = ["DuplicateEvaluationRowsWarning", "warn_duplicate_rows"]

_MAX_LISTED = 3  # examples quoted in the warning


class DuplicateEvaluationRowsWarning(UserWarning):
    """An evaluation set repeats an image or gives one caption to several images; its recalls are lowered."""


def _image_keys(dataset: Any) -> list[Any] | None:
    """One identity per row's image: its file path, or a digest of its encoded bytes; None without an `Image`
    column (images given some other way are not compared)."""
    feature = getattr(dataset, "features", {}).get("image")
    if not isinstance(feature, datasets.Image):
        return None
    images = dataset.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
    keys = []
    for batch in images.with_format("arrow").iter(batch_size=1024):
        for item in batch.column("image").to_pylist():
            if item is None:
                keys.append(None)
            elif item.get("bytes") is not None:
                keys.append(hashlib.blake2b(item["bytes"], digest_size=16).digest())
            else:
                keys.append(item.get("path"))
    return keys


def _repeats(keys: Sequence[Any]) -> dict[Any, list[int]]:
    """Rows of every key that occurs in more than one row (None keys are not compared)."""
    rows: dict[Any, list[int]] = {}
    for row, key in enumerate(keys):
        if key is not None:
            rows.setdefault(key, []).append(row)
    return {key: found for key, found in rows.items() if len(found) > 1}


def _rows(found: Sequence[int]) -> str:
    return "rows " + ", ".join(map(str, found[:_MAX_LISTED])) + (", ..." if len(found) > _MAX_LISTED else "")


def warn_duplicate_rows(dataset: Any, texts: Sequence[str], txt2img: Sequence[int]) -> None:
    """Warn (:class:`DuplicateEvaluationRowsWarning`) with counts and examples when rows of the evaluation `dataset`
    repeat an image (the same file or bytes, or the same `image_id`) or one caption belongs to several images."""
    problems = []
    repeated = _repeats(_image_keys(dataset) or [])
    if "image_id" in getattr(dataset, "column_names", ()):
        image_ids = dataset.with_format("arrow")["image_id"].to_pylist()  # not row by row: ~100x faster
        for key, found in _repeats(image_ids).items():
            repeated.setdefault(("image_id", key), found)
    if repeated:
        groups = sorted({tuple(found) for found in repeated.values()})
        extra = len({row for group in groups for row in group[1:]})
        examples = "; ".join(_rows(group) for group in groups[:_MAX_LISTED])
        problems.append(f"{extra} row(s) repeat an earlier row's image ({examples})")
    owners: dict[str, set[int]] = {}
    for text, image in zip(texts, txt2img, strict=True):
        owners.setdefault(text, set()).add(image)
    shared = {text: sorted(images) for text, images in owners.items() if len(images) > 1}
    if shared:
        examples = "; ".join(f"{text!r}: {_rows(images)}" for text, images in list(shared.items())[:_MAX_LISTED])
        affected = sum(1 for text in texts if text in shared)
        problems.append(
            f"{len(shared)} caption(s) belong to more than one image, {affected} of the {len(texts)} captions "
            f"({examples})"
        )
    if problems:
        warnings.warn(
            f"The evaluation set has duplicates: {'; '.join(problems)}. Retrieval counts only a query's own row as "
            "correct, so every copy is a candidate that scores like the right one and counts as wrong: the recalls "
            "of the affected queries drop, R@1 by up to half with two copies. Deduplicate the set (one row per "
            "image, each caption with its one image) for recalls comparable with published ones.",
            DuplicateEvaluationRowsWarning,
            stacklevel=3,
        )
