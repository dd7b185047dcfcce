"""VQA text presets of the ALBEF processor against the official `VQA.py` text handling recorded in the public fixture
(`../shared/fixtures/albef/downstream/vqa`, see its README): questions by `pre_question`, answers with `[SEP]`
appended as text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlalign.models import AlbefImageProcessor, AlbefProcessor, AlbefTokenizer
from vlalign.models.tokenization_albef import pre_question

VQA_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "albef" / "downstream" / "vqa"


@pytest.fixture(scope="module")
def processor() -> AlbefProcessor:
    tokenizer = AlbefTokenizer.from_pretrained(VQA_FIXTURES / "original")
    return AlbefProcessor(AlbefImageProcessor(size={"height": 32, "width": 32}), tokenizer)


@pytest.fixture(scope="module")
def recorded() -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((VQA_FIXTURES / "meta.json").read_text()), load_file(VQA_FIXTURES / "inputs.safetensors")


def test_pre_question_matches_the_recorded_cleaning(recorded):
    meta, _ = recorded
    for rows, cleaned, words in (
        (meta["train_annotations"], meta["train_questions_after_pre_question"], 30),
        (meta["test_annotations"], meta["test_questions_after_pre_question"], 50),
    ):
        assert [pre_question(row["question"], words) for row in rows] == cleaned


def test_pre_question_differs_from_pre_caption_as_documented():
    # no <person> rule, no whitespace collapsing (only trailing spaces go), words counted by single spaces
    assert pre_question("Is <person> here?  ") == "is <person> here"
    assert pre_question("Red-or/blue  car?") == "red or blue  car"
    assert pre_question("a b c d", max_words=2) == "a b"
    assert pre_question(pre_question("What's up, doc?")) == pre_question("What's up, doc?") == "whats up doc"


@pytest.mark.parametrize(
    ("preset", "texts", "ids", "mask"),
    [
        ("vqa_question", "train_questions", "question_input_ids", "question_attention_mask"),
        ("vqa_test_question", "test_questions", "test_question_input_ids", "test_question_attention_mask"),
        ("vqa_answer", "train_answers", "answer_input_ids", "answer_attention_mask"),
        ("vqa_answer", "answer_list", "answer_list_input_ids", "answer_list_attention_mask"),
    ],
)
def test_presets_reproduce_the_official_tokens(processor, recorded, preset, texts, ids, mask):
    meta, inputs = recorded
    raw = {
        "train_questions": [a["question"] for a in meta["train_annotations"]],
        "test_questions": [a["question"] for a in meta["test_annotations"]],
        "train_answers": [a.removesuffix("[SEP]") for a in meta["train_answers_with_eos"]],
        "answer_list": meta["answer_list"],
    }[texts]
    encoded = processor(text=raw, preset=preset)
    assert torch.equal(encoded["input_ids"], inputs[ids])
    assert torch.equal(encoded["attention_mask"], inputs[mask])


def test_answers_end_with_sep_and_keep_their_punctuation(processor):
    tokenizer = processor.tokenizer
    tokens = tokenizer.convert_ids_to_tokens(processor(text=["on the table"], preset="vqa_answer")["input_ids"][0])
    assert tokens == ["[CLS]", "on", "the", "table", "[SEP]"]
    # answers are not caption-cleaned: "t-shirt" keeps its hyphen as a token (pre_caption would make it "t shirt")
    hyphen = processor(text=["t-shirt"], preset="vqa_answer")["input_ids"][0].tolist()
    assert tokenizer.convert_tokens_to_ids("-") in hyphen
    # captions keep their cleaning and no [SEP]
    caption = processor(text=["t-shirt"], preset="train")["input_ids"][0].tolist()
    assert tokenizer.convert_tokens_to_ids("-") not in caption and tokenizer.sep_token_id not in caption


def test_test_questions_are_not_truncated_but_train_questions_are(processor):
    question = " ".join(["dog"] * 40) + "?"
    assert processor(text=[question], preset="vqa_question")["input_ids"].shape[1] == 25
    assert processor(text=[question], preset="vqa_test_question")["input_ids"].shape[1] == 41


def test_blank_answer_is_refused(processor):
    with pytest.raises(ValueError, match="empty after cleaning"):
        processor(text=["red", " \u200b"], preset="vqa_answer")
