"""Numerical parity of `AlbefForQuestionAnswering` with the official ALBEF VQA code (salesforce/ALBEF @ b9727e4) on the
public fixture `../shared/fixtures/albef/downstream/vqa` (tolerances from its README).

The fixture's fine-tuned checkpoint and the pretraining checkpoint it was initialised from are both converted through
the `vlalign convert` CLI and loaded with `AutoModelForVisualQuestionAnswering`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor, pipeline

import vlalign

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOWNSTREAM = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "albef" / "downstream"
VQA = DOWNSTREAM / "vqa"
STATES_ATOL = 1e-5  # image/question states, logits, per-answer cross-entropy
SUMMED_ATOL = 1e-4  # sums of ~vocab-way log-softmax terms
PROB_ATOL = 1e-6


def convert(output: Path, checkpoint: Path) -> Path:
    original = VQA / "original"
    run_cli(
        "convert", "--method", "albef", "--task", "vqa", "--checkpoint", str(checkpoint),
        "--config", str(original / "VQA.yaml"), "--config", str(original / "config_bert.json"),
        "--tokenizer", str(original), "--output", str(output),
    )  # fmt: skip
    return output


@pytest.fixture(scope="module")
def vqa_dir(tmp_path_factory) -> Path:
    return convert(tmp_path_factory.mktemp("albef_vqa"), VQA / "original" / "checkpoint.pth")


@pytest.fixture(scope="module")
def model(vqa_dir):
    loaded = AutoModelForVisualQuestionAnswering.from_pretrained(vqa_dir)
    assert isinstance(loaded, vlalign.AlbefForQuestionAnswering)
    return loaded.train()  # the official training outputs were recorded in train mode (dropout 0 in the fixture)


@pytest.fixture(scope="module")
def golden():
    return load_file(VQA / "inputs.safetensors"), load_file(VQA / "outputs.safetensors")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = STATES_ATOL) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def training_forward(model, inputs, alpha: float):
    with torch.no_grad():
        return model(
            pixel_values=inputs["pixel_values"],
            input_ids=inputs["question_input_ids"],
            attention_mask=inputs["question_attention_mask"],
            answer_input_ids=inputs["answer_input_ids"],
            answer_attention_mask=inputs["answer_attention_mask"],
            answer_weights=inputs["answer_weights"],
            answers_per_question=inputs["answer_k"],
            alpha=alpha,
        )


def test_training_forward_matches(model, golden):
    inputs, outputs = golden
    distilled = training_forward(model, inputs, alpha=float(inputs["alpha"]))
    assert_close(distilled.image_embeds, outputs["image_embeds"])
    assert_close(distilled.question_states, outputs["question_states"])
    # the official forward takes one EMA step first; the momentum copies equal the online weights here, so the
    # momentum states are those of the stored momentum weights
    assert_close(distilled.question_states_m, outputs["question_states_m"])
    assert_close(distilled.logits, outputs["decoder_logits"])
    assert_close(distilled.logits_m, outputs["decoder_logits_m"])
    assert_close(distilled.answer_loss, outputs["answer_loss_alpha04"], SUMMED_ATOL)
    assert_close(distilled.loss, outputs["loss_alpha04"], SUMMED_ATOL)
    plain = training_forward(model, inputs, alpha=0.0)
    assert plain.logits_m is None and plain.question_states_m is None  # no momentum pass without distillation
    assert_close(plain.answer_loss, outputs["answer_loss_alpha0"], SUMMED_ATOL)
    assert_close(plain.loss, outputs["loss_alpha0"], SUMMED_ATOL)
    # the official batch loss: weighted per-answer sums over the number of questions, not answers
    expected = (inputs["answer_weights"] * plain.answer_loss).sum() / inputs["question_input_ids"].shape[0]
    assert_close(plain.loss, expected, 0)


def test_answer_ranking_matches(model, golden):
    inputs, outputs = golden
    k = int(inputs["k_test"])
    model.eval()
    ranked = model.rank_answers(
        inputs["pixel_values"],
        inputs["test_question_input_ids"],
        inputs["test_question_attention_mask"],
        inputs["answer_list_input_ids"],
        inputs["answer_list_attention_mask"],
        k=k,
    )
    assert_close(ranked.question_states, outputs["test_question_states"])
    with torch.no_grad():  # the first stage's [CLS]-only decoder call
        start = torch.full((3, 1), model.config.text_config.cls_token_id)
        start_logits = model.decode_answers(
            start, None, ranked.question_states, inputs["test_question_attention_mask"]
        ).logits[:, 0]
    assert_close(start_logits, outputs["rank_start_logits"])
    first_token_probs = start_logits.softmax(-1)[:, inputs["answer_list_input_ids"][:, 1]]
    assert_close(first_token_probs, outputs["rank_prob_first_token"], PROB_ATOL)
    assert torch.equal(ranked.candidate_indices, outputs["rank_first_topk_ids"])
    assert_close(ranked.first_token_probs, outputs["rank_first_topk_probs"], PROB_ATOL)
    candidates = inputs["answer_list_input_ids"][ranked.candidate_indices.view(-1)]
    assert torch.equal(candidates, outputs["rank_candidate_input_ids"])
    assert_close(ranked.candidate_loss, outputs["rank_candidate_loss"], SUMMED_ATOL)
    assert_close(ranked.log_likelihoods, outputs["rank_log_probs_sum"], SUMMED_ATOL)
    assert torch.equal(ranked.answer_indices, outputs["topk_ids"])
    assert_close(ranked.scores, outputs["topk_probs"], PROB_ATOL)


def test_official_evaluation_answers(vqa_dir, model):
    """`VQA.evaluation()` on the fixture's test file and answer list: the first re-ranked answer per question."""
    data = VQA / "data"
    processor = AutoProcessor.from_pretrained(vqa_dir)
    questions = json.loads((data / "vqa_test.json").read_text())
    answer_list = json.loads((data / "answer_list.json").read_text())
    images = [Image.open(data / row["image"]) for row in questions]
    encoded = processor(images=images, text=[row["question"] for row in questions], preset="vqa_test_question")
    answers = processor(text=answer_list, preset="vqa_answer")
    ranked = model.eval().rank_answers(
        encoded["pixel_values"],
        encoded["input_ids"],
        encoded["attention_mask"],
        answers["input_ids"],
        answers["attention_mask"],
        k=model.config.k_test,
    )
    predictions = [
        {"question_id": row["question_id"], "answer": answer_list[index]}
        for row, index in zip(questions, ranked.answer_indices[:, 0].tolist(), strict=True)
    ]
    assert model.config.k_test == 4  # from VQA.yaml
    assert predictions == json.loads((VQA / "meta.json").read_text())["evaluation_result"]


def test_pretraining_checkpoint_gives_the_official_vqa_initialisation(vqa_dir, tmp_path):
    """The fixture's VQA checkpoint IS the official VQA.py initialisation of the pretraining checkpoint."""
    initialised = convert(tmp_path / "init", DOWNSTREAM / "pretrained" / "checkpoint.pth")
    expected = load_file(vqa_dir / "model.safetensors")
    weights = load_file(initialised / "model.safetensors")
    assert weights.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(weights[key], tensor), key


ANSWER_LIST = json.loads((VQA / "data" / "answer_list.json").read_text())
TEST_QUESTIONS = json.loads((VQA / "data" / "vqa_test.json").read_text())


def test_pipeline_answers_on_the_saved_folder(vqa_dir):
    vqa = pipeline("visual-question-answering", model=str(vqa_dir))
    row = TEST_QUESTIONS[0]
    image = str(VQA / "data" / row["image"])
    ranked = vqa(image, question=row["question"], candidate_answers=ANSWER_LIST, top_k=2)
    assert [result["answer"] for result in ranked][:1] == ["three"]  # the official evaluation's answer
    assert ranked[0]["score"] >= ranked[1]["score"] > 0
    generated = vqa({"image": image, "question": row["question"]}, top_k=2, max_new_tokens=3)
    assert len(generated) == 2 and all(isinstance(result["answer"], str) for result in generated)
    assert 0 < generated[1]["score"] <= generated[0]["score"] <= 1


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["vlalign"] = None  # make `import vlalign` fail in this process
    try:
        import vlalign  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("vlalign is importable; the test would prove nothing")
    from transformers import pipeline

    folder, image, question, answers, output = sys.argv[1:]
    vqa = pipeline("visual-question-answering", model=folder, trust_remote_code=True)
    result = vqa(image, question=question, candidate_answers=json.loads(answers))
    json.dump({"answer": result[0]["answer"], "model": type(vqa.model).__module__}, open(output, "w"))
    """
)


def test_pipeline_with_remote_code_without_vlalign(vqa_dir, tmp_path):
    script = tmp_path / "answer.py"
    script.write_text(REMOTE_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    row = TEST_QUESTIONS[0]
    arguments = [str(vqa_dir), str(VQA / "data" / row["image"]), row["question"], json.dumps(ANSWER_LIST)]
    result = subprocess.run(
        [sys.executable, str(script), *arguments, str(tmp_path / "out.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads((tmp_path / "out.json").read_text())
    assert answer["answer"] == "three" and answer["model"].startswith("transformers_modules.")


def test_codis_question_answering_is_albefs_without_the_codebook(vqa_dir, model, golden, tmp_path):
    """An ALBEF VQA checkpoint converted into CODIS answers exactly as ALBEF's (the codebook is not in the VQA path)."""
    original = VQA / "original"
    run_cli(
        "convert", "--method", "codis", "--task", "vqa", "--checkpoint", str(original / "checkpoint.pth"),
        "--config", str(original / "VQA.yaml"), "--config", str(original / "config_bert.json"),
        "--output", str(tmp_path / "codis"),
    )  # fmt: skip
    codis = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path / "codis").train()
    assert isinstance(codis, vlalign.CodisForQuestionAnswering) and codis.config.model_type == "codis"
    assert not any("codebook" in name for name in codis.state_dict())
    inputs, _ = golden
    torch.testing.assert_close(
        training_forward(codis, inputs, 0.4).answer_loss,
        training_forward(model, inputs, 0.4).answer_loss,
        atol=0,
        rtol=0,
    )


def test_from_pretraining_gives_the_official_initialisation_from_a_vlalign_folder(vqa_dir, tmp_path):
    """A vlalign pretraining folder (the fixture's pretraining checkpoint converted as such) initialises the VQA model
    as VQA.py does; loading it directly into the VQA class is refused, naming `from_pretraining`."""
    pretrained = DOWNSTREAM / "pretrained"
    run_cli(
        "convert", "--method", "albef", "--task", "pretraining", "--checkpoint", str(pretrained / "checkpoint.pth"),
        "--config", str(pretrained / "Pretrain.yaml"), "--config", str(pretrained / "config_bert.json"),
        "--output", str(tmp_path / "pretraining"),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"holds AlbefForPreTraining, not a VQA model: .*from_pretraining\("):
        AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path / "pretraining")
    pretraining = vlalign.AlbefForPreTraining.from_pretrained(tmp_path / "pretraining")
    initialised = vlalign.AlbefForQuestionAnswering.from_pretraining(pretraining, k_test=4)
    assert initialised.config.k_test == 4
    assert not any(p.requires_grad for m in initialised.momentum_modules() for p in m.parameters())
    expected = load_file(vqa_dir / "model.safetensors")
    state = initialised.state_dict()
    assert state.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(state[key], tensor), key


def test_a_checkpoint_without_decoder_or_mlm_head_is_refused(tmp_path):
    """A fine-tuned retrieval checkpoint (no `bert.` prefix, no MLM head) cannot initialise the answer decoder."""
    original = torch.load(DOWNSTREAM / "pretrained" / "checkpoint.pth", weights_only=True)["model"]
    retrieval = {key.replace("text_encoder.bert.", "text_encoder."): value for key, value in original.items()}
    retrieval = {key: value for key, value in retrieval.items() if ".cls." not in key}
    torch.save(retrieval, tmp_path / "retrieval.pth")
    original_dir = VQA / "original"
    result = run_cli(
        "convert", "--method", "albef", "--task", "vqa", "--checkpoint", str(tmp_path / "retrieval.pth"),
        "--config", str(original_dir / "VQA.yaml"), "--config", str(original_dir / "config_bert.json"),
        "--output", str(tmp_path / "out"), check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "neither an answer decoder (`text_decoder.*`" in result.stderr and "MLM head" in result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()
