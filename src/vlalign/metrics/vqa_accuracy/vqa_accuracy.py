"""The VQA accuracy (Antol et al. 2015; VQAv2), as an `evaluate` metric.

A predicted answer is right for a question as far as enough humans gave it: with the question's human answers
(ten in VQAv2), each leave-one-out subset (ten choose nine) scores min(#humans in the subset who gave the answer / 3,
1), and the question scores the mean over the subsets. So 4 or more matching humans of 10 give 1.0, 3 give 0.9, 2 give
0.6, 1 gives 0.3. `vqa_accuracy` is the mean over questions, in percent.

Answers are compared after the normalisation of the VQA evaluation code, reimplemented from its rules:

* punctuation (`process_punctuation`): each mark of `PUNCTUATION` is deleted when the text has that mark next to a
  space or a digit-comma-digit group, and replaced by a space otherwise; then every period not followed by a digit is
  deleted ("a dog." -> "a dog", "2.5" kept);
* digits, articles, contractions (`process_digit_article`): lower-cased, split on whitespace, number words up to ten
  become digits ("Two" -> "2", "none" -> "0"), the articles a/an/the are dropped, apostrophe-less contractions get
  their apostrophes back ("dont" -> "don't").

As in the official code, the prediction gets both steps (after turning tabs and newlines into spaces and stripping),
while the human answers are taken as released (the VQA annotation files hold answers already normalised this way)
and only get the punctuation step, and only when they disagree. Pass `normalize_references=True` to give the human
answers the same full normalisation as the prediction, for raw answers that were never normalised ("two", "A dog.").

This file is self-contained (no vlalign import) so it also works as a standalone metric; vlalign's VQA evaluator uses
the same functions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import datasets
import evaluate

_DESCRIPTION = """VQA accuracy (`vqa_accuracy`, percent): per question, the mean over its leave-one-out subsets of human
answers of min(#humans who gave the predicted answer / 3, 1), averaged over questions; answers normalised as the
official VQA evaluation does."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: the predicted answer of each question (a string).
    references: the human answers of each question (a list of strings; ten in VQAv2; at least two).
    question_types: optional, a type per question (e.g. "what color"): adds `vqa_accuracy_per_type`.
    normalize_references: also normalise the human answers fully (for raw answers; default False, the official way).
Returns:
    `vqa_accuracy` (percent), `num_questions`, and `vqa_accuracy_per_type` ({type: percent}) with `question_types`.
Examples:
    >>> accuracy = evaluate.load(vlalign.metrics.path("vqa_accuracy"))
    >>> accuracy.compute(predictions=["Two"], references=[["2"] * 2 + ["3"] * 8])
    {'vqa_accuracy': 60.0, 'num_questions': 1}
"""

#: marks handled by the punctuation step of the official evaluation (hyphen and "!" are not among them)
PUNCTUATION: tuple[str, ...] = (";", ":", "/", "'", "[", "]", '"', "(", ")", "=", "+", "\\", "_", ">", "<", "@", "`",
                                ",", "?")  # fmt: skip
NUMBER_WORDS: dict[str, str] = {
    word: str(value)
    for value, word in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    )
} | {"none": "0"}
ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})
#: contractions whose apostrophe-less spellings the official evaluation restores
_CONTRACTIONS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd "
    "he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll ma'am mightn't mightn't've might've "
    "mustn't must've needn't not've o'clock oughtn't shan't she'd've she's should've shouldn't shouldn't've "
    "somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've "
    "something'll that's there'd there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't "
    "we'd've we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll "
    "who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've "
    "you'll you're you've"
).split()


#: apostrophe-less spelling -> contraction; the punctuation step has removed every apostrophe before this applies
CONTRACTIONS: dict[str, str] = {word.replace("'", ""): word for word in _CONTRACTIONS}
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")


def process_punctuation(text: str) -> str:
    """The punctuation step (see the module docstring): each mark deleted or turned into a space, then periods that
    do not precede a digit deleted. Whether a mark is deleted depends on the text as given, not as edited so far."""
    delete = _DIGIT_COMMA_DIGIT.search(text) is not None
    result = text
    for mark in PUNCTUATION:
        result = result.replace(mark, "" if delete or f"{mark} " in text or f" {mark}" in text else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", result)


def process_digit_article(text: str) -> str:
    """The second step: lower-case, number words to digits, articles dropped, contractions restored, words joined
    by single spaces."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_answer(answer: str) -> str:
    """A predicted answer as the official evaluation compares it: tabs and newlines to spaces, stripped, then
    `process_punctuation` and `process_digit_article` ("A dog." -> "dog", "Two" -> "2", "dont" -> "don't")."""
    if not isinstance(answer, str):
        raise TypeError(f"An answer must be a string, got {type(answer).__name__} ({answer!r}).")
    return process_digit_article(process_punctuation(answer.replace("\n", " ").replace("\t", " ").strip()))


def _reference_answers(answers: Sequence[str], normalize_references: bool) -> list[str]:
    if normalize_references:
        return [normalize_answer(answer) for answer in answers]
    if len(set(answers)) > 1:  # the official evaluation processes the punctuation of disagreeing answers only
        return [process_punctuation(answer) for answer in answers]
    return list(answers)


def vqa_score(prediction: str, answers: Sequence[str], normalize_references: bool = False) -> float:
    """The VQA accuracy of one prediction (0 to 1) against its human answers: the mean over leave-one-out subsets of
    min(#matches / 3, 1)."""
    if isinstance(answers, str) or len(answers) < 2:
        raise ValueError(
            f"A question needs a list of at least two human answers to be scored (VQAv2 has ten), got {answers!r}: "
            "with one answer every leave-one-out subset is empty and the score is always 0."
        )
    for answer in answers:
        if not isinstance(answer, str):
            raise TypeError(f"Human answers must be strings, got {type(answer).__name__} ({answer!r}).")
    predicted = normalize_answer(prediction)
    matches = sum(answer == predicted for answer in _reference_answers(answers, normalize_references))
    # leaving out one of the `matches` matching humans leaves matches - 1, leaving out another one leaves matches
    left_out_matching = matches * min(1.0, (matches - 1) / 3)
    left_out_other = (len(answers) - matches) * min(1.0, matches / 3)
    return (left_out_matching + left_out_other) / len(answers)


def vqa_accuracy(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    question_types: Sequence[str] | None = None,
    normalize_references: bool = False,
) -> dict:
    """`vqa_accuracy` (percent) over questions, `num_questions`, and `vqa_accuracy_per_type` with `question_types`."""
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions for {len(references)} questions' human answers.")
    if not predictions:
        raise ValueError("No questions to score; pass at least one prediction with its human answers.")
    scores = [vqa_score(p, answers, normalize_references) for p, answers in zip(predictions, references, strict=True)]
    result = {"vqa_accuracy": 100.0 * sum(scores) / len(scores), "num_questions": len(scores)}
    if question_types is not None:
        if len(question_types) != len(scores):
            raise ValueError(f"Got {len(question_types)} question types for {len(scores)} questions.")
        per_type: dict[str, list[float]] = {}
        for kind, score in zip(question_types, scores, strict=True):
            per_type.setdefault(kind, []).append(score)
        result["vqa_accuracy_per_type"] = {kind: 100.0 * sum(s) / len(s) for kind, s in sorted(per_type.items())}
    return result


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VqaAccuracy(evaluate.Metric):
    """The VQA accuracy (see the module docstring)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(
        self,
        predictions,
        references,
        question_types: Sequence[str] | None = None,
        normalize_references: bool = False,
    ) -> dict:
        return vqa_accuracy(predictions, references, question_types, normalize_references)
