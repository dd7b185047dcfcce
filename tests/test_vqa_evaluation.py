"""`evaluate_vqa`: the answers of a model through the ranking and the generation API, in row order whatever the batch
size, scored with the VQA accuracy (overall and per question type), the evaluation server's result file, and clear
errors. A test double stands in for the model: it answers the colour of each image, so every prediction is known."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
from conftest import TINY_TEXT_CONFIG, tiny_albef_config
from huggingface_hub import ModelCard
from PIL import Image

from vlalign.data.vqa import vqa_features
from vlalign.evaluation import evaluate_vqa, majority_answer_baseline, write_vqa_results
from vlalign.hub.card import build_model_card, save_model_card
from vlalign.hub.push import card_kwargs
from vlalign.models import AlbefForQuestionAnswering, AlbefImageProcessor, AlbefProcessor, AlbefTokenizer

VQA_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "albef" / "downstream" / "vqa"
ANSWER_LIST = ["red", "blue", "dog", "on the table"]


@pytest.fixture(scope="module")
def processor() -> AlbefProcessor:
    tokenizer = AlbefTokenizer.from_pretrained(VQA_FIXTURES / "original")
    return AlbefProcessor(AlbefImageProcessor(size={"height": 32, "width": 32}), tokenizer)


class ColourAnswerer(torch.nn.Module):
    """Implements the VQA model API (`rank_answers`, `generate`) by reading the image's dominant channel: "red"
    (candidate 0) for a red image, "blue" (candidate 1) for a blue one. Records what it was given."""

    def __init__(self, tokenizer):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer = tokenizer
        self.calls: list[dict] = []

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def _blue(self, pixel_values: torch.Tensor) -> torch.Tensor:
        assert not self.training, "evaluation must run in eval mode"
        return (pixel_values[:, 2].mean((1, 2)) > pixel_values[:, 0].mean((1, 2))).long()

    def rank_answers(self, pixel_values, input_ids, attention_mask, answer_input_ids, answer_attention_mask, k=None):
        self.calls.append(dict(input_ids=input_ids, answer_input_ids=answer_input_ids, k=k))
        logits = torch.zeros(len(pixel_values), len(answer_input_ids))
        logits[torch.arange(len(pixel_values)), self._blue(pixel_values)] = 2.0
        top = logits.topk(k or 2, dim=1)
        return SimpleNamespace(answer_indices=top.indices, scores=top.values.softmax(dim=1))

    def generate(self, pixel_values, input_ids, attention_mask, **kwargs):
        self.calls.append(dict(input_ids=input_ids, **kwargs))
        words = [ANSWER_LIST[i] for i in self._blue(pixel_values).tolist()]
        return self.tokenizer([word + "[SEP]" for word in words], padding="longest", return_tensors="pt")["input_ids"]


def questions(answers: list[list[str]], colours: list[str]) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "image": [Image.new("RGB", (16, 16), colour) for colour in colours],
            "question_id": list(range(100, 100 + len(colours))),
            "question": ["What color is the square?"] * len(colours),
            "answers": answers,
            "dataset": ["vqa"] * len(colours),
            "question_type": ["color", "color", "other"][: len(colours)],
        },
        features=vqa_features(question_type=True),
    )


# red image: 3 of 10 humans say red (0.9); blue image: unanimous (1.0); red image that humans call "crimson" (0.0)
HUMANS = [["red"] * 3 + ["pink"] * 7, ["blue"] * 10, ["crimson"] * 10]
COLOURS = ["red", "blue", "red"]


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_ranking_answers_every_question_in_order_and_scores_them(processor, batch_size, tmp_path):
    model = ColourAnswerer(processor.tokenizer).train()
    result = evaluate_vqa(
        model, processor, questions(HUMANS, COLOURS), ANSWER_LIST, k=2, batch_size=batch_size,
        result_file=tmp_path / "results.json", show_progress=False,
    )  # fmt: skip
    assert [p["answer"] for p in result["predictions"]] == ["red", "blue", "red"]
    assert [p["question_id"] for p in result["predictions"]] == [100, 101, 102]
    assert all(
        p["score"] == pytest.approx(torch.tensor([2.0, 0.0]).softmax(0)[0].item()) for p in result["predictions"]
    )
    assert result["vqa_accuracy"] == pytest.approx(100 * (0.9 + 1.0 + 0.0) / 3)
    assert result["vqa_accuracy_per_type"] == pytest.approx({"color": 95.0, "other": 0.0})
    assert result["num_questions"] == 3 and model.training  # the mode is restored
    # the candidates are the answer list with the eos, tokenized once; the questions by the test preset
    expected_candidates = processor(text=ANSWER_LIST, preset="vqa_answer")["input_ids"]
    assert all(torch.equal(call["answer_input_ids"], expected_candidates) for call in model.calls)
    assert len(model.calls) == -(-3 // batch_size) and {call["k"] for call in model.calls} == {2}
    first_questions = processor(text=["What color is the square?"], preset="vqa_test_question")["input_ids"]
    assert torch.equal(model.calls[0]["input_ids"][:1], first_questions)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written == [{"question_id": 100, "answer": "red"}, {"question_id": 101, "answer": "blue"},
                       {"question_id": 102, "answer": "red"}]  # fmt: skip


def test_generation_without_an_answer_list(processor):
    model = ColourAnswerer(processor.tokenizer)
    result = evaluate_vqa(
        model, processor, questions(HUMANS, COLOURS), generate_kwargs={"num_beams": 2}, show_progress=False
    )
    assert [(p["answer"], p["score"]) for p in result["predictions"]] == [("red", None), ("blue", None), ("red", None)]
    assert result["vqa_accuracy"] == pytest.approx(100 * 1.9 / 3)
    assert model.calls[0]["num_beams"] == 2


def test_test_questions_get_answers_and_a_result_file_but_no_accuracy(processor, tmp_path):
    model = ColourAnswerer(processor.tokenizer)
    result = evaluate_vqa(
        model, processor, questions([[], []], ["blue", "red"]), ANSWER_LIST, result_file=tmp_path / "r.json",
        show_progress=False,
    )  # fmt: skip
    assert "vqa_accuracy" not in result
    assert json.loads((tmp_path / "r.json").read_text()) == [
        {"question_id": 100, "answer": "blue"}, {"question_id": 101, "answer": "red"},
    ]  # fmt: skip


def test_bad_input_gets_clear_errors(processor, tmp_path):
    model = ColourAnswerer(processor.tokenizer)
    with pytest.raises(ValueError, match=r"1 of 2 questions have no human answers \(first: row 1\)"):
        evaluate_vqa(model, processor, questions([["red"] * 10, []], ["red", "red"]), ANSWER_LIST)
    with pytest.raises(ValueError, match="empty"):
        evaluate_vqa(model, processor, questions([], []), ANSWER_LIST)
    with pytest.raises(ValueError, match="non-empty list of candidate answers"):
        evaluate_vqa(model, processor, questions(HUMANS, COLOURS), "red")
    with pytest.raises(ValueError, match="integer question ids"):
        write_vqa_results([{"question_id": "q-7", "answer": "red"}], tmp_path / "r.json")
    assert json.loads(write_vqa_results([{"question_id": "7", "answer": "red"}], tmp_path / "r.json").read_text()) == [
        {"question_id": 7, "answer": "red"}
    ]
    broken = questions(HUMANS[:1], COLOURS[:1]).cast_column("image", datasets.Image(decode=False))
    broken = broken.map(lambda row: {"image": {"bytes": b"not an image", "path": "bad.png"}})
    with pytest.raises(ValueError, match="Row 0 of the dataset, column 'image': the image could not be read"):
        evaluate_vqa(model, processor, broken, ANSWER_LIST, show_progress=False)


def test_majority_answer_baseline_overall_and_per_question_type():
    def split(answers, types):
        return datasets.Dataset.from_dict({"answers": answers, "question_type": types})

    train = split([["red"] * 10, ["red"] * 9 + ["blue"], ["2"] * 10], ["color", "color", "count"])
    test = split([["red"] * 10, ["2"] * 3 + ["3"] * 7], ["color", "count"])
    baseline = majority_answer_baseline(train, test)
    assert baseline["answer"] == "red" and baseline["vqa_accuracy"] == pytest.approx(50.0)
    assert baseline["per_type_answers"] == {"color": "red", "count": "2"}
    assert baseline["per_type_vqa_accuracy"] == pytest.approx(100 * (1.0 + 0.9) / 2)
    with pytest.raises(ValueError, match="needs human answers"):
        majority_answer_baseline(train, split([[], []], ["color", "count"]))


def test_the_albef_vqa_model_through_the_evaluator_equals_its_own_api(processor):
    torch.manual_seed(0)
    text_config = dict(TINY_TEXT_CONFIG, sep_token_id=processor.tokenizer.sep_token_id)
    model = AlbefForQuestionAnswering(tiny_albef_config(distill=False, num_decoder_layers=1, text_config=text_config))
    dataset = questions(HUMANS, COLOURS)
    ranked = evaluate_vqa(model, processor, dataset, ANSWER_LIST, k=3, batch_size=2, show_progress=False)
    generated = evaluate_vqa(
        model, processor, dataset, batch_size=2, generate_kwargs={"max_new_tokens": 3}, show_progress=False
    )
    encoded = processor(images=list(dataset["image"]), text=list(dataset["question"]), preset="vqa_test_question")
    inputs = {name: encoded[name] for name in ("pixel_values", "input_ids", "attention_mask")}
    candidates = processor(text=ANSWER_LIST, preset="vqa_answer")
    model.eval()
    direct = model.rank_answers(**inputs, answer_input_ids=candidates["input_ids"],
                                answer_attention_mask=candidates["attention_mask"], k=3)  # fmt: skip
    assert [p["answer"] for p in ranked["predictions"]] == [ANSWER_LIST[i] for i in direct.answer_indices[:, 0]]
    assert [p["score"] for p in ranked["predictions"]] == pytest.approx(direct.scores[:, 0].tolist(), abs=1e-6)
    tokens = model.generate(**inputs, max_new_tokens=3)
    decoded = [text.strip() for text in processor.batch_decode(tokens, skip_special_tokens=True)]
    assert [p["answer"] for p in generated["predictions"]] == decoded
    assert 0.0 <= ranked["vqa_accuracy"] <= 100.0 and generated["num_questions"] == 3


def test_vqa_results_become_the_cards_model_index(processor, tmp_path):
    torch.manual_seed(0)
    text_config = dict(TINY_TEXT_CONFIG, sep_token_id=processor.tokenizer.sep_token_id)
    model = AlbefForQuestionAnswering(tiny_albef_config(distill=False, num_decoder_layers=1, text_config=text_config))
    saved = {"dataset_name": "Synthetic VQA (test)", "vqa": {"vqa_accuracy": 61.234, "num_questions": 600}}
    card = build_model_card(model, **card_kwargs(saved), model_id="user/tiny-albef-vqa")
    loaded = ModelCard.load(save_model_card(card, tmp_path))
    [result] = loaded.data.eval_results
    assert (result.task_type, result.metric_type, result.metric_value) == (
        "visual-question-answering",
        "vqa_accuracy",
        61.234,
    )
    assert (result.dataset_name, result.dataset_type, result.dataset_split) == (
        "Synthetic VQA (test)", "synthetic-vqa-test", "test",
    )  # fmt: skip
    assert loaded.data.pipeline_tag == "visual-question-answering"
    assert "VQA accuracy **61.23**" in " ".join(loaded.text.split()) and "(600 questions)" in loaded.text
    assert "No evaluation results were reported" not in loaded.text
    with pytest.raises(ValueError, match="no 'vqa_accuracy'"):
        build_model_card(model, metrics=None, dataset_name="x", vqa_metrics={"accuracy": 50.0})
    with pytest.raises(ValueError, match="not a percentage"):
        build_model_card(model, metrics=None, dataset_name="x", vqa_metrics={"vqa_accuracy": 0.61 * 1000})
