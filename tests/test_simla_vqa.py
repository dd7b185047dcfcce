"""`SimlaForQuestionAnswering` beyond parity, on the fixture's converted SIMLA VQA model (`test_simla_vqa_parity.py`):
free generation (greedy and beam) decoded by the processor, the `visual-question-answering` pipeline, loading model
and pipeline with `trust_remote_code=True` where vlalign cannot be imported, and the momentum copies' EMA as a
training duty although the official answer loss never reads them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_simla_vqa_parity import VQA, convert_checkpoints, load
from transformers import AutoProcessor, pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The fixture's fine-tuned SIMLA VQA checkpoint, converted."""
    return convert_checkpoints(tmp_path_factory.mktemp("simla_vqa"), ("finetuned",))["finetuned"]


def test_generate_greedy_and_beam(folder):
    model = load(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    inputs = load_file(VQA / "inputs.safetensors")
    questions = {
        "pixel_values": inputs["pixel_values"],
        "input_ids": inputs["test_question_input_ids"],
        "attention_mask": inputs["test_question_attention_mask"],
    }
    greedy = model.generate(**questions, max_new_tokens=4)
    beam = model.generate(**questions, max_new_tokens=4, num_beams=3)
    for ids in (greedy, beam):
        assert ids.shape[0] == 3 and (ids[:, 0] == model.config.text_config.cls_token_id).all()
        assert all(
            isinstance(answer, str) and answer for answer in processor.batch_decode(ids, skip_special_tokens=True)
        )
    # greedy: the first answer token is the decoder's most probable one after [CLS] (the ranking's first stage)
    with torch.no_grad():
        states, _ = model.encode_question(**questions)
        start = greedy[:, :1]
        start_logits = model.decode_answers(start, None, states, questions["attention_mask"]).logits[:, 0]
    assert torch.equal(greedy[:, 1], start_logits.argmax(-1))


def official_evaluation() -> tuple[list[dict], list[str], list[str]]:
    """The fixture's test questions, answer list and the official evaluation's answers."""
    meta = json.loads((VQA / "meta.json").read_text())
    return meta["test_annotations"], meta["answer_list"], [row["answer"] for row in meta["evaluation_result"]]


def test_pipeline_ranks_candidates_as_the_official_evaluation_and_generates(folder):
    vqa = pipeline("visual-question-answering", model=str(folder))
    questions, answer_list, official = official_evaluation()
    for row, answer in zip(questions, official, strict=True):
        ranked = vqa(
            str(VQA / "data" / row["image"]), question=row["question"], candidate_answers=answer_list, top_k=2
        )
        assert ranked[0]["answer"] == answer and ranked[0]["score"] >= ranked[1]["score"] > 0
    generated = vqa({"image": str(VQA / "data" / questions[0]["image"]), "question": questions[0]["question"]})
    assert isinstance(generated[0]["answer"], str) and 0 < generated[0]["score"] <= 1


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["vlalign"] = None  # make `import vlalign` fail in this process
    import torch
    from safetensors.torch import load_file
    from transformers import pipeline

    folder, inputs_file, image, question, answers, output_file = sys.argv[1:]
    vqa = pipeline("visual-question-answering", model=folder, trust_remote_code=True)
    answer = vqa(image, question=question, candidate_answers=json.loads(answers))[0]["answer"]
    inputs, model = load_file(inputs_file), vqa.model  # AutoModelForVisualQuestionAnswering's choice
    ranking = model.rank_answers(
        inputs["pixel_values"], inputs["test_question_input_ids"], inputs["test_question_attention_mask"],
        inputs["answer_list_input_ids"], inputs["answer_list_attention_mask"], k=int(inputs["k_test"]),
    )
    torch.save(
        {"class": [type(model).__module__, type(model).__name__], "ids": ranking.answer_indices,
         "scores": ranking.scores, "answer": answer},
        output_file,
    )
    """
)


def test_trust_remote_code_without_vlalign(folder, tmp_path):
    script = tmp_path / "load.py"
    script.write_text(REMOTE_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    questions, answer_list, official = official_evaluation()
    image, question = str(VQA / "data" / questions[0]["image"]), questions[0]["question"]
    arguments = [str(folder), str(VQA / "inputs.safetensors"), image, question, json.dumps(answer_list)]
    arguments.append(str(tmp_path / "out.pt"))
    result = subprocess.run(
        [sys.executable, str(script), *arguments], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    module, name = loaded["class"]
    assert module.startswith("transformers_modules.") and name == "SimlaForQuestionAnswering"
    expected = load_file(VQA / "outputs.safetensors")
    assert torch.equal(loaded["ids"], expected["topk_ids"])
    torch.testing.assert_close(loaded["scores"], expected["topk_probs"], atol=1e-6, rtol=0)
    assert loaded["answer"] == official[0]


def test_momentum_copies_take_the_ema_step_though_the_loss_does_not_read_them(folder):
    model = load(folder)
    assert not model.config.answer_distillation and model.has_training_duties
    online = dict(model.named_parameters())
    momentum = model.momentum_module_pairs()
    assert {type(m).__name__ for _, m in momentum} == {"AlbefVisionModel", "AlbefTextModel", "AlbefFusionModel",
                                                        "AlbefAnswerDecoder"}  # fmt: skip
    with torch.no_grad():  # move the online weights away from their copies, as an optimizer step would
        for parameter in online.values():
            if parameter.requires_grad:
                parameter.add_(0.5)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    model.after_optimizer_step(1)
    rate = model.config.momentum
    for name, parameter in model.named_parameters():
        if name in before:
            source = online[name.replace("_m.", ".", 1)]
            torch.testing.assert_close(parameter, rate * before[name] + (1 - rate) * source, atol=1e-6, rtol=0)
