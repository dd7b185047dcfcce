"""Loaders that bring real image–caption data into vlalign's two dataset layouts.

* **eval layout** – one row per image: ``image`` (:class:`datasets.Image`), ``captions`` (list of str) and
  ``image_id``; like ALBEF's ``coco_test.json`` / ``flickr30k_test.json`` and :func:`make_synthetic_dataset`.
* **train layout** – one row per image–caption pair: ``image``, ``caption`` (str), ``image_id`` and ``idx`` (a
  contiguous int per distinct ``image_id``, in order of first appearance, as ALBEF's retrieval training uses for its
  same-image positives); like ALBEF's ``coco_train.json``.

Every image is checked with PIL when the dataset is loaded (``Image.verify()`` followed by a full decode), and every
caption is checked for being empty after stripping.  Problems are never dropped silently: by default
(``on_error="raise"``) a :class:`DataValidationError` names how many samples are affected and the first few;
with ``on_error="skip"`` the affected samples are dropped and a :class:`UserWarning` says
``"skipped N of M samples: ..."``.  Pass ``return_report=True`` to also get a :class:`LoadReport` with the full
list of problems.

Images stay lazy: the returned dataset stores file paths (or the source dataset's bytes) and decodes on access,
converting to RGB.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
from PIL import Image, UnidentifiedImageError

__all__ = [
    "DataValidationError",
    "LoadReport",
    "load_image_text_dataset",
    "load_karpathy_json",
]

Layout = Literal["eval", "train"]
OnError = Literal["raise", "skip"]

_MAX_LISTED = 3  # problems quoted in error and warning messages


@dataclass(frozen=True)
class LoadReport:
    """What a loader found and kept.

    Attributes:
        source: the annotation file or dataset that was loaded.
        layout: ``"eval"`` (one row per image) or ``"train"`` (one row per image–caption pair).
        num_samples: rows in the source (images for the eval layout, pairs for the train layout).
        num_kept: rows in the returned dataset.
        bad_images: ``(image reference, reason)`` for every distinct image that could not be read.
        empty_captions: references (``"row 3 caption 1 (path)"``) of every caption that is empty after stripping.
    """

    source: str
    layout: Layout
    num_samples: int
    num_kept: int
    bad_images: tuple[tuple[str, str], ...] = ()
    empty_captions: tuple[str, ...] = ()

    @property
    def num_skipped(self) -> int:
        """Rows of the source that are not in the returned dataset."""
        return self.num_samples - self.num_kept

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.bad_images and not self.empty_captions

    def describe_problems(self) -> str:
        """Counts and the first few examples of each kind of problem, in one line."""
        parts = []
        if self.bad_images:
            shown = "; ".join(f"{ref} ({reason})" for ref, reason in self.bad_images[:_MAX_LISTED])
            more = ", ..." if len(self.bad_images) > _MAX_LISTED else ""
            parts.append(f"{len(self.bad_images)} unreadable image(s): {shown}{more}")
        if self.empty_captions:
            shown = "; ".join(self.empty_captions[:_MAX_LISTED])
            more = ", ..." if len(self.empty_captions) > _MAX_LISTED else ""
            parts.append(f"{len(self.empty_captions)} empty caption(s): {shown}{more}")
        return "; ".join(parts) if parts else "no problems"


class DataValidationError(ValueError):
    """Raised with ``on_error="raise"`` when images are unreadable or captions empty; ``.report`` has the details."""

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------------------


def _image_problem(source: str | bytes) -> str | None:
    """Return why ``source`` (a path or encoded bytes) is not a readable image, or None when it is."""

    def open_image() -> Image.Image:
        return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)

    try:
        with open_image() as image:
            image.verify()  # structure and checksums, without decoding
        with open_image() as image:  # verify() leaves the object unusable; decode for real to catch truncation
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))  # still reads all data
            image.load()
    except FileNotFoundError:
        return "file not found"
    except UnidentifiedImageError:
        return "not a recognized image format"
    except Exception as err:  # any failure means the sample is unusable
        return f"{type(err).__name__}: {err}"
    return None


def _check_images(sources: Sequence[str | bytes], num_workers: int | None) -> list[str | None]:
    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    if workers <= 1 or len(sources) < 2:
        return [_image_problem(s) for s in sources]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL releases the GIL while decoding
        return list(pool.map(_image_problem, sources, chunksize=16))


def _is_empty(caption: Any, where: str) -> bool:
    if caption is None:
        return True
    if not isinstance(caption, str):
        raise TypeError(f"{where}: captions must be strings, got {type(caption).__name__}")
    return not caption.strip()


def _validate_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _screen(
    layout: Layout,
    texts: Sequence[Any],
    image_refs: Sequence[str],
    image_problems: Sequence[str | None],
    *,
    source: str,
) -> tuple[list[int], list[Any], list[tuple[str, str]], list[str]]:
    """Find bad rows. Returns kept row indices, cleaned texts (all rows), bad images and empty-caption references.

    ``image_problems[i]`` is the problem of row ``i``'s image; each distinct image reference is reported once.
    In the eval layout, empty captions are removed from their list and a row is dropped only when its image is bad
    or no caption is left; in the train layout a row with an empty caption is dropped.
    """
    keep: list[int] = []
    cleaned: list[Any] = []
    bad_images: dict[str, str] = {}
    empty: list[str] = []
    for row, (text, ref, problem) in enumerate(zip(texts, image_refs, image_problems, strict=True)):
        if problem is not None:
            bad_images.setdefault(ref, problem)
        if layout == "eval":
            if text is None:
                text = []
            if isinstance(text, str) or not isinstance(text, Iterable):
                raise TypeError(f"{source}: row {row}: the eval layout needs a list of captions")
            text = list(text)
            good = []
            for j, caption in enumerate(text):
                if _is_empty(caption, f"{source}: row {row}"):
                    empty.append(f"row {row} caption {j} ({ref})")
                else:
                    good.append(caption)
            if not text:
                empty.append(f"row {row} has no captions ({ref})")
            cleaned.append(good)
            if problem is None and good:
                keep.append(row)
        else:
            is_empty = _is_empty(text, f"{source}: row {row}")
            if is_empty:
                empty.append(f"row {row} ({ref})")
            cleaned.append(text)
            if problem is None and not is_empty:
                keep.append(row)
    return keep, cleaned, list(bad_images.items()), empty


def _finish(report: LoadReport, on_error: OnError) -> None:
    """Raise or warn about the problems in ``report``."""
    if report.ok:
        return
    if on_error == "raise":
        raise DataValidationError(
            f"{report.source}: {report.num_skipped} of {report.num_samples} samples are affected by "
            f"{report.describe_problems()}. Repair or remove them, or pass on_error='skip' to drop the affected "
            "samples (a warning then reports what was skipped).",
            report,
        )
    warnings.warn(
        f"{report.source}: skipped {report.num_skipped} of {report.num_samples} samples: {report.describe_problems()}",
        UserWarning,
        stacklevel=3,
    )


def _contiguous_ids(image_ids: Sequence[Any], keep: Sequence[int], num_rows: int) -> list[int]:
    """``idx`` per row: 0, 1, ... per distinct image id among kept rows (first appearance order); -1 elsewhere."""
    mapping: dict[Any, int] = {}
    idx = [-1] * num_rows
    for row in keep:
        idx[row] = mapping.setdefault(image_ids[row], len(mapping))
    return idx


def _report_or_dataset(
    dataset: datasets.Dataset, report: LoadReport, return_report: bool
) -> datasets.Dataset | tuple[datasets.Dataset, LoadReport]:
    return (dataset, report) if return_report else dataset


# --------------------------------------------------------------------------------------------------------------
# ALBEF / Karpathy json
# --------------------------------------------------------------------------------------------------------------


def _detect_layout(entries: list[Any], split_layout: Layout | None, source: str) -> Layout:
    if split_layout not in (None, "eval", "train"):
        raise ValueError(f"split_layout must be 'eval', 'train' or None, got {split_layout!r}")
    kinds = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry or "caption" not in entry:
            raise ValueError(f"{source}: entry {i} must be an object with 'image' and 'caption' keys")
        kinds.add("eval" if isinstance(entry["caption"], list) else "train")
    if len(kinds) > 1:
        raise ValueError(f"{source}: mixes caption lists (eval layout) and single captions (train layout)")
    detected = kinds.pop() if kinds else (split_layout or "eval")
    if split_layout is not None and split_layout != detected:
        raise ValueError(
            f"{source}: split_layout={split_layout!r} but the captions are "
            f"{'lists' if detected == 'eval' else 'single strings'} ({detected} layout)"
        )
    return detected


def load_karpathy_json(
    annotation_file: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    split_layout: Layout | None = None,
    *,
    on_error: OnError = "raise",
    check_images: bool = True,
    num_workers: int | None = None,
    return_report: bool = False,
) -> datasets.Dataset | tuple[datasets.Dataset, LoadReport]:
    """Load an ALBEF retrieval annotation file (Karpathy-split json).

    Args:
        annotation_file: json list of ``{"image": path, "caption": [str, ...]}`` (eval layout) or
            ``{"image": path, "caption": str, "image_id": str}`` (train layout).
        image_root: directory the ``image`` paths are relative to.
        split_layout: ``"eval"`` or ``"train"``; detected from the caption type when None (and checked when given).
        on_error: ``"raise"`` (default) raises :class:`DataValidationError` on unreadable images or empty captions;
            ``"skip"`` drops them and warns ``"skipped N of M samples: ..."``.
        check_images: open, verify and decode every distinct image once (recommended; disable only for data you
            already checked).
        num_workers: threads for the image check (default ``min(8, cpu_count)``).
        return_report: also return the :class:`LoadReport`.

    Returns:
        Eval layout: ``image``, ``captions``, ``image_id`` (the entry's ``image_id`` if present, else its relative
        image path; str).  Train layout: ``image``, ``caption``, ``image_id`` (str; the image path when missing) and
        ``idx`` (int, contiguous per distinct ``image_id``).  With ``return_report=True``: ``(dataset, report)``.
    """
    _validate_on_error(on_error)
    source = str(annotation_file)
    with open(annotation_file, encoding="utf-8") as f:
        entries = json.load(f)
    if not isinstance(entries, list):
        raise ValueError(f"{source}: expected a json list of annotations, got {type(entries).__name__}")
    layout = _detect_layout(entries, split_layout, source)

    paths = [str(Path(image_root, entry["image"])) for entry in entries]
    image_ids = [str(entry.get("image_id", entry["image"])) for entry in entries]
    distinct = list(dict.fromkeys(paths))
    problems = dict(zip(distinct, _check_images(distinct, num_workers), strict=True)) if check_images else {}
    row_problems = [problems.get(p) for p in paths]
    texts = [entry["caption"] for entry in entries]
    keep, cleaned, bad_images, empty = _screen(layout, texts, paths, row_problems, source=source)

    report = LoadReport(source, layout, len(entries), len(keep), tuple(bad_images), tuple(empty))
    _finish(report, on_error)

    image_feature = datasets.Image(mode="RGB")
    if layout == "eval":
        features = datasets.Features(
            {
                "image": image_feature,
                "captions": datasets.List(datasets.Value("string")),
                "image_id": datasets.Value("string"),
            }
        )
        columns = {
            "image": [paths[i] for i in keep],
            "captions": [cleaned[i] for i in keep],
            "image_id": [image_ids[i] for i in keep],
        }
    else:
        idx = _contiguous_ids(image_ids, keep, len(entries))
        features = datasets.Features(
            {
                "image": image_feature,
                "caption": datasets.Value("string"),
                "image_id": datasets.Value("string"),
                "idx": datasets.Value("int64"),
            }
        )
        columns = {
            "image": [paths[i] for i in keep],
            "caption": [cleaned[i] for i in keep],
            "image_id": [image_ids[i] for i in keep],
            "idx": [idx[i] for i in keep],
        }
    dataset = datasets.Dataset.from_dict(columns, features=features)
    return _report_or_dataset(dataset, report, return_report)


# --------------------------------------------------------------------------------------------------------------
# any datasets image–caption dataset
# --------------------------------------------------------------------------------------------------------------


def _text_layout(feature: Any, column: str) -> Layout:
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return "train"
    inner = getattr(feature, "feature", None)
    if isinstance(feature, datasets.List | datasets.LargeList) and isinstance(inner, datasets.Value):
        if inner.dtype in ("string", "large_string"):
            return "eval"
    raise TypeError(f"text column {column!r} must hold strings or lists of strings, got {feature}")


def _image_sources(
    dataset: datasets.Dataset, column: str
) -> tuple[datasets.Dataset, list[str | bytes | None], list[str]]:
    """Cast ``column`` to an RGB :class:`datasets.Image` and return per-row raw sources and references."""
    feature = dataset.features[column]
    if isinstance(feature, datasets.Image):
        dataset = dataset.cast_column(column, datasets.Image(mode="RGB", decode=feature.decode))
    elif isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        dataset = dataset.cast_column(column, datasets.Image(mode="RGB"))  # column of file paths
    else:
        raise TypeError(f"image column {column!r} must be a datasets.Image or a column of paths, got {feature}")
    raw = dataset.select_columns([column]).cast_column(column, datasets.Image(decode=False))
    sources: list[str | bytes | None] = []
    refs: list[str] = []
    for batch in raw.iter(batch_size=256):
        for value in batch[column]:
            row = len(refs)
            if value is None:
                sources.append(None)
                refs.append(f"row {row}")
                continue
            data, path = value.get("bytes"), value.get("path")
            sources.append(data if data is not None else path)
            refs.append(f"row {row}: {path}" if path else f"row {row}")
    return dataset, sources, refs


def load_image_text_dataset(
    dataset: datasets.Dataset,
    image_column: str = "image",
    text_column: str = "caption",
    *,
    image_id_column: str | None = None,
    on_error: OnError = "raise",
    check_images: bool = True,
    num_workers: int | None = None,
    return_report: bool = False,
) -> datasets.Dataset | tuple[datasets.Dataset, LoadReport]:
    """Adapt any :mod:`datasets` image–caption dataset to vlalign's layout by column names.

    Args:
        dataset: the source; its image column is a :class:`datasets.Image` or a column of file paths.
        image_column, text_column: source column names.  A text column of lists gives the eval layout
            (``captions``); a text column of strings gives the train layout (``caption``).
        image_id_column: column identifying images; default ``"image_id"`` when present, otherwise the row index.
        on_error, check_images, num_workers, return_report: as in :func:`load_karpathy_json`.

    Returns:
        Eval layout: ``image``, ``captions``, ``image_id``; train layout: ``image``, ``caption``, ``image_id`` and
        ``idx`` (contiguous per distinct ``image_id``).  Other columns are dropped; images are not decoded or
        copied.  With ``return_report=True``: ``(dataset, report)``.
    """
    _validate_on_error(on_error)
    source = f"dataset {dataset.info.dataset_name or ''}".rstrip() + f" ({dataset.num_rows} rows)"
    for name in (image_column, text_column):
        if name not in dataset.column_names:
            raise ValueError(f"column {name!r} not in the dataset (columns: {dataset.column_names})")
    if image_id_column is None and "image_id" in dataset.column_names:
        image_id_column = "image_id"
    if image_id_column is not None and image_id_column not in dataset.column_names:
        raise ValueError(f"image_id_column {image_id_column!r} not in the dataset (columns: {dataset.column_names})")
    layout = _text_layout(dataset.features[text_column], text_column)

    keep_columns = list(dict.fromkeys(c for c in (image_column, text_column, image_id_column) if c is not None))
    dataset = dataset.select_columns(keep_columns)
    dataset, sources, refs = _image_sources(dataset, image_column)
    if check_images:
        to_check = [s for s in sources if s is not None]
        checked = iter(_check_images(to_check, num_workers))
        problems = [("no image" if s is None else next(checked)) for s in sources]
    else:
        problems = ["no image" if s is None else None for s in sources]
    texts = dataset[text_column]
    keep, cleaned, bad_images, empty = _screen(layout, texts, refs, problems, source=source)
    report = LoadReport(source, layout, dataset.num_rows, len(keep), tuple(bad_images), tuple(empty))
    _finish(report, on_error)

    if image_id_column is None:
        image_ids: list[Any] = list(range(dataset.num_rows))
        id_feature: Any = datasets.Value("int64")
    else:
        image_ids = list(dataset[image_id_column])
        id_feature = dataset.features[image_id_column]

    # Build the new columns at full length, then select the kept rows (an indices mapping: nothing is copied).
    out_text = "captions" if layout == "eval" else "caption"
    rebuilt = {out_text: cleaned, "image_id": image_ids}
    rebuilt_features = {out_text: dataset.features[text_column], "image_id": id_feature}
    if layout == "train":
        rebuilt["idx"] = _contiguous_ids(image_ids, keep, dataset.num_rows)
        rebuilt_features["idx"] = datasets.Value("int64")
    result = dataset.select_columns([image_column])
    if image_column != "image":
        result = result.rename_column(image_column, "image")
    for name, values in rebuilt.items():
        result = result.add_column(name, values, feature=rebuilt_features[name])
    if len(keep) != dataset.num_rows:
        result = result.select(keep)
    return _report_or_dataset(result, report, return_report)
