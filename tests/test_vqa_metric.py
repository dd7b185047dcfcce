"""The `vqa_accuracy` metric: the VQA formula's known values (checked against a brute-force loop over the 10-choose-9
annotator subsets), the official answer normalisation and its asymmetry (predictions fully, human answers only their
punctuation when they disagree), per-type accuracy, batches, offline loading and bad input."""

from __future__ import annotations

import itertools
import random

import evaluate
import pytest

import vlalign.metrics
from vlalign.metrics.vqa_accuracy.vqa_accuracy import (
    normalize_answer,
    process_digit_article,
    process_punctuation,
    vqa_score,
)


@pytest.fixture(scope="module")
def accuracy():
    return evaluate.load(vlalign.metrics.path("vqa_accuracy"))


def humans(matching: int, total: int = 10) -> list[str]:
    return ["red"] * matching + ["blue"] * (total - matching)


@pytest.mark.parametrize(
    ("matching", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)]
)
def test_known_values_of_the_formula(accuracy, matching, expected):
    assert vqa_score("red", humans(matching)) == pytest.approx(expected)
    result = accuracy.compute(predictions=["red"], references=[humans(matching)])
    assert result == {"vqa_accuracy": pytest.approx(100 * expected), "num_questions": 1}


def brute_force(prediction: str, answers: list[str]) -> float:
    """The definition spelled out: every subset of all-but-one annotators, min(#matches / 3, 1), averaged."""
    subsets = list(itertools.combinations(range(len(answers)), len(answers) - 1))
    return sum(min(sum(answers[i] == prediction for i in subset) / 3, 1.0) for subset in subsets) / len(subsets)


def test_closed_form_equals_the_subset_average_for_any_number_of_answers():
    rng = random.Random(0)
    for _ in range(200):
        answers = [rng.choice(("red", "blue", "green")) for _ in range(rng.randint(2, 12))]
        assert vqa_score("red", answers) == pytest.approx(brute_force("red", answers))


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Two", "2"),
        ("a dog.", "dog"),
        ("The  Red\tcar\n", "red car"),
        ("dont", "don't"),
        ("couldntve", "couldn't've"),
        ("couldn't", "couldn t"),  # the apostrophe between letters becomes a space first,
        ("none", "0"),
        ("2.5", "2.5"),  # a decimal point stays
        ("1,000", "1000"),  # digit-comma-digit: marks are deleted, not spaced
        ("black/white", "black white"),  # a mark between words becomes a space
        ("yes, it is", "yes it is"),  # a mark next to a space is deleted
        ("t-shirt", "t-shirt"),  # the hyphen is not among the official marks
    ],
)
def test_official_normalisation_of_predictions(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_a_mark_is_deleted_when_it_touches_a_space_anywhere_in_the_text():
    # "," touches a space, so every "," is deleted; "/" does not, so it becomes a space
    assert process_punctuation("a,b , c/d") == "ab  c d"
    assert process_digit_article("An Apple and THE pear") == "apple and pear"


def test_human_answers_get_punctuation_only_when_they_disagree_unless_asked(accuracy):
    disagreeing = ["don't"] * 9 + ["no"]  # processed: "don t" (apostrophe between letters becomes a space)
    assert vqa_score("don't", disagreeing) == 1.0
    unanimous = ["two"] * 10  # released human answers are already normalised: "two" is kept as is...
    assert vqa_score("two", unanimous) == 0.0  # ... and never matches the prediction's "2"
    assert vqa_score("two", unanimous, normalize_references=True) == 1.0
    raw = [["Two", "two", "2", "three"] + ["3"] * 6]
    assert accuracy.compute(predictions=["2"], references=raw)["vqa_accuracy"] == pytest.approx(30.0)
    assert accuracy.compute(predictions=["2"], references=raw, normalize_references=True)[
        "vqa_accuracy"
    ] == pytest.approx(90.0)


def test_per_type_accuracy_and_batches(accuracy):
    predictions = ["red", "2", "left", "blue"]
    references = [humans(10), ["2"] * 2 + ["3"] * 8, ["left"] * 3 + ["right"] * 7, humans(10)]
    for start in range(0, 4, 3):
        accuracy.add_batch(predictions=predictions[start : start + 3], references=references[start : start + 3])
    result = accuracy.compute(question_types=["color", "count", "position", "color"])
    assert result["vqa_accuracy"] == pytest.approx(100 * (1.0 + 0.6 + 0.9 + 0.0) / 4)
    assert result["vqa_accuracy_per_type"] == pytest.approx({"color": 50.0, "count": 60.0, "position": 90.0})


def test_bad_input_gets_clear_errors(accuracy):
    with pytest.raises(ValueError, match="at least two human answers"):
        vqa_score("red", ["red"])
    with pytest.raises(ValueError, match="at least two human answers"):
        vqa_score("red", "red")
    with pytest.raises(TypeError, match="must be a string"):
        normalize_answer(3)
    with pytest.raises(ValueError, match="2 question types for 1 questions"):
        accuracy.compute(predictions=["red"], references=[humans(3)], question_types=["a", "b"])
    with pytest.raises(ValueError, match="No questions"):
        vlalign.metrics.vqa_accuracy.vqa_accuracy.vqa_accuracy([], [])
