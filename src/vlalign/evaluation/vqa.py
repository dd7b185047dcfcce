"""Visual question answering evaluation: answer every question of a VQA-layout dataset (`vlalign.data.vqa`), score the
answers with the VQA accuracy where the questions have human answers, and write the evaluation server's result file.

Two ways to answer, as the official code and the issue ask:

* **ranking an answer list** (the official protocol, `VQA.py` `evaluation()`): the model's `rank_answers` scores every
  candidate answer for each question and the best one is the prediction, with its score;
* **free generation** when no list is given: `model.generate(...)`, decoded with the processor.

Questions are tokenized with the processor's test preset (``"vqa_test_question"``: the official `pre_question(q, 50)`,
untruncated), candidates with ``"vqa_answer"``; images are read with `load_images` (errors name the row and file).
"""

from __future__ import annotations

import json
import numbers
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..metrics.vqa_accuracy.vqa_accuracy import vqa_accuracy
from .retrieval import _undecoded, load_images

__all__ = ["evaluate_vqa", "majority_answer_baseline", "write_vqa_results"]


def _question_ids(dataset: Any) -> list[Any]:
    """The dataset's `question_id` column, or the row numbers when it has none."""
    if "question_id" in dataset.column_names:
        return list(dataset["question_id"])
    return list(range(len(dataset)))


def _human_answers(dataset: Any) -> list[list[str]] | None:
    """Every question's human answers, or None when no question has any (a test split); a mix is an error, since an
    accuracy over some of the questions would be reported as if it covered all."""
    if "answers" not in dataset.column_names:
        return None
    answers = [list(row) for row in dataset["answers"]]
    scored = [bool(row) for row in answers]
    if not any(scored):
        return None
    if not all(scored):
        first = scored.index(False)
        raise ValueError(
            f"{scored.count(False)} of {len(answers)} questions have no human answers (first: row {first}) while the "
            "others have: evaluate the answered questions (e.g. dataset.filter(lambda row: len(row['answers']) > 0)) "
            "and the unanswered ones apart."
        )
    return answers


@torch.no_grad()
def _rank_batch(model, inputs: Mapping[str, torch.Tensor], answer_tokens, answer_list, k) -> list[tuple[str, float]]:
    output = model.rank_answers(
        inputs["pixel_values"],
        inputs["input_ids"],
        inputs["attention_mask"],
        answer_tokens["input_ids"],
        answer_tokens["attention_mask"],
        k=k,
    )
    best = output.answer_indices[:, 0].tolist()
    scores = output.scores[:, 0].tolist()
    return [(answer_list[index], score) for index, score in zip(best, scores, strict=True)]


@torch.no_grad()
def _generate_batch(model, processor, inputs: Mapping[str, torch.Tensor], generate_kwargs) -> list[tuple[str, None]]:
    tokens = model.generate(
        pixel_values=inputs["pixel_values"],
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        **generate_kwargs,
    )
    return [(text.strip(), None) for text in processor.batch_decode(tokens, skip_special_tokens=True)]


def write_vqa_results(predictions: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write `predictions` as the VQA evaluation server's result file: a JSON list of
    ``{"question_id": int, "answer": str}``. Question ids must be integers (or strings of digits)."""
    results = []
    for position, prediction in enumerate(predictions):
        question_id = prediction["question_id"]
        if isinstance(question_id, str) and question_id.strip().isdigit():
            question_id = int(question_id)
        if isinstance(question_id, bool) or not isinstance(question_id, numbers.Integral):
            raise ValueError(
                f"Prediction {position} has question_id {question_id!r}; the evaluation server needs the integer "
                "question ids of the official question files."
            )
        results.append({"question_id": int(question_id), "answer": str(prediction["answer"])})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results), encoding="utf-8")
    return path


def evaluate_vqa(
    model,
    processor,
    dataset,
    answer_list: Sequence[str] | None = None,
    *,
    k: int | None = None,
    batch_size: int = 32,
    result_file: str | os.PathLike[str] | None = None,
    normalize_references: bool = False,
    question_preset: str = "vqa_test_question",
    answer_preset: str = "vqa_answer",
    generate_kwargs: Mapping[str, Any] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Answer every question of `dataset` and score the answers.

    Args:
        model: a `<Method>ForQuestionAnswering` (`rank_answers` for a list, `generate` without one).
        processor: its processor (VQA presets).
        dataset: the VQA layout (`vlalign.data.vqa`): `image`, `question`, and `question_id` (else row numbers),
            `answers` (human answers; empty lists for test questions), `question_type` (optional: per-type accuracy).
        answer_list: candidate answers to rank (the official `answer_list.json`); None: answer by generation.
        k: candidates the ranking re-scores with the full answer likelihood (default the model's `k_test`).
        batch_size: questions per forward.
        result_file: also write the evaluation server's result file there (`write_vqa_results`).
        normalize_references: normalise the human answers like the predictions (see the `vqa_accuracy` metric).
        question_preset, answer_preset: the processor's presets for test questions and candidate answers.
        generate_kwargs: passed to `model.generate` (e.g. `num_beams`, `max_new_tokens`).

    Returns:
        ``predictions``: one ``{"question_id", "answer", "score"}`` per question, in row order (``score``: the
        ranking's probability of the chosen answer among the re-ranked candidates; None when generated);
        ``num_questions``; and when the questions have human answers ``vqa_accuracy`` (percent) and, with a
        `question_type` column, ``vqa_accuracy_per_type``.
    """
    if len(dataset) == 0:
        raise ValueError("The evaluation dataset is empty; pass at least one question.")
    if answer_list is not None and (isinstance(answer_list, str) or len(answer_list) == 0):
        raise ValueError("answer_list must be a non-empty list of candidate answers (or None to generate answers).")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    references = _human_answers(dataset)
    question_ids = _question_ids(dataset)
    device = model.device
    answer_tokens = None
    if answer_list is not None:
        answer_list = list(answer_list)
        answer_tokens = processor(text=answer_list, preset=answer_preset, return_tensors="pt").to(device)
    images = _undecoded(dataset)
    answered: list[tuple[str, float | None]] = []
    mode = "ranking answers" if answer_list is not None else "generating answers"
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(dataset), batch_size), desc=mode, disable=not show_progress):
            stop = min(start + batch_size, len(dataset))
            inputs = processor(
                images=load_images(images, start, stop),
                text=dataset[start:stop]["question"],
                preset=question_preset,
                return_tensors="pt",
            ).to(device)
            if answer_tokens is not None:
                answered += _rank_batch(model, inputs, answer_tokens, answer_list, k)
            else:
                answered += _generate_batch(model, processor, inputs, dict(generate_kwargs or {}))
    finally:
        model.train(was_training)

    predictions = [
        {"question_id": question_id, "answer": answer, "score": score}
        for question_id, (answer, score) in zip(question_ids, answered, strict=True)
    ]
    results: dict[str, Any] = {"predictions": predictions, "num_questions": len(predictions)}
    if references is not None:
        types = list(dataset["question_type"]) if "question_type" in dataset.column_names else None
        answers = [prediction["answer"] for prediction in predictions]
        results.update(vqa_accuracy(answers, references, types, normalize_references))
    if result_file is not None:
        write_vqa_results(predictions, result_file)
    return results


def majority_answer_baseline(train, test, normalize_references: bool = False) -> dict[str, Any]:
    """The VQA accuracy on `test` of answering without looking: every question with the most frequent human answer
    of `train` (``vqa_accuracy``, ``answer``), and, with a `question_type` column, every question with its type's
    most frequent training answer (``per_type_vqa_accuracy``, ``per_type_answers``). What a model must beat to show
    it reads the image."""
    references = _human_answers(test)
    if references is None or _human_answers(train) is None:
        raise ValueError("The majority baseline needs human answers in both the training and the evaluation split.")
    votes = Counter(answer for answers in train["answers"] for answer in answers)
    majority = votes.most_common(1)[0][0]
    results: dict[str, Any] = {"answer": majority}
    results.update(vqa_accuracy([majority] * len(references), references, None, normalize_references))
    if "question_type" in train.column_names and "question_type" in test.column_names:
        by_type: dict[str, Counter] = {}
        for kind, answers in zip(train["question_type"], train["answers"], strict=True):
            by_type.setdefault(kind, Counter()).update(answers)
        answers = {kind: counter.most_common(1)[0][0] for kind, counter in sorted(by_type.items())}
        guesses = [answers.get(kind, majority) for kind in test["question_type"]]
        typed = vqa_accuracy(guesses, references, None, normalize_references)
        results.update(per_type_answers=answers, per_type_vqa_accuracy=typed["vqa_accuracy"])
    return results
