"""NLVR2 data: the official ALBEF/SIMLA JSON format (``nlvr_train.json``, ``nlvr_dev.json``, ``nlvr_test.json``: a
list of ``{"images": ["<left image>", "<right image>"], "sentence": "<statement>", "label": "True" | "False"}``, each
image read from ``<image_root>/<name>`` as the official ``nlvr_dataset.py`` does).

The loaders return the **NLVR2 layout**, one row per (image pair, sentence): ``image_left`` and ``image_right``
(:class:`datasets.Image`, in the official order: ``images[0]``, ``images[1]``), ``sentence`` (str, as in the file: the
processor's ``"train"`` preset applies the official ``pre_caption(s, 30)``) and ``label``
(:class:`datasets.ClassLabel` ``False`` 0 / ``True`` 1, the official indices).

Problems are handled as by the other loaders (:mod:`vlalign.data.loaders`): a malformed file or entry raises a
``ValueError`` naming the file, the entry and the format; unreadable images, blank sentences and labels other than
``"True"`` / ``"False"`` raise a :class:`~vlalign.data.loaders.DataValidationError` with ``on_error="raise"`` (default),
or are dropped, counted and reported in a warning with ``on_error="skip"``. The official dataset maps any label other
than ``"True"`` to 0 (a typo such as ``"true"`` silently becomes false); here such a label is a bad row.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch

from ..models.input_checks import is_blank
from .collator import AlignmentCollator, _row_label
from .loaders import (
    CheckImages,
    OnError,
    _assemble,
    _check_images,
    _check_mode,
    _column,
    _finish,
    _image_sources,
    _read_json,
    _report_or_dataset,
    _require_columns,
    _split_rows,
    _validate_on_error,
    require_string_fields,
)
from .ve import VeLoadReport

__all__ = [
    "NLVR_IMAGE_COLUMNS",
    "NLVR_LABELS",
    "NlvrCollator",
    "NlvrLoadReport",
    "load_nlvr_dataset",
    "load_nlvr_json",
    "nlvr_features",
]

#: the class names in index order (the official `nlvr_dataset.py`: "True" → 1, else 0)
NLVR_LABELS = ("False", "True")
#: the layout's image columns, in the official order (`images[0]`, `images[1]`)
NLVR_IMAGE_COLUMNS = ("image_left", "image_right")
#: image column pairs recognised in Hub datasets, tried in order
_HUB_IMAGE_COLUMNS = (NLVR_IMAGE_COLUMNS, ("left_image", "right_image"), ("image_0", "image_1"), ("img0", "img1"))
_ENTRY_FORMAT = (
    'Each entry must be {"images": ["<left image>", "<right image>"] (file names under image_root), "sentence": '
    '"<statement>", "label": "True" or "False"} (the official NLVR2 JSON).'
)


def nlvr_features() -> datasets.Features:
    """The features of the NLVR2 layout."""
    return datasets.Features(
        {
            "image_left": datasets.Image(),
            "image_right": datasets.Image(),
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=NLVR_LABELS),
        }
    )


@dataclass(frozen=True)
class NlvrLoadReport(VeLoadReport):
    """What :func:`load_nlvr_json` / :func:`load_nlvr_dataset` found and kept (the fields of
    :class:`~vlalign.data.ve.VeLoadReport`; ``bad_rows`` lists blank sentences and unknown labels)."""


def _check_entry(entry: object, where: str) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object, got {type(entry).__name__}. {_ENTRY_FORMAT}")
    images = entry.get("images")
    if not (isinstance(images, list) and len(images) == 2 and all(isinstance(name, str) for name in images)):
        found = "missing" if "images" not in entry else repr(images)
        raise ValueError(f"{where}: 'images' must be a list of two file names, it is {found}. {_ENTRY_FORMAT}")
    require_string_fields(entry, ("sentence", "label"), where, _ENTRY_FORMAT)


def _row_problem(sentence: str, label: str) -> str | None:
    """Why a pair cannot be used (None when it can)."""
    if is_blank(sentence):
        return "blank sentence"
    if label not in NLVR_LABELS:
        return f"label {label!r} is neither 'True' nor 'False'"
    return None


def load_nlvr_json(
    annotation_files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    image_root: str | os.PathLike[str],
    *,
    on_error: OnError = "raise",
    check_images: CheckImages | bool = "header",
    num_workers: int | None = None,
    return_report: bool = False,
) -> datasets.Dataset | tuple[datasets.Dataset, NlvrLoadReport]:
    """Load official NLVR2 annotation files into the NLVR2 layout, rows in file order.

    Args:
        annotation_files: one file or several (concatenated).
        image_root: the folder of the images (the official ``image_root``); entry ``images`` ``[a, b]`` are
            ``<image_root>/a`` (left) and ``<image_root>/b`` (right).
        on_error, check_images, num_workers, return_report: as in :func:`vlalign.data.loaders.load_karpathy_json`;
            a pair is dropped when either image is unreadable.
    """
    _validate_on_error(on_error)
    check = _check_mode(check_images)
    files = [annotation_files] if isinstance(annotation_files, str | os.PathLike) else list(annotation_files)
    if not files:
        raise ValueError("Pass at least one annotation file.")
    pairs, sentences, labels, refs = [], [], [], []
    for file in files:
        entries = _read_json(file)
        if not isinstance(entries, list):
            raise ValueError(f"{file}: expected a JSON list of pairs, got {type(entries).__name__}. {_ENTRY_FORMAT}")
        for position, entry in enumerate(entries):
            where = f"{file}: entry {position}"
            _check_entry(entry, where)
            pairs.append(tuple(str(Path(image_root) / name) for name in entry["images"]))
            sentences.append(entry["sentence"])
            labels.append(entry["label"])
            refs.append(where)
    distinct = list(dict.fromkeys(path for pair in pairs for path in pair))
    problems = dict(zip(distinct, _check_images(distinct, check, num_workers), strict=True))
    keep, bad_images, bad_rows = [], {}, []
    for row, (pair, sentence, label, ref) in enumerate(zip(pairs, sentences, labels, refs, strict=True)):
        problem = _row_problem(sentence, label)
        if problem is not None:
            bad_rows.append((ref, problem))
        for path in pair:
            if problems[path] is not None:
                bad_images.setdefault(path, f"{problems[path]} ({ref})")
        if problem is None and all(problems[path] is None for path in pair):
            keep.append(row)
    source = ", ".join(map(str, files))
    report = NlvrLoadReport(source, len(pairs), len(keep), tuple(bad_images.items()), tuple(bad_rows), check)
    _finish(report, on_error)
    columns = {
        "image_left": [pairs[i][0] for i in keep],
        "image_right": [pairs[i][1] for i in keep],
        "sentence": [sentences[i] for i in keep],
        "label": [NLVR_LABELS.index(labels[i]) for i in keep],
    }
    dataset = datasets.Dataset.from_dict(columns, features=nlvr_features())
    return _report_or_dataset(dataset, report, return_report)


def _label_name(label: Any) -> Any:
    """A Hub label as the official name: booleans and 0/1 map to "False"/"True"; other values are returned as they
    are (strings checked by name)."""
    if isinstance(label, bool):
        return NLVR_LABELS[int(label)]
    if isinstance(label, int) and label in (0, 1):
        return NLVR_LABELS[label]
    return label


def load_nlvr_dataset(
    dataset: datasets.Dataset,
    image_columns: Sequence[str] | None = None,
    sentence_column: str = "sentence",
    label_column: str = "label",
    *,
    image_root: str | os.PathLike[str] | None = None,
    split: str | Sequence[str] | None = None,
    split_column: str = "split",
    on_error: OnError = "raise",
    check_images: CheckImages | bool = "header",
    num_workers: int | None = None,
    return_report: bool = False,
) -> datasets.Dataset | tuple[datasets.Dataset, NlvrLoadReport]:
    """Adapt an NLVR2-style :mod:`datasets` dataset (two images, a sentence, a label) to the NLVR2 layout.

    Args:
        dataset: the source, e.g. an NLVR2 dataset from the Hub.
        image_columns: the (left, right) image columns, each a :class:`datasets.Image` column or a column of paths
            (under ``image_root``); default the first pair the dataset has of ``image_left``/``image_right``,
            ``left_image``/``right_image``, ``image_0``/``image_1``, ``img0``/``img1``.
        sentence_column: the statement.
        label_column: a :class:`datasets.ClassLabel` column with classes named ``False``/``True`` (any case, any
            order), a boolean column, a 0/1 integer column, or a column of ``"True"``/``"False"``.
        image_root, split, split_column, on_error, check_images, num_workers, return_report: as in
            :func:`vlalign.data.loaders.load_image_text_dataset`; a pair is dropped when either image is unreadable.
    """
    _validate_on_error(on_error)
    check = _check_mode(check_images)
    if image_columns is None:
        image_columns = next(
            (pair for pair in _HUB_IMAGE_COLUMNS if set(pair) <= set(dataset.column_names)), NLVR_IMAGE_COLUMNS
        )
    image_columns = list(image_columns)
    if len(image_columns) != 2:
        raise ValueError(f"image_columns must name the left and the right image column, got {image_columns}.")
    _require_columns(
        dataset,
        image_column=image_columns,
        sentence_column=sentence_column,
        label_column=label_column,
        split_column=split_column if split is not None else None,
    )
    feature = dataset.features[label_column]
    names = None
    if isinstance(feature, datasets.ClassLabel):
        names = [name.capitalize() for name in feature.names]
        if sorted(names) != sorted(NLVR_LABELS):
            raise ValueError(
                f"label_column={label_column!r} is a ClassLabel with classes {feature.names}; NLVR2 needs 'False' and "
                "'True' (mapped by name to the official indices False 0, True 1)."
            )
    source_name = f"dataset {dataset.info.dataset_name or ''}".rstrip()
    source = f"{source_name} ({dataset.num_rows} rows{'' if split is None else f', split {split}'})"
    rows = _split_rows(dataset, split_column, split)
    sides, problems_by_side, refs = [], [], None
    for column, name in zip(image_columns, NLVR_IMAGE_COLUMNS, strict=True):
        images, image_sources, side_refs = _image_sources(dataset, [column], image_root, rows)
        sides.append(images.rename_column("image", name))
        problems_by_side.append(_check_images(image_sources, check, num_workers))
        refs = refs or [ref.split(":")[0] for ref in side_refs]
        problems_by_side[-1] = [
            None if problem is None else (f"{side_ref} ({column})", problem)
            for side_ref, problem in zip(side_refs, problems_by_side[-1], strict=True)
        ]
    sentences, raw_labels = _column(dataset, sentence_column), _column(dataset, label_column)
    keep, bad_images, bad_rows, labels = [], {}, [], []
    for position, (row, ref) in enumerate(zip(rows, refs, strict=True)):
        sentence, label = sentences[row], raw_labels[row]
        if sentence is not None and not isinstance(sentence, str):
            raise TypeError(f"{source}: {ref}: the sentence must be a string, got {sentence!r}.")
        label = names[label] if names and isinstance(label, int) and 0 <= label < len(names) else _label_name(label)
        problem = _row_problem(sentence or "", label if isinstance(label, str) else repr(label))
        if problem is not None:
            bad_rows.append((ref, problem))
        image_problems = [side[position] for side in problems_by_side if side[position] is not None]
        for image_ref, image_problem in image_problems:
            bad_images.setdefault(image_ref, image_problem)
        if problem is None and not image_problems:
            keep.append(position)
            labels.append(NLVR_LABELS.index(label))
    report = NlvrLoadReport(source, len(rows), len(keep), tuple(bad_images.items()), tuple(bad_rows), check)
    _finish(report, on_error)
    images = datasets.concatenate_datasets(sides, axis=1)
    columns = {"sentence": [sentences[rows[k]] for k in keep], "label": labels}
    features = {name: feature for name, feature in nlvr_features().items() if name not in NLVR_IMAGE_COLUMNS}
    result = _assemble(images, [rows[k] for k in keep], columns, features)
    return _report_or_dataset(result, report, return_report)


@dataclass
class NlvrCollator(AlignmentCollator):
    """Collate NLVR2-layout rows into the training inputs of the `<Method>ForVisualReasoning` models.

    Both images of a row are loaded, checked and transformed as by :class:`~vlalign.data.collator.AlignmentCollator`
    (same ``image_transform``; the right image's augmentation has its own row seed, purpose ``"image_right"``, so the
    two views differ, resume exactly and split over processes as the left's). Sentences are tokenized with the
    processor's ``preset`` (default ``"train"``: the official ``pre_caption(s, 30)``, padded to the longest, no
    truncation, as `NLVR.py`).

    Returns:
        ``pixel_values`` ``[2B, 3, H, W]`` in the official order (all left images, then all right images:
        ``torch.cat([image0, image1])``), ``input_ids`` / ``attention_mask`` ``[B, L]`` and ``labels`` long ``[B]``
        (1 true, 0 false; ``"True"`` / ``"False"`` and booleans are mapped).
    """

    preset: str = "train"
    image_column: str = "image_left"
    right_image_column: str = "image_right"
    text_column: str = "sentence"
    label_column: str = "label"

    def __post_init__(self) -> None:
        super().__post_init__()
        unused = [name for name in ("idx_column", "masked_image_modeling") if getattr(self, name) is not None]
        if self.teacher_view:
            unused.append("teacher_view")
        if unused:
            raise ValueError(f"NlvrCollator does not use {unused}; visual reasoning has no such inputs.")

    def _collate(self, rows: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        sentences = [row[self.text_column] for row in rows]
        self._check_texts(sentences, rows)
        labels = [self._label(position, row) for position, row in enumerate(rows)]
        left = [self._load_image(position, row) for position, row in enumerate(rows)]
        right = self._right_images(rows)
        encoded = self.processor(text=sentences, preset=self.preset, return_tensors="pt")
        if self.image_transform is None:
            pixel_values = self._pixel_values(left + right, rows + rows)
        else:
            pixel_values = torch.cat([self._pixel_values(left, rows), self._transformed(right, rows, "image_right")])
        return {
            "pixel_values": pixel_values,
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "labels": torch.tensor(labels, dtype=torch.long),
        }

    def _right_images(self, rows: list[Mapping[str, Any]]) -> list[Any]:
        left_column = self.image_column
        self.image_column = self.right_image_column  # `_load_image` names the column it reads
        try:
            for position, row in enumerate(rows):
                if self.right_image_column not in row:
                    raise KeyError(
                        self._missing_column_message(self.right_image_column, "right_image_column", position, row)
                    )
            return [self._load_image(position, row) for position, row in enumerate(rows)]
        finally:
            self.image_column = left_column

    def _transformed(self, images: list[Any], rows: list[Mapping[str, Any]], purpose: str) -> torch.Tensor:
        pixel_values = self._transform_images(images, rows, purpose)
        self._check_pixel_values(pixel_values, rows, f"pixel_values ({purpose})")
        return pixel_values.to(torch.float32)

    def _label(self, position: int, row: Mapping[str, Any]) -> int:
        where = _row_label(position, row, capital=True)
        if self.label_column not in row:
            raise KeyError(
                f"{where} has no {self.label_column!r} column; available: {sorted(map(str, row))}. With "
                "transformers.Trainer, set TrainingArguments(remove_unused_columns=False)."
            )
        label = _label_name(row[self.label_column])
        if isinstance(label, str) and label in NLVR_LABELS:
            return NLVR_LABELS.index(label)
        raise ValueError(
            f"{where}: label {row[self.label_column]!r} is not a class: pass 0 / 1, a boolean, or 'False' / 'True'. "
            "Load the data with vlalign.data.nlvr.load_nlvr_json (on_error='skip' drops and counts such rows)."
        )
