"""VQA data: the official JSON formats loaded into the VQA layout, the collator against the official fixture's weights
and tokens (`../shared/fixtures/albef/downstream/vqa`), VQAv2-style `datasets` in their answer layouts, and bad rows
refused with the file and entry named or skipped, counted and reported."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch
from conftest import TINY_TEXT_CONFIG, tiny_albef_config
from PIL import Image
from safetensors.torch import load_file

from vlalign.data.loaders import DataValidationError
from vlalign.data.synthetic import SHAPES, make_synthetic_dataset
from vlalign.data.synthetic_vqa import QUESTION_TYPES, SYNONYMS, make_synthetic_vqa_dataset
from vlalign.data.vqa import (
    VqaCollator,
    answer_weights,
    build_answer_list,
    load_answer_list,
    load_vqa_dataset,
    load_vqa_json,
)
from vlalign.models import AlbefForQuestionAnswering, AlbefImageProcessor, AlbefProcessor, AlbefTokenizer

VQA_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "albef" / "downstream" / "vqa"
DATA = VQA_FIXTURES / "data"


@pytest.fixture(scope="module")
def processor() -> AlbefProcessor:
    tokenizer = AlbefTokenizer.from_pretrained(VQA_FIXTURES / "original")
    return AlbefProcessor(AlbefImageProcessor(size={"height": 32, "width": 32}), tokenizer)


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    return load_file(VQA_FIXTURES / "inputs.safetensors")


def write_json(path: Path, entries) -> Path:
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def image_bytes(color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_official_train_and_test_files_load_into_the_vqa_layout():
    train = load_vqa_json(DATA / "vqa_train.json", DATA)
    assert train.column_names == ["image", "question_id", "question", "answers", "dataset"]
    assert train["question_id"] == [0, 1, 2]
    assert train["dataset"] == ["vqa", "vqa", "vg"]
    assert train["answers"][0] == ["red"] * 8 + ["blue"] * 2  # the human votes, repeats kept
    assert train["answers"][2] == ["on the table"]  # VG's single answer
    assert train[0]["image"].size == (4, 4)
    test = load_vqa_json(DATA / "vqa_test.json", DATA)
    assert test["answers"] == [[], [], []] and test["question_id"] == [100, 101, 102]
    assert load_answer_list(DATA / "answer_list.json")[-2:] == ["on the table", "playing"]


def test_weights_are_summed_vote_by_vote_in_python_floats():
    answers, weights = answer_weights(["red"] * 8 + ["blue"] * 2)
    eight_votes = 0.0
    for _ in range(8):
        eight_votes += 1 / 10
    assert answers == ["red", "blue"] and weights == [eight_votes, 0.1 + 0.1]
    assert weights[0] != 0.8  # the official accumulation, not count / total
    assert answer_weights(["yes"], "vg") == (["yes"], [0.5])
    with pytest.raises(ValueError, match="exactly one answer"):
        answer_weights(["yes", "no"], "vg")
    with pytest.raises(ValueError, match="'vqa', 'vg'"):
        answer_weights(["yes"], "gqa")


def test_collator_reproduces_the_official_weights_and_tokens(processor, inputs):
    rows = list(load_vqa_json(DATA / "vqa_train.json", DATA))
    batch = VqaCollator(processor)(rows)
    assert set(batch) == {
        "pixel_values", "input_ids", "attention_mask", "answer_input_ids", "answer_attention_mask",
        "answer_weights", "answers_per_question",
    }  # fmt: skip
    assert torch.equal(batch["answer_weights"], inputs["answer_weights"])
    assert torch.equal(batch["answers_per_question"], inputs["answer_k"])
    for ours, official in (
        ("input_ids", "question_input_ids"),
        ("attention_mask", "question_attention_mask"),
        ("answer_input_ids", "answer_input_ids"),
        ("answer_attention_mask", "answer_attention_mask"),
    ):
        assert torch.equal(batch[ours], inputs[official]), ours
    assert batch["pixel_values"].shape == (3, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32


def test_collator_refuses_rows_it_cannot_train_on(processor):
    row = dict(load_vqa_json(DATA / "vqa_train.json", DATA)[0])
    with pytest.raises(
        ValueError, match=r"Batch row 1 \(question_id=7\): a training question needs its human answers"
    ):
        VqaCollator(processor)([row, {**row, "question_id": 7, "answers": []}])
    with pytest.raises(ValueError, match="Batch row 0 .*exactly one answer"):
        VqaCollator(processor)([{**row, "dataset": "vg"}])
    with pytest.raises(KeyError, match="remove_unused_columns=False"):
        VqaCollator(processor)([{key: value for key, value in row.items() if key != "answers"}])
    with pytest.raises(ValueError, match="Unknown answer_preset"):
        VqaCollator(processor, answer_preset="answers")
    with pytest.raises(ValueError, match=r"does not use \['teacher_view'\]"):
        VqaCollator(processor, image_transform=lambda image: torch.zeros(3, 4, 4), teacher_view=True)


def test_mixed_sources_read_images_from_their_own_roots(tmp_path):
    (tmp_path / "coco").mkdir()
    (tmp_path / "vg").mkdir()
    (tmp_path / "coco" / "a.png").write_bytes(image_bytes("red"))
    (tmp_path / "vg" / "a.png").write_bytes(image_bytes("blue"))
    entries = [
        {"question_id": 1, "question": "color?", "image": "a.png", "dataset": "vqa", "answer": ["red", "red"]},
        {"question_id": 2, "question": "color?", "image": "a.png", "dataset": "vg", "answer": "blue"},
    ]
    file = write_json(tmp_path / "train.json", entries)
    loaded = load_vqa_json(file, {"vqa": tmp_path / "coco", "vg": tmp_path / "vg"})
    assert [image.getpixel((0, 0)) for image in loaded["image"]] == [(255, 0, 0), (0, 0, 255)]
    with pytest.raises(ValueError, match=r"entry 1: a 'vg' question, but image_root has folders only for \['vqa'\]"):
        load_vqa_json(file, {"vqa": tmp_path / "coco"})


def test_bad_questions_and_images_are_refused_or_skipped_counted(tmp_path):
    (tmp_path / "ok.png").write_bytes(image_bytes())
    (tmp_path / "broken.png").write_bytes(b"not a png")
    good = {"question_id": 0, "question": "what color?", "image": "ok.png", "dataset": "vqa", "answer": ["red"] * 3}
    entries = [
        good,
        {**good, "question_id": 1, "question": " \u200b "},
        {**good, "question_id": 2, "answer": []},
        {**good, "question_id": 3, "answer": ["red", " "]},
        {**good, "question_id": 4, "image": "broken.png"},
        {key: value for key, value in good.items() if key != "answer"} | {"question_id": 5},
    ]
    file = write_json(tmp_path / "train.json", entries)
    with pytest.raises(DataValidationError, match="5 of 6 samples") as refused:
        load_vqa_json(file, tmp_path)
    message = str(refused.value)
    assert "entry 1" in message and "blank question" in message and "on_error='skip'" in message
    with pytest.warns(UserWarning, match="skipped 5 of 6 samples"):
        kept, report = load_vqa_json(file, tmp_path, on_error="skip", return_report=True)
    assert kept["question_id"] == [0]
    assert [reason for _, reason in report.bad_questions] == [
        "blank question",
        "no answer",
        "blank answer",
        "no answer",
    ]
    assert report.bad_images[0][0].endswith("broken.png") and report.num_skipped == 5


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["what color?"], "entry 0: expected an object"),
        ([{"image": "ok.png", "answer": ["red"]}], "entry 0: 'question' must be a string, it is missing"),
        ([{"image": "ok.png", "question": "q", "answer": [1]}], "'answer' must be a string or a list of strings"),
        ([{"image": "ok.png", "question": "q", "dataset": "gqa"}], "'dataset' is 'gqa'; it must be 'vqa' or 'vg'"),
        ([{"image": "ok.png", "question": "q", "dataset": "vg", "answer": ["a", "b"]}], "has one answer"),
        ([{"image": "ok.png", "question": "q"}], "a test question needs a 'question_id'"),
        ({"questions": []}, "expected a JSON list of questions"),
    ],
)
def test_malformed_files_name_the_entry_and_the_format(tmp_path, entries, message):
    file = write_json(tmp_path / "bad.json", entries)
    with pytest.raises(ValueError, match=message) as error:
        load_vqa_json(file, tmp_path, check_images="none")
    assert str(file) in str(error.value)


def test_answer_list_errors(tmp_path):
    with pytest.raises(ValueError, match=r"'red' is listed twice \(positions 0 and 2\)"):
        load_answer_list(write_json(tmp_path / "a.json", ["red", "blue", "red"]))
    with pytest.raises(ValueError, match="answer 1 is blank"):
        load_answer_list(write_json(tmp_path / "b.json", ["red", " "]))
    with pytest.raises(ValueError, match="JSON list of strings"):
        load_answer_list(write_json(tmp_path / "c.json", {"red": 1}))


def vqav2_like(answer_feature, answers) -> datasets.Dataset:
    """A VQAv2-shaped dataset (images stored inside, the answers in the given feature layout)."""
    return datasets.Dataset.from_dict(
        {
            "image": [{"bytes": image_bytes(), "path": None}] * len(answers),
            "question": ["What color is it?", "How many?"][: len(answers)],
            "question_id": [10, 11][: len(answers)],
            "question_type": ["what color", "how many"][: len(answers)],
            "answers": answers,
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "question": datasets.Value("string"),
                "question_id": datasets.Value("int64"),
                "question_type": datasets.Value("string"),
                "answers": answer_feature,
            }
        ),
    )


ANSWER_DICT = {"answer": datasets.Value("string"), "answer_id": datasets.Value("int64")}


@pytest.mark.parametrize(
    ("feature", "answers"),
    [
        (datasets.List(datasets.Value("string")), [["red", "red"], ["2", "two"]]),
        (datasets.List(ANSWER_DICT), [[{"answer": "red", "answer_id": 1}, {"answer": "red", "answer_id": 2}],
                                      [{"answer": "2", "answer_id": 1}, {"answer": "two", "answer_id": 2}]]),
        (datasets.Sequence(ANSWER_DICT), [{"answer": ["red", "red"], "answer_id": [1, 2]},
                                          {"answer": ["2", "two"], "answer_id": [1, 2]}]),
    ],
)  # fmt: skip
def test_vqav2_style_datasets_in_every_answer_layout(feature, answers):
    loaded = load_vqa_dataset(vqav2_like(feature, answers))
    assert sorted(loaded.column_names) == sorted(
        ["image", "question_id", "question", "answers", "dataset", "question_type"]
    )
    assert loaded["answers"] == [["red", "red"], ["2", "two"]]
    assert loaded["question_id"] == [10, 11] and loaded["question_type"] == ["what color", "how many"]
    assert loaded["dataset"] == ["vqa", "vqa"] and loaded[0]["image"].size == (8, 8)


def test_vqav2_style_test_split_and_bad_rows():
    source = vqav2_like(datasets.List(datasets.Value("string")), [["red", "red"], []])
    test = load_vqa_dataset(source, answers_column=None)
    assert test["answers"] == [[], []]
    with pytest.raises(DataValidationError, match=r"1 of 2 samples .*row 1.*no answer"):
        load_vqa_dataset(source)
    with pytest.warns(UserWarning, match="skipped 1 of 2 samples"):
        assert load_vqa_dataset(source, on_error="skip")["question_id"] == [10]
    with pytest.raises(ValueError, match="answers_column='human_answers' is not a column"):
        load_vqa_dataset(source, answers_column="human_answers")


@pytest.fixture(scope="module")
def synthetic() -> datasets.DatasetDict:
    return make_synthetic_vqa_dataset(num_train=60, num_validation=0, num_test=20, image_size=48, seed=3)


def test_synthetic_questions_are_answered_by_their_scenes(synthetic):
    train = synthetic["train"]
    assert {"image", "question_id", "question", "answers", "dataset", "question_type"} <= set(train.column_names)
    assert len(synthetic["validation"]) == 0 and synthetic["validation"].column_names == train.column_names
    scenes = make_synthetic_dataset(60, 0, 20, 48, captions_per_image=1, seed=3)["train"]
    objects = dict(zip(scenes["image_id"], scenes["objects"], strict=True))
    backgrounds = dict(zip(scenes["image_id"], scenes["background"], strict=True))
    for row in train:
        scene, truth, question = objects[row["image_id"]], row["answer"], row["question"]
        kind = row["question_type"]
        if kind == "background":
            assert truth == backgrounds[row["image_id"]]
        elif kind == "count":
            shape = question.removeprefix("how many ").removesuffix("s are there?")
            assert truth == str(sum(o["shape"] == shape for o in scene))
        elif kind == "color":
            shape = question.removeprefix("what color is the ").removesuffix("?")
            assert {o["color"] for o in scene if o["shape"] == shape} == {truth}
        elif kind == "shape":
            assert truth in {o["shape"] for o in scene} and truth in SHAPES
        else:
            colour, shape = question.removeprefix("where is the ").removesuffix("?").split()
            assert [o["position"] for o in scene if (o["color"], o["shape"]) == (colour, shape)] == [truth]
        assert len(row["answers"]) == 10 and Counter(row["answers"]).most_common(1)[0][0] == truth
    assert set(train["question_type"]) == set(QUESTION_TYPES)
    ids = list(train["question_id"]) + list(synthetic["test"]["question_id"])
    assert len(set(ids)) == len(ids)


def test_synthetic_answers_vary_like_people_and_reproduce_from_the_seed(synthetic):
    answers = [a for row in synthetic["train"]["answers"] for a in row]
    truths = [
        t for t, row in zip(synthetic["train"]["answer"], synthetic["train"]["answers"], strict=True) for _ in row
    ]
    differing = [a for a, t in zip(answers, truths, strict=True) if a != t]
    synonyms = [a for a, t in zip(answers, truths, strict=True) if a in SYNONYMS.get(t, ())]
    assert 0.03 < len(differing) / len(answers) < 0.2 and synonyms and len(synonyms) < len(differing)
    again = make_synthetic_vqa_dataset(num_train=60, num_validation=0, num_test=20, image_size=48, seed=3)
    assert again["train"]["answers"] == synthetic["train"]["answers"]
    assert again["test"]["question"] == synthetic["test"]["question"]
    other = make_synthetic_vqa_dataset(num_train=60, num_validation=0, num_test=0, image_size=48, seed=4)
    assert other["train"]["question"] != synthetic["train"]["question"]
    assert make_synthetic_vqa_dataset(5, 0, 0, 48, wrong_answer_rate=0.0, seed=3)["train"]["answers"] != []
    with pytest.raises(ValueError, match="questions_per_image"):
        make_synthetic_vqa_dataset(5, 0, 0, questions_per_image=6)


def test_answer_list_is_built_from_the_training_answers(synthetic):
    answer_list = build_answer_list(synthetic["train"])
    votes = Counter(a for row in synthetic["train"]["answers"] for a in row)
    assert sorted(answer_list) == sorted(votes) and votes[answer_list[0]] == max(votes.values())
    assert [votes[a] for a in answer_list] == sorted(votes.values(), reverse=True)
    assert build_answer_list(synthetic["train"], max_answers=3) == answer_list[:3]
    with pytest.raises(ValueError, match="no human answers"):
        build_answer_list(load_vqa_json(DATA / "vqa_test.json", DATA))


def test_collated_batch_is_what_the_albef_vqa_model_trains_on(processor):
    torch.manual_seed(0)
    text_config = dict(TINY_TEXT_CONFIG, sep_token_id=processor.tokenizer.sep_token_id)
    model = AlbefForQuestionAnswering(tiny_albef_config(distill=False, num_decoder_layers=1, text_config=text_config))
    batch = VqaCollator(processor)(list(load_vqa_json(DATA / "vqa_train.json", DATA)))
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and model.text_decoder.get_input_embeddings().weight.grad.abs().sum() > 0
