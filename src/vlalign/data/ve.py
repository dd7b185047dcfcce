"""Visual entailment (SNLI-VE) data: the official ALBEF/SIMLA JSON format (``ve_train.json``, ``ve_dev.json``,
``ve_test.json``: a list of ``{"image": "<Flickr30k id>", "sentence": "<hypothesis>", "label": "entailment" |
"neutral" | "contradiction"}``, the image read from ``<image_root>/<image>.jpg`` as the official ``ve_dataset.py``
does).

The loader returns the **VE layout**, one row per (image, hypothesis) pair: ``image`` (:class:`datasets.Image`),
``sentence`` (str, as in the file: the processor's ``"train"`` preset applies the official ``pre_caption``) and
``label`` (:class:`datasets.ClassLabel` with the official indices: contradiction 0, neutral 1, entailment 2).

Problems are handled as by the other loaders (:mod:`vlalign.data.loaders`): a malformed file or entry (not a list, not
an object, a missing or non-string ``image`` / ``sentence`` / ``label``) raises a ``ValueError`` naming the file, the
entry and the fix; unreadable images, blank hypotheses and labels outside the three classes (SNLI's ``"-"``, no
annotator consensus) raise a :class:`~vlalign.data.loaders.DataValidationError` with ``on_error="raise"`` (default), or
are dropped, counted and reported in a warning with ``on_error="skip"``.
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
from ..models.modeling_albef_ve import VE_ID2LABEL
from .collator import AlignmentCollator, _row_label
from .loaders import (
    CheckImages,
    OnError,
    ProblemListsReport,
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

__all__ = ["VE_LABELS", "VeCollator", "VeLoadReport", "load_ve_dataset", "load_ve_json", "ve_features"]

#: the class names in index order (the official `ve_dataset.py` map: contradiction 0, neutral 1, entailment 2)
VE_LABELS = tuple(VE_ID2LABEL[index] for index in sorted(VE_ID2LABEL))
_ENTRY_FORMAT = (
    'Each entry must be {"image": "<image id, read as <image_root>/<id>.jpg>", "sentence": "<hypothesis>", '
    f'"label": one of {", ".join(map(repr, VE_LABELS))}}} (the official SNLI-VE JSON).'
)


def ve_features() -> datasets.Features:
    """The features of the VE layout."""
    return datasets.Features(
        {
            "image": datasets.Image(),
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=VE_LABELS),
        }
    )


@dataclass(frozen=True)
class VeLoadReport(ProblemListsReport):
    """What :func:`load_ve_json` found and kept.

    Attributes:
        source: the annotation file(s).
        num_samples: pairs in the source.
        num_kept: pairs in the returned dataset.
        bad_images: ``(image reference, reason)`` for every distinct image that could not be read.
        bad_rows: ``(entry reference, reason)`` for blank hypotheses and unknown labels.
        image_check: how far images were checked (``check_images``).
    """

    source: str
    num_samples: int
    num_kept: int
    bad_images: tuple[tuple[str, str], ...] = ()
    bad_rows: tuple[tuple[str, str], ...] = ()
    image_check: CheckImages = "header"

    problem_kinds = (("bad_images", "unreadable image(s)"), ("bad_rows", "bad pair(s)"))


def _check_entry(entry: object, where: str) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object, got {type(entry).__name__}. {_ENTRY_FORMAT}")
    require_string_fields(entry, ("image", "sentence", "label"), where, _ENTRY_FORMAT)


def _row_problem(sentence: str, label: str) -> str | None:
    """Why a pair cannot be used (None when it can)."""
    if is_blank(sentence):
        return "blank hypothesis"
    if label not in VE_LABELS:
        return f"label {label!r} is none of {', '.join(VE_LABELS)}"
    return None


def load_ve_json(
    annotation_files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    image_root: str | os.PathLike[str],
    *,
    on_error: OnError = "raise",
    check_images: CheckImages | bool = "header",
    num_workers: int | None = None,
    return_report: bool = False,
) -> datasets.Dataset | tuple[datasets.Dataset, VeLoadReport]:
    """Load official SNLI-VE annotation files into the VE layout, rows in file order.

    Args:
        annotation_files: one file or several (concatenated).
        image_root: the folder of the images (the official ``image_root``); entry ``image`` ``"X"`` is
            ``<image_root>/X.jpg`` (a name that already ends in ``.jpg`` is used as it is).
        on_error, check_images, num_workers, return_report: as in :func:`vlalign.data.loaders.load_karpathy_json`.
    """
    _validate_on_error(on_error)
    check = _check_mode(check_images)
    files = [annotation_files] if isinstance(annotation_files, str | os.PathLike) else list(annotation_files)
    if not files:
        raise ValueError("Pass at least one annotation file.")
    paths, sentences, labels, refs = [], [], [], []
    for file in files:
        entries = _read_json(file)
        if not isinstance(entries, list):
            raise ValueError(f"{file}: expected a JSON list of pairs, got {type(entries).__name__}. {_ENTRY_FORMAT}")
        for position, entry in enumerate(entries):
            where = f"{file}: entry {position}"
            _check_entry(entry, where)
            name = entry["image"] if entry["image"].lower().endswith(".jpg") else f"{entry['image']}.jpg"
            paths.append(str(Path(image_root) / name))
            sentences.append(entry["sentence"])
            labels.append(entry["label"])
            refs.append(f"{where}: {name}")
    distinct = list(dict.fromkeys(paths))
    problems = dict(zip(distinct, _check_images(distinct, check, num_workers), strict=True))
    keep, bad_images, bad_rows = [], {}, []
    for row, (path, sentence, label, ref) in enumerate(zip(paths, sentences, labels, refs, strict=True)):
        problem = _row_problem(sentence, label)
        if problem is not None:
            bad_rows.append((ref, problem))
        if problems[path] is not None:
            bad_images.setdefault(path, problems[path])
        if problem is None and problems[path] is None:
            keep.append(row)
    source = ", ".join(map(str, files))
    report = VeLoadReport(source, len(paths), len(keep), tuple(bad_images.items()), tuple(bad_rows), check)
    _finish(report, on_error)
    columns = {
        "image": [paths[i] for i in keep],
        "sentence": [sentences[i] for i in keep],
        "label": [VE_LABELS.index(labels[i]) for i in keep],
    }
    dataset = datasets.Dataset.from_dict(columns, features=ve_features())
    return _report_or_dataset(dataset, report, return_report)


def _label_names(dataset: datasets.Dataset, column: str, label_names: Sequence[str] | None) -> list[str] | None:
    """The names of an integer label column's classes: `label_names`, else its `ClassLabel` names; None for a
    column of label names."""
    feature = dataset.features[column]
    if label_names is not None:
        return list(label_names)
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if getattr(feature, "dtype", None) == "string":
        return None
    raise ValueError(
        f"label_column={column!r} holds {feature} without class names; pass label_names (the class of each index, "
        f"e.g. {list(VE_LABELS)} for the official order) or a ClassLabel / string column."
    )


def load_ve_dataset(
    dataset: datasets.Dataset,
    image_column: str | Sequence[str] = "image",
    sentence_column: str | None = None,
    label_column: str = "label",
    *,
    label_names: Sequence[str] | None = None,
    image_root: str | os.PathLike[str] | None = None,
    split: str | Sequence[str] | None = None,
    split_column: str = "split",
    on_error: OnError = "raise",
    check_images: CheckImages | bool = "header",
    num_workers: int | None = None,
    return_report: bool = False,
) -> datasets.Dataset | tuple[datasets.Dataset, VeLoadReport]:
    """Adapt an SNLI-VE-style :mod:`datasets` dataset (image, hypothesis, label) to the VE layout.

    Args:
        dataset: the source, e.g. an SNLI-VE dataset from the Hub.
        image_column: a :class:`datasets.Image` column, or columns of path parts joined under ``image_root``.
        sentence_column: the hypothesis; default ``"sentence"``, else ``"hypothesis"``, whichever the dataset has.
        label_column: the label: a :class:`datasets.ClassLabel` or integer column (its class names are mapped to the
            official indices by name, whatever their order in the source) or a column of label names.
        label_names: the class name of each index of an integer label column without class names.
        image_root, split, split_column, on_error, check_images, num_workers, return_report: as in
            :func:`vlalign.data.loaders.load_image_text_dataset`.

    A row with a blank hypothesis, or a label that is none of the three classes (a missing label, -1, SNLI's
    ``"-"``), is a bad pair; images are not decoded.
    """
    _validate_on_error(on_error)
    check = _check_mode(check_images)
    image_columns = [image_column] if isinstance(image_column, str) else list(image_column)
    if sentence_column is None:
        sentence_column = next((c for c in ("sentence", "hypothesis") if c in dataset.column_names), "sentence")
    _require_columns(
        dataset,
        image_column=image_columns,
        sentence_column=sentence_column,
        label_column=label_column,
        split_column=split_column if split is not None else None,
    )
    names = _label_names(dataset, label_column, label_names)
    source_name = f"dataset {dataset.info.dataset_name or ''}".rstrip()
    source = f"{source_name} ({dataset.num_rows} rows{'' if split is None else f', split {split}'})"
    rows = _split_rows(dataset, split_column, split)
    images, image_sources, refs = _image_sources(dataset, image_columns, image_root, rows)
    image_problems = _check_images(image_sources, check, num_workers)
    sentences, raw_labels = _column(dataset, sentence_column), _column(dataset, label_column)
    keep, bad_images, bad_rows, labels = [], {}, [], []
    for position, (row, ref, image_problem) in enumerate(zip(rows, refs, image_problems, strict=True)):
        sentence, label = sentences[row], raw_labels[row]
        if sentence is not None and not isinstance(sentence, str):
            raise TypeError(f"{source}: {ref}: the hypothesis must be a string, got {sentence!r}.")
        if names is not None and isinstance(label, int) and 0 <= label < len(names):
            label = names[label]
        problem = _row_problem(sentence or "", label if isinstance(label, str) else repr(label))
        if problem is not None:
            bad_rows.append((ref, problem))
        if image_problem is not None:
            bad_images.setdefault(ref, image_problem)
        if problem is None and image_problem is None:
            keep.append(position)
            labels.append(VE_LABELS.index(label))
    report = VeLoadReport(source, len(rows), len(keep), tuple(bad_images.items()), tuple(bad_rows), check)
    _finish(report, on_error)
    columns = {"sentence": [sentences[rows[k]] for k in keep], "label": labels}
    features = {name: feature for name, feature in ve_features().items() if name != "image"}
    result = _assemble(images, [rows[k] for k in keep], columns, features)
    return _report_or_dataset(result, report, return_report)


@dataclass
class VeCollator(AlignmentCollator):
    """Collate VE-layout rows into the training inputs of the `<Method>ForVisualEntailment` models.

    Images are loaded, checked and transformed as by :class:`~vlalign.data.collator.AlignmentCollator` (same
    ``image_transform``, row-seeded augmentations, errors naming the row); hypotheses are tokenized with the
    processor's ``preset`` (default ``"train"``: the official ``pre_caption(s, 30)``, padded to the longest, no
    truncation, as `VE.py`).

    Returns:
        ``pixel_values`` [B, 3, H, W], ``input_ids`` / ``attention_mask`` [B, L] and ``labels`` long [B] (class
        indices; label names such as ``"entailment"`` are mapped with the official order).
    """

    preset: str = "train"
    text_column: str = "sentence"
    label_column: str = "label"

    def __post_init__(self) -> None:
        super().__post_init__()
        unused = [name for name in ("idx_column", "masked_image_modeling") if getattr(self, name) is not None]
        if self.teacher_view:
            unused.append("teacher_view")
        if unused:
            raise ValueError(f"VeCollator does not use {unused}; visual entailment has no such inputs.")

    def _collate(self, rows: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        sentences = [row[self.text_column] for row in rows]
        self._check_texts(sentences, rows)
        labels = [self._label(position, row) for position, row in enumerate(rows)]
        images = [self._load_image(position, row) for position, row in enumerate(rows)]
        encoded = self.processor(text=sentences, preset=self.preset, return_tensors="pt")
        return {
            "pixel_values": self._pixel_values(images, rows),
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "labels": torch.tensor(labels, dtype=torch.long),
        }

    def _label(self, position: int, row: Mapping[str, Any]) -> int:
        where = _row_label(position, row, capital=True)
        if self.label_column not in row:
            raise KeyError(
                f"{where} has no {self.label_column!r} column; available: {sorted(map(str, row))}. With "
                "transformers.Trainer, set TrainingArguments(remove_unused_columns=False)."
            )
        label = row[self.label_column]
        if isinstance(label, str) and label in VE_LABELS:
            return VE_LABELS.index(label)
        if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(VE_LABELS):
            return label
        raise ValueError(
            f"{where}: label {label!r} is not a class: pass an index 0..{len(VE_LABELS) - 1} or one of "
            f"{', '.join(VE_LABELS)}. Load the data with vlalign.data.ve.load_ve_json (on_error='skip' drops and "
            "counts such rows)."
        )
