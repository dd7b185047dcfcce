"""Loaders that bring real image–caption data into vlalign's two dataset layouts.

* **eval layout** – one row per image: ``image`` (:class:`datasets.Image`), ``captions`` (list of str) and
  ``image_id``; like ALBEF's ``coco_test.json`` / ``flickr30k_test.json`` and :func:`make_synthetic_dataset`.
* **train layout** – one row per image–caption pair: ``image``, ``caption`` (str), ``image_id`` and ``idx`` (a
  contiguous int per distinct ``image_id``, in order of first appearance, as ALBEF's retrieval training uses for its
  same-image positives); like ALBEF's ``coco_train.json``.

Images are checked with PIL when the dataset is loaded, as far as ``check_images`` asks, and every caption is
checked for being empty: nothing but whitespace and invisible characters (zero-width spaces and joiners, BOM, soft
hyphens: :func:`~vlalign.models.input_checks.is_blank`). Every check opens images with
:func:`~vlalign.models.input_checks.open_image`, so an image over the pixel limit (PIL's ``Image.MAX_IMAGE_PIXELS``
unless ``VLALIGN_MAX_IMAGE_PIXELS`` says otherwise) is a bad image:

* ``"header"`` (default): open each distinct image and read its size, without decoding. Catches missing files,
  non-images and garbage bytes; a truncated or corrupt image body surfaces when it is decoded: in ``datasets`` when a
  row of the returned (decoding) ``image`` column is read, or, for a column cast to ``datasets.Image(decode=False)``,
  in :class:`~vlalign.data.collator.AlignmentCollator`, whose error names the row, its ``image_id`` and the fix.
* ``"decode"``: ``Image.verify()`` followed by a full (JPEG: draft-scaled) decode; catches truncation too.
* ``"none"``: no image is opened; only missing (None) images are counted.

Cost of the load (measured: 2 cores, ``num_workers=2``, files in the page cache; 2,000 JPEGs of 640×480 px,
~110 kB each, about COCO's size; in brackets 2,000 of 64×64 px): ``"none"`` 0.02 s [0.03 s], ``"header"`` 0.12 s
[0.16 s], ``"decode"`` 2.1 s [0.41 s]. That is 60–80 µs per image for ``"header"`` (CC3M's 3.3 M images in about
4 minutes, plus the disk's time to open the files) and about 1 ms per COCO-sized image for ``"decode"`` (COCO's
123 k images in about 2 minutes; CC3M in about an hour).

Problems are never dropped silently: by default (``on_error="raise"``) a :class:`DataValidationError` names how
many samples are affected and the first few; with ``on_error="skip"`` the affected samples are dropped and a
:class:`UserWarning` says ``"skipped N of M samples: ..."``.  Pass ``return_report=True`` to also get a
:class:`LoadReport` with the full list of problems.

In the train layout, different images sharing one ``image_id`` would become one image for training (one ``idx``:
the same-image positives of ITC/ITM, as the official code keys them): the loaders refuse that by default, naming
the ids and images (``on_image_id_conflict="raise"``), or keep it with a warning (``"warn"``) or silently
(``"merge"``, the official behaviour).

Images stay lazy: the returned dataset stores file paths (or the source dataset's bytes) and decodes on access, in
the file's own mode; the processors and the collator convert to RGB (16-bit images scaled to 8 bits, see
:func:`vlalign.models.input_checks.to_rgb`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import datasets
import pyarrow as pa
import pyarrow.compute as pc
from PIL import UnidentifiedImageError

from ..models.input_checks import is_blank, open_image

__all__ = [
    "DataValidationError",
    "ImageIdConflictError",
    "LoadReport",
    "load_image_text_dataset",
    "load_karpathy_json",
]

Layout = Literal["eval", "train"]
OnError = Literal["raise", "skip"]
CheckImages = Literal["decode", "header", "none"]
OnImageIdConflict = Literal["raise", "warn", "merge"]

_MAX_LISTED = 3  # problems quoted in error and warning messages


def require_string_fields(entry: dict, keys: Sequence[str], where: str, entry_format: str) -> None:
    """Refuse an annotation entry whose `keys` are missing or not strings, naming the entry (`where`), the key, what
    it holds, and the expected format (`entry_format`)."""
    for key in keys:
        if not isinstance(entry.get(key), str):
            found = "missing" if key not in entry else f"{type(entry[key]).__name__} {entry[key]!r}"
            raise ValueError(f"{where}: {key!r} must be a string, it is {found}. {entry_format}")


class ProblemListsReport:
    """`num_skipped`, `ok` and `describe_problems` of a task loader's report (VQA, visual entailment), a frozen
    dataclass with `num_samples`, `num_kept` and one tuple of `(reference, reason)` pairs per kind of problem, named
    with the kind's description in `problem_kinds`."""

    #: (field, description) of each kind of problem, in the order `describe_problems` lists them
    problem_kinds: tuple[tuple[str, str], ...] = ()

    @property
    def num_skipped(self) -> int:
        return self.num_samples - self.num_kept

    @property
    def ok(self) -> bool:
        return not any(getattr(self, name) for name, _ in self.problem_kinds)

    def describe_problems(self) -> str:
        """Counts and the first few examples of each kind of problem, in one line."""
        parts = []
        for name, kind in self.problem_kinds:
            if problems := getattr(self, name):
                shown = "; ".join(f"{ref} ({reason})" for ref, reason in problems[:_MAX_LISTED])
                more = ", ..." if len(problems) > _MAX_LISTED else ""
                parts.append(f"{len(problems)} {kind}: {shown}{more}")
        return "; ".join(parts) if parts else "no problems"


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
        image_check: how far images were checked (``check_images``): problems beyond it are not in ``bad_images``.
        shared_image_ids: ``(image_id, image references)`` for every ``image_id`` that names more than one distinct
            image in the train layout (kept, merged into one image, with ``on_image_id_conflict="warn"/"merge"``).
    """

    source: str
    layout: Layout
    num_samples: int
    num_kept: int
    bad_images: tuple[tuple[str, str], ...] = ()
    empty_captions: tuple[str, ...] = ()
    image_check: CheckImages = "header"
    shared_image_ids: tuple[tuple[str, tuple[str, ...]], ...] = ()

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


class ImageIdConflictError(ValueError):
    """Raised with ``on_image_id_conflict="raise"`` when different images share an ``image_id``."""


# --------------------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------------------


def _image_problem(source: str | bytes, check: CheckImages) -> str | None:
    """Return why ``source`` (a path or encoded bytes) is not a readable image under ``check``, or None when it is."""

    def open_file() -> Any:  # the size limit of `open_image` applies: an oversized image is a problem
        return open_image(source)

    try:
        with open_file() as image:  # reads the header only
            if 0 in image.size:
                return "empty image (0 pixels)"
            if check == "decode":
                image.verify()  # structure and checksums, without decoding
        if check == "decode":
            with open_file() as image:  # verify() leaves the object unusable; decode for real to catch truncation
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


def _check_images(
    sources: Sequence[str | bytes | None], check: CheckImages, num_workers: int | None
) -> list[str | None]:
    """The problem of each source (None: no image) under ``check``; each is opened once, in threads."""
    if check == "none":
        return ["no image" if source is None else None for source in sources]
    present = [source for source in sources if source is not None]
    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    if workers <= 1 or len(present) < 2:
        checked = iter([_image_problem(source, check) for source in present])
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL releases the GIL while reading and decoding
            checked = iter(list(pool.map(partial(_image_problem, check=check), present, chunksize=16)))
    return ["no image" if source is None else next(checked) for source in sources]


def _check_mode(check_images: CheckImages | bool) -> CheckImages:
    """``check_images`` as a mode; ``True``/``False`` (the examples' ``--check_images`` flag) mean decode/none."""
    if isinstance(check_images, bool):
        return "decode" if check_images else "none"
    if check_images not in ("decode", "header", "none"):
        raise ValueError(f"check_images must be 'decode', 'header' or 'none', got {check_images!r}")
    return check_images


def _is_empty(caption: Any, where: str) -> bool:
    if caption is None:
        return True
    if not isinstance(caption, str):
        raise TypeError(f"{where}: captions must be strings, got {type(caption).__name__}")
    return is_blank(caption)  # whitespace and invisible characters only (zero-width space, BOM, ...) count as empty


def _validate_on_error(on_error: str, on_image_id_conflict: str = "raise") -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if on_image_id_conflict not in ("raise", "warn", "merge"):
        raise ValueError(f"on_image_id_conflict must be 'raise', 'warn' or 'merge', got {on_image_id_conflict!r}")


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


def _shared_image_ids(
    image_ids: Sequence[Any], sources: Sequence[Any], refs: Sequence[str], rows: Sequence[int]
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Every image id among ``rows`` that names more than one distinct image (a path, or encoded bytes compared by
    content), with a reference of each of its images."""
    digests: dict[int, bytes] = {}  # repeated rows hold the same bytes object: hash it once

    def identity(source: Any) -> Any:
        if isinstance(source, (bytes, bytearray)):
            return digests.setdefault(id(source), hashlib.blake2b(source, digest_size=16).digest())
        return source

    images: dict[Any, dict[Any, str]] = {}
    for row in rows:
        images.setdefault(image_ids[row], {}).setdefault(identity(sources[row]), refs[row])
    return tuple((str(i), tuple(files.values())) for i, files in images.items() if len(files) > 1)


def _check_shared_image_ids(
    shared: tuple[tuple[str, tuple[str, ...]], ...], on_conflict: OnImageIdConflict, source: str
) -> None:
    """Raise or warn about ``image_id`` values shared by different images (``"merge"``: keep them silently)."""
    if not shared or on_conflict == "merge":
        return

    def listed(items: Sequence[str]) -> str:
        return ", ".join(items[:_MAX_LISTED]) + (", ..." if len(items) > _MAX_LISTED else "")

    examples = "; ".join(f"image_id {image_id!r}: {listed(files)}" for image_id, files in shared[:_MAX_LISTED])
    more = "; ..." if len(shared) > _MAX_LISTED else ""
    message = (
        f"{source}: {len(shared)} image_id(s) name more than one image: {examples}{more}. Training takes the rows of "
        "one image_id as one image (its idx: the same-image positives of ITC/ITM), so these different images would "
        "be learned as the same image."
    )
    if on_conflict == "raise":
        raise ImageIdConflictError(
            f"{message} Give each image its own image_id, or pass on_image_id_conflict='merge' to keep the official "
            "behaviour (positives keyed by image_id; 'warn' keeps it with a warning)."
        )
    warnings.warn(f"{message} Kept as one image each, as the official code does.", UserWarning, stacklevel=3)


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


def _read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON document in `path` (UTF-8, a leading BOM allowed); a file that is not UTF-8 or not JSON raises a
    ``ValueError`` naming the file, the place (line, column; byte offset for encoding errors) and the fix."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(
            f"{path}: not UTF-8 text ({err.reason}): byte {data[err.start : err.start + 1]!r} at byte offset "
            f"{err.start} (line {line}, column {column}). Annotation files must be UTF-8 JSON; convert the file, e.g. "
            f"`iconv -f latin1 -t utf-8 {path} > fixed.json` (if it is Latin-1)."
        ) from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno} (character {err.pos}). Fix "
            f"the file there (`python -m json.tool {path}` shows the same place); it must hold a JSON list of "
            "annotations."
        ) from err


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
    check_images: CheckImages | bool = "header",
    num_workers: int | None = None,
    on_image_id_conflict: OnImageIdConflict = "raise",
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
        check_images: how far to check every distinct image, once: ``"header"`` (open and read the size; default),
            ``"decode"`` (full decode; also catches truncated files) or ``"none"`` (see the module docstring for what
            each costs). ``True``/``False`` mean ``"decode"``/``"none"``.
        num_workers: threads for the image check (default ``min(8, cpu_count)``).
        on_image_id_conflict: what to do when, in the train layout, one ``image_id`` names different image files:
            ``"raise"`` (default) an :class:`ImageIdConflictError` naming them; ``"warn"`` or ``"merge"`` (silently)
            keep the official behaviour, one ``idx`` per ``image_id``, so those images count as one (their captions
            are each other's positives).
        return_report: also return the :class:`LoadReport`.

    Returns:
        Eval layout: ``image``, ``captions``, ``image_id`` (the entry's ``image_id`` if present, else its relative
        image path; str).  Train layout: ``image``, ``caption``, ``image_id`` (str; the image path when missing) and
        ``idx`` (int, contiguous per distinct ``image_id``).  With ``return_report=True``: ``(dataset, report)``.
    """
    _validate_on_error(on_error, on_image_id_conflict)
    check = _check_mode(check_images)
    source = str(annotation_file)
    entries = _read_json(annotation_file)
    if not isinstance(entries, list):
        raise ValueError(f"{source}: expected a json list of annotations, got {type(entries).__name__}")
    layout = _detect_layout(entries, split_layout, source)

    paths = [os.path.join(image_root, entry["image"]) for entry in entries]  # not Path(): ~25 µs per path
    image_ids = [str(entry.get("image_id", entry["image"])) for entry in entries]
    distinct = list(dict.fromkeys(paths))
    problems = dict(zip(distinct, _check_images(distinct, check, num_workers), strict=True))
    row_problems = [problems[p] for p in paths]
    texts = [entry["caption"] for entry in entries]
    keep, cleaned, bad_images, empty = _screen(layout, texts, paths, row_problems, source=source)
    shared = _shared_image_ids(image_ids, paths, paths, keep) if layout == "train" else ()
    _check_shared_image_ids(shared, on_image_id_conflict, source)

    report = LoadReport(source, layout, len(entries), len(keep), tuple(bad_images), tuple(empty), check, shared)
    _finish(report, on_error)

    image_feature = datasets.Image()
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


def _column(dataset: datasets.Dataset, name: str) -> list[Any]:
    """A column's values as a Python list, through Arrow (indexing a :class:`datasets.Column` row by row is ~100×
    slower, minutes for CC3M)."""
    return dataset.with_format("arrow")[name].to_pylist()


def _require_columns(dataset: datasets.Dataset, **arguments: str | Sequence[str] | None) -> None:
    """Raise naming the argument, the missing column and the available columns."""
    for argument, names in arguments.items():
        for name in [names] if isinstance(names, str) else names or ():
            if name not in dataset.column_names:
                raise ValueError(
                    f"{argument}={name!r} is not a column of the dataset; its columns are {dataset.column_names}"
                )


def _split_rows(dataset: datasets.Dataset, split_column: str, split: str | Sequence[str] | None) -> list[int]:
    """Source rows whose ``split_column`` is ``split`` (or one of them); every row when ``split`` is None."""
    if split is None:
        return list(range(dataset.num_rows))
    wanted = {split} if isinstance(split, str) else set(split)
    values = _column(dataset, split_column)
    rows = [row for row, value in enumerate(values) if value in wanted]
    if not rows:
        raise ValueError(
            f"no row has {split_column}={sorted(wanted)}; the column holds {sorted(set(values), key=str)}"
        )
    return rows


def _image_sources(
    dataset: datasets.Dataset, columns: Sequence[str], image_root: str | os.PathLike[str] | None, rows: list[int]
) -> tuple[datasets.Dataset, list[str | bytes | None], list[str]]:
    """The image column as a one-column :class:`datasets.Image` dataset over *all* source rows, and the raw
    source (path or bytes; None when missing) and a reference of each of ``rows``.

    ``columns`` is one :class:`datasets.Image` column, or one or more columns of path parts, joined (under
    ``image_root`` when given) into each row's path.
    """
    feature = dataset.features[columns[0]]
    if len(columns) == 1 and isinstance(feature, datasets.Image):
        if image_root is not None:
            raise ValueError(f"image_root is for columns of paths; image column {columns[0]!r} holds the images")
        images = dataset.select_columns(list(columns)).cast_column(columns[0], datasets.Image(decode=feature.decode))
        raw = images.cast_column(columns[0], datasets.Image(decode=False)).select(rows).with_format("arrow")
        sources: list[str | bytes | None] = []
        paths: list[str | None] = []
        for batch in raw.iter(batch_size=1024):  # arrow batches: no Python copy of the bytes unless asked for
            struct = batch.column(columns[0])
            data = pc.struct_field(struct, "bytes").to_pylist()
            batch_paths = pc.struct_field(struct, "path").to_pylist()
            valid = pc.invert(struct.is_null()).to_pylist()
            sources += [
                (d if d is not None else p) if ok else None for d, p, ok in zip(data, batch_paths, valid, strict=True)
            ]
            paths += batch_paths
        refs = [f"row {row}: {path}" if path else f"row {row}" for row, path in zip(rows, paths, strict=True)]
        return images if columns[0] == "image" else images.rename_column(columns[0], "image"), sources, refs

    for column in columns:
        feature = dataset.features[column]
        if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
            raise TypeError(
                f"image column {column!r} must be a datasets.Image or a column of (relative) paths, got {feature}"
            )
    parts = zip(*(_column(dataset, column) for column in columns), strict=True)
    root = () if image_root is None else (image_root,)
    all_paths = [None if None in p else os.path.join(*root, *p) for p in parts]
    path_array = pa.array(all_paths, pa.string())
    encoded = pa.StructArray.from_arrays(
        [pa.nulls(len(all_paths), pa.binary()), path_array], names=["bytes", "path"], mask=path_array.is_null()
    )
    images = _arrow_dataset({"image": encoded}, {"image": datasets.Image()})
    sources = [all_paths[row] for row in rows]
    refs = [f"row {row}: {path}" if path else f"row {row}" for row, path in zip(rows, sources, strict=True)]
    return images, sources, refs


def _arrow_dataset(columns: dict[str, Any], features: dict[str, Any]) -> datasets.Dataset:
    """A dataset made straight from Arrow arrays or Python lists: ``Dataset.from_dict`` / ``add_column`` encode row
    by row and hash the data for a fingerprint, minutes for a million rows."""
    schema = datasets.Features(features)
    table = pa.Table.from_pydict(columns, schema=schema.arrow_schema)
    return datasets.Dataset(datasets.table.InMemoryTable(table), info=datasets.DatasetInfo(features=schema))


def _assemble(
    images: datasets.Dataset, rows: list[int], columns: dict[str, list[Any]], features: dict[str, Any]
) -> datasets.Dataset:
    """``images`` (one row per source row) at ``rows`` beside ``columns`` (one value per output row).

    When each source row is used at most once, the columns are added at full length and the rows selected as an
    indices mapping, so the images are neither decoded nor copied; repeated rows (one row per caption) copy them into
    memory.
    """
    if len(set(rows)) < len(rows):
        taken = images.with_format("arrow")[rows].combine_chunks()
        return _arrow_dataset(
            {**{name: taken[name] for name in taken.column_names}, **columns}, {**images.features, **features}
        )
    full = {name: [None] * images.num_rows for name in columns}
    for name, values in columns.items():
        for row, value in zip(rows, values, strict=True):
            full[name][row] = value
    result = datasets.concatenate_datasets([images, _arrow_dataset(full, features)], axis=1)
    return result if rows == list(range(images.num_rows)) else result.select(rows)


def load_image_text_dataset(
    dataset: datasets.Dataset,
    image_column: str | Sequence[str] = "image",
    text_column: str = "caption",
    *,
    image_id_column: str | None = None,
    image_root: str | os.PathLike[str] | None = None,
    split: str | Sequence[str] | None = None,
    split_column: str = "split",
    layout: Layout | None = None,
    on_error: OnError = "raise",
    check_images: CheckImages | bool = "header",
    num_workers: int | None = None,
    on_image_id_conflict: OnImageIdConflict = "raise",
    return_report: bool = False,
) -> datasets.Dataset | tuple[datasets.Dataset, LoadReport]:
    """Adapt any :mod:`datasets` image–caption dataset to vlalign's layouts by column names.

    The Hub forms of the Karpathy splits load directly, e.g. ``nlphuji/flickr30k`` (images inside, a caption list,
    a ``split`` column) and ``yerevann/coco-karpathy`` (relative paths, a sentence list, a ``split`` column; images
    in a local COCO folder)::

        flickr = load_dataset("nlphuji/flickr30k", split="test")
        test = load_image_text_dataset(flickr, text_column="caption", image_id_column="img_id", split="test")
        coco = load_dataset("yerevann/coco-karpathy", split="train")
        train = load_image_text_dataset(
            coco, ("filepath", "filename"), "sentences", image_root="coco/images", image_id_column="cocoid",
            split=("train", "restval"), layout="train",
        )

    Args:
        dataset: the source.
        image_column: a :class:`datasets.Image` column, or one or more columns of path parts (e.g.
            ``("filepath", "filename")``) joined under ``image_root`` into each image's path.
        text_column: a column of strings (one caption per row) or of lists of strings (all captions of an image).
        image_id_column: column identifying images; default ``"image_id"`` when present, otherwise the source row.
        image_root: directory the paths of a path column are relative to.
        split, split_column: keep only the rows whose ``split_column`` is ``split`` (a name or several, e.g. the
            Karpathy training set ``("train", "restval")``); images outside it are not checked.
        layout: ``"eval"`` (one row per image, ``captions``) or ``"train"`` (one row per caption, ``caption``);
            default from the text column (lists: eval; strings: train). ``"train"`` from a list column gives each
            caption its own row, copying the image column into memory (cheap for paths; for images stored in the
            dataset, consider the eval layout with ``AlignmentCollator(text_column="captions")`` instead).
        on_error, check_images, num_workers, on_image_id_conflict, return_report: as in :func:`load_karpathy_json`
            (encoded images stored in the dataset are compared by content).

    Returns:
        Eval layout: ``image``, ``captions``, ``image_id``; train layout: ``image``, ``caption``, ``image_id`` and
        ``idx`` (contiguous per distinct ``image_id``).  Other columns are dropped; images are not decoded.  With
        ``return_report=True``: ``(dataset, report)``; the report counts the rows of ``split`` (of pairs in the
        train layout).
    """
    _validate_on_error(on_error, on_image_id_conflict)
    check = _check_mode(check_images)
    image_columns = [image_column] if isinstance(image_column, str) else list(image_column)
    if image_id_column is None and "image_id" in dataset.column_names:
        image_id_column = "image_id"
    _require_columns(
        dataset,
        image_column=image_columns,
        text_column=text_column,
        image_id_column=image_id_column,
        split_column=split_column if split is not None else None,
    )
    source_layout = _text_layout(dataset.features[text_column], text_column)
    layout = layout or source_layout
    if layout not in ("eval", "train"):
        raise ValueError(f"layout must be 'eval', 'train' or None, got {layout!r}")
    if layout == "eval" and source_layout == "train":
        raise ValueError(
            f"layout='eval' needs a text column of caption lists; {text_column!r} holds one caption per row. Group "
            "the captions per image first, or use layout='train'."
        )
    name = f"dataset {dataset.info.dataset_name or ''}".rstrip()
    source = f"{name} ({dataset.num_rows} rows{'' if split is None else f', split {split}'})"

    rows = _split_rows(dataset, split_column, split)
    images, sources, refs = _image_sources(dataset, image_columns, image_root, rows)
    problems = _check_images(sources, check, num_workers)
    all_texts = _column(dataset, text_column)
    texts = [all_texts[row] for row in rows]
    if image_id_column is None:
        image_ids: list[Any] = rows
        id_feature: Any = datasets.Value("int64")
    else:
        all_ids = _column(dataset, image_id_column)
        image_ids = [all_ids[row] for row in rows]
        id_feature = dataset.features[image_id_column]
    if layout == "train" and source_layout == "eval":  # one row per caption; an image without any is reported
        pairs = [(i, caption) for i, captions in enumerate(texts) for caption in (captions or [None])]
        rows, refs, problems, image_ids, sources = (
            [values[i] for i, _ in pairs] for values in (rows, refs, problems, image_ids, sources)
        )
        texts = [caption for _, caption in pairs]

    keep, cleaned, bad_images, empty = _screen(layout, texts, refs, problems, source=source)
    shared = _shared_image_ids(image_ids, sources, refs, keep) if layout == "train" else ()
    _check_shared_image_ids(shared, on_image_id_conflict, source)
    report = LoadReport(source, layout, len(rows), len(keep), tuple(bad_images), tuple(empty), check, shared)
    _finish(report, on_error)

    text_name = "captions" if layout == "eval" else "caption"
    columns = {text_name: [cleaned[k] for k in keep], "image_id": [image_ids[k] for k in keep]}
    features = {
        text_name: datasets.List(datasets.Value("string")) if layout == "eval" else datasets.Value("string"),
        "image_id": id_feature,
    }
    if layout == "train":
        columns["idx"] = [i for i in _contiguous_ids(image_ids, keep, len(image_ids)) if i >= 0]
        features["idx"] = datasets.Value("int64")
    result = _assemble(images, [rows[k] for k in keep], columns, features)
    return _report_or_dataset(result, report, return_report)
