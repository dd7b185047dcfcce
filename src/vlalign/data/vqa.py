"""Visual question answering data: the official ALBEF/SIMLA JSON formats, VQAv2-style `datasets`, and the collator
that weights answers as the official fine-tuning does.

Every loader returns the **VQA layout**, one row per question:

* ``image`` (:class:`datasets.Image`), ``question`` (str), ``question_id`` (int, or str when the source's ids are
  not all integers; None for a training question without one),
* ``answers`` (list of str): the human answers (ten per VQAv2 question, repeats kept: they are the votes), the single
  answer of a Visual Genome question, empty for a test question,
* ``dataset``: ``"vqa"`` or ``"vg"``, which decides the answer weights (see :func:`answer_weights`),
* ``question_type`` (str) when the source has one (VQAv2's "what color", the synthetic set's "color").

Problems are handled as by the caption loaders (:mod:`vlalign.data.loaders`): a malformed file or entry (not an
object, a missing ``question``, an answer that is not text) raises a ``ValueError`` naming the file, the entry and
the fix; unreadable images, blank questions and training questions without a usable answer raise a
:class:`~vlalign.data.loaders.DataValidationError` with ``on_error="raise"`` (default), or are dropped, counted and
reported in a warning with ``on_error="skip"``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import torch

from ..models.input_checks import is_blank
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

__all__ = [
    "VG_ANSWER_WEIGHT",
    "VqaCollator",
    "VqaLoadReport",
    "answer_weights",
    "build_answer_list",
    "load_answer_list",
    "load_vqa_dataset",
    "load_vqa_json",
    "vqa_features",
]

#: weight of a Visual Genome question's single answer in the official fine-tuning
VG_ANSWER_WEIGHT = 0.5
SOURCES = ("vqa", "vg")


def vqa_features(question_id: datasets.Value | None = None, question_type: bool = False) -> datasets.Features:
    """The :class:`datasets.Features` of the VQA layout (``question_id`` int64 unless given)."""
    features = {
        "image": datasets.Image(),
        "question_id": question_id or datasets.Value("int64"),
        "question": datasets.Value("string"),
        "answers": datasets.List(datasets.Value("string")),
        "dataset": datasets.Value("string"),
    }
    if question_type:
        features["question_type"] = datasets.Value("string")
    return datasets.Features(features)


def answer_weights(answers: Sequence[str], dataset: str = "vqa") -> tuple[list[str], list[float]]:
    """The distinct answers of one question and their training weights, as the official VQA dataset computes them.

    A VQA question's answer gets count / len(answers), summed one vote at a time in Python floats (so 8 of 10 votes
    give ``0.1 + 0.1 + ...``, not exactly 0.8, as the official code); answers keep the order of their first vote. A
    Visual Genome question has one answer, weighted `VG_ANSWER_WEIGHT`.
    """
    if dataset not in SOURCES:
        raise ValueError(f"dataset must be one of {SOURCES}, got {dataset!r}.")
    if not answers:
        raise ValueError("A training question needs at least one answer.")
    if dataset == "vg":
        if len(answers) != 1:
            raise ValueError(f"A Visual Genome ('vg') question has exactly one answer, got {len(answers)}.")
        return [answers[0]], [VG_ANSWER_WEIGHT]
    weights: dict[str, float] = {}
    for answer in answers:
        weights[answer] = weights.get(answer, 0.0) + 1 / len(answers)
    return list(weights), list(weights.values())


# --------------------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VqaLoadReport(ProblemListsReport):
    """What a VQA loader found and kept.

    Attributes:
        source: the annotation file(s) or dataset that were loaded.
        num_samples: questions in the source.
        num_kept: questions in the returned dataset.
        bad_images: ``(image reference, reason)`` for every distinct image that could not be read.
        bad_questions: ``(question reference, reason)`` for blank questions and training questions without a usable
            answer.
        image_check: how far images were checked (``check_images``).
    """

    source: str
    num_samples: int
    num_kept: int
    bad_images: tuple[tuple[str, str], ...] = ()
    bad_questions: tuple[tuple[str, str], ...] = ()
    image_check: CheckImages = "header"

    problem_kinds = (("bad_images", "unreadable image(s)"), ("bad_questions", "bad question(s)"))


def _question_problem(question: Any, answers: list[str] | None) -> str | None:
    """Why a question row cannot be used (None when it can); `answers` is None for a test question."""
    if is_blank(question):
        return "blank question"
    if answers is None:
        return None
    if not answers:
        return "no answer"
    if any(is_blank(answer) for answer in answers):
        return "blank answer"
    return None


def _screen(
    questions: Sequence[str],
    answers: Sequence[list[str] | None],
    refs: Sequence[str],
    image_refs: Sequence[str],
    image_problems: Sequence[str | None],
) -> tuple[list[int], list[tuple[str, str]], list[tuple[str, str]]]:
    """Kept row indices, bad images (each distinct image reference once) and bad questions (by row reference)."""
    keep, bad_images, bad_questions = [], {}, []
    for row, (question, row_answers, ref, image_ref, image_problem) in enumerate(
        zip(questions, answers, refs, image_refs, image_problems, strict=True)
    ):
        problem = _question_problem(question, row_answers)
        if problem is not None:
            bad_questions.append((ref, problem))
        if image_problem is not None:
            bad_images.setdefault(image_ref, image_problem)
        if problem is None and image_problem is None:
            keep.append(row)
    return keep, list(bad_images.items()), bad_questions


def _question_id_feature(ids: Sequence[Any]) -> datasets.Value:
    present = [i for i in ids if i is not None]
    if all(isinstance(i, int) and not isinstance(i, bool) for i in present):
        return datasets.Value("int64")
    return datasets.Value("string")


# --------------------------------------------------------------------------------------------------------------
# official json
# --------------------------------------------------------------------------------------------------------------

_ENTRY_FORMAT = (
    'Each entry must be an object {"question": str, "image": relative path, "question_id": int, "dataset": "vqa" or '
    '"vg", "answer": [human answers] (VQA) or one answer (VG); no "answer" in test files}.'
)


def _entry_answers(entry: Mapping[str, Any], where: str) -> list[str] | None:
    """The entry's answers as a list (None without an ``answer`` key: a test question); malformed ones raise."""
    if "answer" not in entry:
        return None
    answer = entry["answer"]
    answers = [answer] if isinstance(answer, str) else answer
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"{where}: 'answer' must be a string or a list of strings, got {answer!r}. {_ENTRY_FORMAT}")
    if entry.get("dataset", "vqa") == "vg" and len(answers) > 1:
        raise ValueError(
            f"{where}: a Visual Genome ('vg') question has one answer (weighted {VG_ANSWER_WEIGHT}), got "
            f'{len(answers)}. Use "dataset": "vqa" for questions with several human answers.'
        )
    return answers


def _check_entry(entry: Any, where: str) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object, got {type(entry).__name__}. {_ENTRY_FORMAT}")
    require_string_fields(entry, ("image", "question"), where, _ENTRY_FORMAT)
    if entry.get("dataset", "vqa") not in SOURCES:
        raise ValueError(f"{where}: 'dataset' is {entry['dataset']!r}; it must be 'vqa' or 'vg'. {_ENTRY_FORMAT}")
    question_id = entry.get("question_id")
    if question_id is not None and (isinstance(question_id, bool) or not isinstance(question_id, int | str)):
        raise ValueError(f"{where}: 'question_id' must be an int or a string, got {question_id!r}.")


def _image_path(entry: Mapping[str, Any], image_root: Any, where: str) -> str:
    source = entry.get("dataset", "vqa")
    if isinstance(image_root, Mapping):
        if source not in image_root:
            raise ValueError(
                f"{where}: a {source!r} question, but image_root has folders only for {sorted(image_root)}; pass "
                f"image_root={{'vqa': VQA_IMAGES, 'vg': VG_IMAGES}} (the official vqa_root and vg_root)."
            )
        image_root = image_root[source]
    return os.path.join(image_root, entry["image"])


def build_answer_list(dataset: datasets.Dataset, max_answers: int | None = None) -> list[str]:
    """Candidate answers from a VQA-layout split (its training split, as the official list was built): its distinct
    human answers, most frequent first (ties in order of first appearance), at most `max_answers`."""
    counts = Counter(answer for answers in dataset["answers"] for answer in answers)
    if not counts:
        raise ValueError("The dataset has no human answers to build an answer list from; pass a training split.")
    return [answer for answer, _ in counts.most_common(max_answers)]


def load_answer_list(path: str | os.PathLike[str]) -> list[str]:
    """The candidate answers of the official ``answer_list.json`` (a JSON list of distinct, non-blank strings), in
    order: ranking returns indices into it."""
    answers = _read_json(path)
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"{path}: an answer list must be a JSON list of strings (ALBEF's answer_list.json).")
    first: dict[str, int] = {}
    for position, answer in enumerate(answers):
        if is_blank(answer):
            raise ValueError(f"{path}: answer {position} is blank; remove it.")
        if answer in first:
            raise ValueError(
                f"{path}: answer {answer!r} is listed twice (positions {first[answer]} and {position}); remove the "
                "repeat, or the ranking would score one answer twice."
            )
        first[answer] = position
    if not answers:
        raise ValueError(f"{path}: the answer list is empty.")
    return answers


def load_vqa_json(
    annotation_files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    image_root: str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]],
    *,
    on_error: OnError = "raise",
    check_images: CheckImages | bool = "header",
    num_workers: int | None = None,
    return_report: bool = False,
) -> datasets.Dataset | tuple[datasets.Dataset, VqaLoadReport]:
    """Load official ALBEF/SIMLA VQA annotation files (``vqa_train.json``, ``vqa_val.json``, ``vg_qa.json``,
    ``vqa_test.json``) into the VQA layout, rows in file order.

    Args:
        annotation_files: one file or several (concatenated, as the official ``train_file`` list).
        image_root: folder the ``image`` paths are relative to, or ``{"vqa": folder, "vg": folder}`` (the official
            ``vqa_root`` / ``vg_root``) for files mixing both sources.
        on_error, check_images, num_workers, return_report: as in :func:`vlalign.data.loaders.load_karpathy_json`.

    A file either has answers on every entry (training) or on none (test); a training entry whose answers are
    missing, empty or blank is a bad question, and so is a blank question.
    """
    _validate_on_error(on_error)
    check = _check_mode(check_images)
    files = [annotation_files] if isinstance(annotation_files, str | os.PathLike) else list(annotation_files)
    if not files:
        raise ValueError("Pass at least one annotation file.")
    questions, question_ids, answers, sources, paths, refs = [], [], [], [], [], []
    for file in files:
        entries = _read_json(file)
        if not isinstance(entries, list):
            raise ValueError(f"{file}: expected a JSON list of questions, got {type(entries).__name__}.")
        training = any(isinstance(entry, dict) and "answer" in entry for entry in entries)
        for position, entry in enumerate(entries):
            where = f"{file}: entry {position}"
            _check_entry(entry, where)
            row_answers = _entry_answers(entry, where)
            questions.append(entry["question"])
            question_ids.append(entry.get("question_id"))
            answers.append([] if training and row_answers is None else row_answers)
            sources.append(entry.get("dataset", "vqa"))
            paths.append(_image_path(entry, image_root, where))
            refs.append(f"{where}: {paths[-1]}")
    for ref, question_id, row_answers in zip(refs, question_ids, answers, strict=True):
        if question_id is None and row_answers is None:
            raise ValueError(
                f"{ref.rsplit(': ', 1)[0]}: a test question needs a 'question_id' (the result file names each answer "
                "by it)."
            )
    distinct = list(dict.fromkeys(paths))
    problems = dict(zip(distinct, _check_images(distinct, check, num_workers), strict=True))
    keep, bad_images, bad_questions = _screen(questions, answers, refs, paths, [problems[p] for p in paths])
    source = ", ".join(map(str, files))
    report = VqaLoadReport(source, len(questions), len(keep), tuple(bad_images), tuple(bad_questions), check)
    _finish(report, on_error)
    id_feature = _question_id_feature(question_ids)
    as_id = int if id_feature.dtype == "int64" else str
    columns = {
        "image": [paths[i] for i in keep],
        "question_id": [None if question_ids[i] is None else as_id(question_ids[i]) for i in keep],
        "question": [questions[i] for i in keep],
        "answers": [answers[i] or [] for i in keep],
        "dataset": [sources[i] for i in keep],
    }
    dataset = datasets.Dataset.from_dict(columns, features=vqa_features(id_feature))
    return _report_or_dataset(dataset, report, return_report)


# --------------------------------------------------------------------------------------------------------------
# any datasets VQA dataset
# --------------------------------------------------------------------------------------------------------------


def _human_answers(value: Any, where: str) -> list[str]:
    """One row's answers from the usual layouts: a list of strings, a list of ``{"answer": ...}`` dicts, or the
    ``{"answer": [...], ...}`` dict of lists that a ``datasets.Sequence`` of dicts yields; None is no answer."""
    if value is None:
        return []
    if isinstance(value, Mapping) and "answer" in value:
        value = value["answer"]
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(
            f"{where}: human answers must be a list of strings or of {{'answer': ...}} dicts, got {value!r}."
        )
    answers = [item["answer"] if isinstance(item, Mapping) and "answer" in item else item for item in value]
    if not all(isinstance(answer, str) for answer in answers):
        raise TypeError(f"{where}: human answers must be strings, got {answers!r}.")
    return answers


def load_vqa_dataset(
    dataset: datasets.Dataset,
    image_column: str | Sequence[str] = "image",
    question_column: str = "question",
    answers_column: str | None = "answers",
    *,
    question_id_column: str | None = None,
    question_type_column: str | None = None,
    image_root: str | os.PathLike[str] | None = None,
    split: str | Sequence[str] | None = None,
    split_column: str = "split",
    on_error: OnError = "raise",
    check_images: CheckImages | bool = "header",
    num_workers: int | None = None,
    return_report: bool = False,
) -> datasets.Dataset | tuple[datasets.Dataset, VqaLoadReport]:
    """Adapt a VQAv2-style :mod:`datasets` dataset (question, image, human answers) to the VQA layout.

    Args:
        dataset: the source, e.g. ``load_dataset("HuggingFaceM4/VQAv2", split="validation")``.
        image_column: a :class:`datasets.Image` column, or columns of path parts joined under ``image_root``.
        question_column: the question text.
        answers_column: the human answers per row: strings, ``{"answer": ...}`` dicts (VQAv2's ``answers``), or the
            dict of lists a ``Sequence`` of such dicts gives; None for questions without answers (a test split).
        question_id_column: default ``"question_id"`` when present, otherwise the source row.
        question_type_column: default ``"question_type"`` when present; kept as ``question_type``.
        image_root, split, split_column, on_error, check_images, num_workers, return_report: as in
            :func:`vlalign.data.loaders.load_image_text_dataset`.

    With answers, a row without any (or with a blank one) is a bad question, as is a blank question. Every row is a
    VQA question (``dataset`` "vqa"); images are not decoded.
    """
    _validate_on_error(on_error)
    check = _check_mode(check_images)
    image_columns = [image_column] if isinstance(image_column, str) else list(image_column)
    if question_id_column is None and "question_id" in dataset.column_names:
        question_id_column = "question_id"
    if question_type_column is None and "question_type" in dataset.column_names:
        question_type_column = "question_type"
    _require_columns(
        dataset,
        image_column=image_columns,
        question_column=question_column,
        answers_column=answers_column,
        question_id_column=question_id_column,
        question_type_column=question_type_column,
        split_column=split_column if split is not None else None,
    )
    name = f"dataset {dataset.info.dataset_name or ''}".rstrip()
    source = f"{name} ({dataset.num_rows} rows{'' if split is None else f', split {split}'})"
    rows = _split_rows(dataset, split_column, split)
    images, image_sources, refs = _image_sources(dataset, image_columns, image_root, rows)
    problems = _check_images(image_sources, check, num_workers)

    def values(column: str | None) -> list[Any] | None:
        if column is None:
            return None
        everything = _column(dataset, column)
        return [everything[row] for row in rows]

    questions = values(question_column)
    for ref, question in zip(refs, questions, strict=True):
        if question is not None and not isinstance(question, str):
            raise TypeError(f"{source}: {ref}: the question must be a string, got {question!r}.")
    questions = ["" if q is None else q for q in questions]
    raw_answers = values(answers_column)
    answers = None
    if raw_answers is not None:
        answers = [_human_answers(value, f"{source}: {ref}") for value, ref in zip(raw_answers, refs, strict=True)]
    listed = answers if answers is not None else [None] * len(rows)
    keep, bad_images, bad_questions = _screen(questions, listed, refs, refs, problems)
    report = VqaLoadReport(source, len(rows), len(keep), tuple(bad_images), tuple(bad_questions), check)
    _finish(report, on_error)

    question_ids = values(question_id_column) or rows
    id_feature = dataset.features[question_id_column] if question_id_column is not None else datasets.Value("int64")
    question_types = values(question_type_column)
    columns = {
        "question_id": [question_ids[k] for k in keep],
        "question": [questions[k] for k in keep],
        "answers": [answers[k] if answers is not None else [] for k in keep],
        "dataset": ["vqa"] * len(keep),
    }
    features = {name: feature for name, feature in vqa_features(id_feature).items() if name != "image"}
    if question_types is not None:
        columns["question_type"] = [question_types[k] for k in keep]
        features["question_type"] = datasets.Value("string")
    result = _assemble(images, [rows[k] for k in keep], columns, features)
    return _report_or_dataset(result, report, return_report)


# --------------------------------------------------------------------------------------------------------------
# collator
# --------------------------------------------------------------------------------------------------------------


@dataclass
class VqaCollator(AlignmentCollator):
    """Collate VQA-layout rows into the training inputs of the `<Method>ForQuestionAnswering` models.

    Images are loaded, checked and transformed as by :class:`~vlalign.data.collator.AlignmentCollator` (same
    ``image_transform``, row-seeded augmentations, errors naming the row); questions are tokenized with the
    processor's ``preset`` (default ``"vqa_question"``: the official ``pre_question(q, 30)``, at most 25 tokens) and
    the answers with ``answer_preset`` (``"vqa_answer"``: the answer with the eos ``[SEP]`` appended).

    Every distinct answer of a question becomes one answer row, weighted as the official dataset does
    (:func:`answer_weights`); the rows of all questions are concatenated in question order.

    Returns:
        ``pixel_values`` [B, 3, H, W], ``input_ids`` / ``attention_mask`` [B, L] (questions), ``answer_input_ids`` /
        ``answer_attention_mask`` [A, L'] (A answer rows), ``answer_weights`` float32 [A] and
        ``answers_per_question`` long [B] (summing to A).
    """

    preset: str = "vqa_question"
    text_column: str = "question"
    answer_preset: str = "vqa_answer"
    answers_column: str = "answers"
    dataset_column: str = "dataset"

    def __post_init__(self) -> None:
        super().__post_init__()
        presets = getattr(self.processor, "text_presets", None)
        if presets is not None and self.answer_preset not in presets:
            raise ValueError(f"Unknown answer_preset {self.answer_preset!r}; choose one of {sorted(presets)}.")
        unused = [name for name in ("idx_column", "masked_image_modeling") if getattr(self, name) is not None]
        if self.teacher_view:
            unused.append("teacher_view")
        if unused:
            raise ValueError(f"VqaCollator does not use {unused}; VQA fine-tuning has no such inputs.")

    def _collate(self, rows: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        questions = [row[self.text_column] for row in rows]
        self._check_texts(questions, rows)
        answers, weights, counts = [], [], []
        for position, row in enumerate(rows):
            row_answers, row_weights = self._weighted_answers(position, row)
            answers += row_answers
            weights += row_weights
            counts.append(len(row_answers))
        images = [self._load_image(position, row) for position, row in enumerate(rows)]
        encoded_questions = self.processor(text=questions, preset=self.preset, return_tensors="pt")
        encoded_answers = self.processor(text=answers, preset=self.answer_preset, return_tensors="pt")
        return {
            "pixel_values": self._pixel_values(images, rows),
            "input_ids": encoded_questions["input_ids"],
            "attention_mask": encoded_questions["attention_mask"],
            "answer_input_ids": encoded_answers["input_ids"],
            "answer_attention_mask": encoded_answers["attention_mask"],
            "answer_weights": torch.tensor(weights, dtype=torch.float32),
            "answers_per_question": torch.tensor(counts, dtype=torch.long),
        }

    def _weighted_answers(self, position: int, row: Mapping[str, Any]) -> tuple[list[str], list[float]]:
        where = f"{_row_label(position, row, capital=True)} (question_id={row.get('question_id')!r})"
        if self.answers_column not in row:
            raise KeyError(
                f"{where} has no {self.answers_column!r} column; available: {sorted(map(str, row))}. With "
                "transformers.Trainer, set TrainingArguments(remove_unused_columns=False)."
            )
        answers = row[self.answers_column]
        if isinstance(answers, str):
            answers = [answers]
        if not answers or any(not isinstance(a, str) or is_blank(a) for a in answers):
            raise ValueError(
                f"{where}: a training question needs its human answers, non-blank strings; got {answers!r}. Load the "
                "data with vlalign.data.vqa (load_vqa_json / load_vqa_dataset) with on_error='skip' to drop such "
                "questions, counted; test questions are answered with vlalign.evaluation.evaluate_vqa."
            )
        try:
            return answer_weights(list(answers), row.get(self.dataset_column, "vqa"))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
