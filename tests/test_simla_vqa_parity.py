"""Numerical parity of `SimlaForQuestionAnswering` with the official SIMLA VQA code (codezakh/SIMLA @ 44c700d) on the
public fixture `../shared/fixtures/simla/downstream/vqa` (see its README for every tensor and tolerance).

Both official checkpoints go through `vlalign convert --method simla --task vqa` and load with
`AutoModelForVisualQuestionAnswering`: the pretraining checkpoint (`downstream/pretrained`), initialised as `VQA.py`
does, and the fine-tuned VQA layout (the fixture's `original/checkpoint.pth`, which is that initialisation). Every
recorded tensor is matched at the README's tolerances (1e-5 on states and logits, 1e-4 on sums of token losses, 1e-6
on probabilities, ids exactly), the saved processor's VQA presets and `VqaCollator` reproduce the official tokens and
answer weights, and the official evaluation's answers are reproduced through `evaluate_vqa`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURES, run_cli
from safetensors.torch import load_file
from transformers import AutoModelForPreTraining, AutoModelForVisualQuestionAnswering, AutoProcessor

from vlalign.convert.restricted_unpickle import load_official_checkpoint
from vlalign.convert.simla_vqa import simla_vqa_initialisation
from vlalign.convert.vqa_init import vqa_model_from_pretrained
from vlalign.data.vqa import VqaCollator, load_answer_list, load_vqa_json
from vlalign.evaluation import evaluate_vqa
from vlalign.models import SimlaConfig, SimlaForQuestionAnswering

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOWNSTREAM = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "simla" / "downstream"
VQA = DOWNSTREAM / "vqa"
CHECKPOINTS = {
    "pretrained": DOWNSTREAM / "pretrained" / "checkpoint.pth",
    "finetuned": VQA / "original" / "checkpoint.pth",
}
#: the README's tolerances: states and logits, sums over answer tokens, probabilities
ATOL, SUM_ATOL, PROB_ATOL = 1e-5, 1e-4, 1e-6


def convert_checkpoints(root: Path, names: tuple[str, ...] = tuple(CHECKPOINTS)) -> dict[str, Path]:
    """`vlalign convert --method simla --task vqa` of the named fixture checkpoints into folders under `root`."""
    original = VQA / "original"
    for name in names:
        checkpoint = CHECKPOINTS[name]
        run_cli(
            "convert", "--method", "simla", "--task", "vqa", "--checkpoint", str(checkpoint),
            "--config", str(original / "VQA.yaml"), "--config", str(original / "shared_bert.json"),
            "--tokenizer", str(original), "--output", str(root / name),
        )  # fmt: skip
    return {name: root / name for name in names}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return convert_checkpoints(tmp_path_factory.mktemp("simla_vqa"))


def load(folder: Path, **config_overrides) -> SimlaForQuestionAnswering:
    model = AutoModelForVisualQuestionAnswering.from_pretrained(folder, **config_overrides)
    assert type(model) is SimlaForQuestionAnswering
    return model.train()  # the official outputs were recorded in train mode (dropout is 0 in the fixture config)


@pytest.fixture(scope="module")
def golden() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return load_file(VQA / "inputs.safetensors"), load_file(VQA / "outputs.safetensors")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.to(expected.dtype), expected, atol=atol, rtol=0)


def train_forward(model: SimlaForQuestionAnswering, inputs: dict[str, torch.Tensor], alpha: float):
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


def test_pretraining_checkpoint_initialises_the_model_as_vqa_py(folders):
    from_pretraining, finetuned = (load(folders[name]).state_dict() for name in ("pretrained", "finetuned"))
    assert from_pretraining.keys() == finetuned.keys()
    for key, value in finetuned.items():
        assert torch.equal(from_pretraining[key], value), key
    # the decoder is the second half of the pretrained stack, with the pretrained embeddings and MLM head
    original, _ = load_official_checkpoint(CHECKPOINTS["pretrained"])
    pretrained_layer = "text_encoder.bert.encoder.layer.{}.crossattention.self.query.weight"
    assert torch.equal(
        finetuned["text_decoder.layers.0.cross_attn.query.weight"], original[pretrained_layer.format(6)]
    )
    assert torch.equal(
        finetuned["text_decoder.layers.5.cross_attn.query.weight"], original[pretrained_layer.format(11)]
    )
    assert torch.equal(finetuned["text_decoder.lm_head.bias"], original["text_encoder.cls.predictions.bias"])
    # what the initialisation leaves out is what the official strict=False load reported as unexpected
    config = SimlaConfig.from_pretrained(folders["pretrained"])
    _, dropped = simla_vqa_initialisation(original, config)
    meta = json.loads((VQA / "meta.json").read_text())
    assert sorted(dropped) == sorted(meta["load_state_dict_msg"]["unexpected_keys"])


def test_config_has_the_official_vqa_layout(folders):
    model = load(folders["finetuned"])
    config = model.config
    assert (config.num_decoder_layers, len(model.text_decoder.layers), len(model.fusion_model.layers)) == (6, 6, 12)
    assert model.text_model.embeddings.token_type_embeddings is None  # MED BERT: no token types
    assert model.vision_model.embeddings.mask_token is None and not config.use_pretraining_heads
    assert (config.k_test, config.alpha, config.distill, config.answer_distillation) == (4, 0.4, True, False)


@pytest.mark.parametrize(("alpha", "name"), [(0.0, "alpha0"), (0.4, "alpha04")])
def test_training_forward_matches_official(folders, golden, alpha, name):
    inputs, expected = golden
    output = train_forward(load(folders["finetuned"]), inputs, alpha)
    assert_close(output.image_embeds, expected["image_embeds"])
    assert_close(output.question_states, expected["question_states"])
    assert_close(output.logits, expected["decoder_logits"])
    assert_close(output.answer_loss, expected[f"answer_loss_{name}"], SUM_ATOL)
    assert_close(output.loss, expected[f"loss_{name}"], SUM_ATOL)
    # official SIMLA never passes alpha to its decoder: the loss is not distilled, the momentum pass is skipped
    assert output.logits_m is None and output.question_states_m is None


def test_momentum_teacher_matches_official(folders, golden):
    inputs, expected = golden
    model = load(folders["finetuned"])
    model.momentum_update()  # the official forward's `_momentum_update()` before its momentum pass
    with torch.no_grad():
        states_m, _ = model.encode_question(
            inputs["pixel_values"], inputs["question_input_ids"], inputs["question_attention_mask"], momentum=True
        )
        repeats = inputs["answer_k"]
        logits_m = model.decode_answers(
            inputs["answer_input_ids"],
            inputs["answer_attention_mask"],
            states_m.repeat_interleave(repeats, 0),
            inputs["question_attention_mask"].repeat_interleave(repeats, 0),
            momentum=True,
        ).logits[:, :-1]
    assert_close(states_m, expected["question_states_m"])
    assert_close(logits_m, expected["decoder_logits_m"])


def test_answer_distillation_switch_distils_from_the_momentum_decoder(folders, golden):
    inputs, expected = golden
    alpha = float(inputs["alpha"])
    model = load(folders["finetuned"], answer_distillation=True)
    output = train_forward(model, inputs, alpha)
    assert_close(output.logits_m, expected["decoder_logits_m"])
    assert_close(output.question_states_m, expected["question_states_m"])
    # ALBEF's distillation over the vocabulary, from the official logits of both decoders
    targets = inputs["answer_input_ids"][:, 1:].masked_fill(inputs["answer_attention_mask"][:, 1:] == 0, -100)
    student = F.log_softmax(expected["decoder_logits"][:, :-1], dim=-1)
    soft_loss = -(student * F.softmax(expected["decoder_logits_m"], dim=-1)).sum(-1)
    distilled = (1 - alpha) * expected["answer_loss_alpha0"] + alpha * (soft_loss * (targets != -100)).sum(1)
    assert_close(output.answer_loss, distilled, SUM_ATOL)
    assert (output.answer_loss - expected["answer_loss_alpha04"]).abs().max() > 1e-2


def test_answer_ranking_matches_official(folders, golden):
    inputs, expected = golden
    model = load(folders["finetuned"]).eval()
    questions = inputs["pixel_values"], inputs["test_question_input_ids"], inputs["test_question_attention_mask"]
    answers = inputs["answer_list_input_ids"], inputs["answer_list_attention_mask"]
    ranking = model.rank_answers(*questions, *answers, k=int(inputs["k_test"]))
    assert_close(ranking.question_states, expected["test_question_states"])
    with torch.no_grad():  # the first stage: the decoder's scores after [CLS] alone
        start = answers[0][:1, :1].expand(len(questions[0]), 1)
        start_logits = model.decode_answers(start, None, ranking.question_states, questions[2]).logits[:, 0]
    assert_close(start_logits, expected["rank_start_logits"])
    assert_close(F.softmax(start_logits, dim=-1)[:, answers[0][:, 1]], expected["rank_prob_first_token"], PROB_ATOL)
    assert torch.equal(ranking.candidate_indices, expected["rank_first_topk_ids"])
    assert_close(ranking.first_token_probs, expected["rank_first_topk_probs"], PROB_ATOL)
    assert torch.equal(answers[0][ranking.candidate_indices.view(-1)], expected["rank_candidate_input_ids"])
    assert_close(ranking.candidate_loss, expected["rank_candidate_loss"], SUM_ATOL)
    assert_close(ranking.log_likelihoods, expected["rank_log_probs_sum"], SUM_ATOL)
    assert torch.equal(ranking.answer_indices, expected["topk_ids"])
    assert_close(ranking.scores, expected["topk_probs"], PROB_ATOL)


def test_processor_and_collator_reproduce_the_official_inputs(folders, golden):
    inputs, _ = golden
    processor = AutoProcessor.from_pretrained(folders["finetuned"])
    assert type(processor).__name__ == "SimlaProcessor"
    batch = VqaCollator(processor)(list(load_vqa_json(VQA / "data" / "vqa_train.json", VQA / "data")))
    assert torch.equal(batch["answer_weights"], inputs["answer_weights"])
    assert torch.equal(batch["answers_per_question"], inputs["answer_k"])
    for ours, official in [("input_ids", "question_input_ids"), ("answer_input_ids", "answer_input_ids")]:
        assert torch.equal(batch[ours], inputs[official]), ours
        assert torch.equal(
            batch[ours.replace("input_ids", "attention_mask")], inputs[official.replace("input_ids", "attention_mask")]
        )
    meta = json.loads((VQA / "meta.json").read_text())
    test_questions = processor(text=[row["question"] for row in meta["test_annotations"]], preset="vqa_test_question")
    answer_list = processor(text=meta["answer_list"], preset="vqa_answer")
    for encoded, official in [(test_questions, "test_question"), (answer_list, "answer_list")]:
        assert torch.equal(encoded["input_ids"], inputs[f"{official}_input_ids"])
        assert torch.equal(encoded["attention_mask"], inputs[f"{official}_attention_mask"])


def test_official_evaluation_answers(folders):
    meta = json.loads((VQA / "meta.json").read_text())
    model = load(folders["finetuned"])
    dataset = load_vqa_json(VQA / "data" / "vqa_test.json", VQA / "data")
    answer_list = load_answer_list(VQA / "data" / "answer_list.json")
    assert answer_list == meta["answer_list"]
    results = evaluate_vqa(
        model, AutoProcessor.from_pretrained(folders["finetuned"]), dataset, answer_list, show_progress=False
    )
    answers = [{"question_id": p["question_id"], "answer": p["answer"]} for p in results["predictions"]]
    assert answers == meta["evaluation_result"]


def test_the_task_is_recognised_and_other_checkpoints_are_refused(tmp_path):
    original = VQA / "original"
    configs = ["--config", str(original / "VQA.yaml"), "--config", str(original / "shared_bert.json")]
    run_cli("convert", "--method", "simla", "--checkpoint", str(CHECKPOINTS["finetuned"]), *configs,
            "--output", str(tmp_path / "auto"))  # fmt: skip
    assert type(AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path / "auto")) is SimlaForQuestionAnswering
    refusals = {  # a retrieval checkpoint has no MLM head to start the decoder from; ALBEF's BERT is not SIMLA's
        FIXTURES / "simla" / "retrieval" / "checkpoint_retrieval_layout.pth": "neither an answer decoder",
        DOWNSTREAM.parents[1]
        / "albef"
        / "downstream"
        / "vqa"
        / "original"
        / "checkpoint.pth": "does not fit the config",
    }
    for checkpoint, message in refusals.items():
        result = run_cli("convert", "--method", "simla", "--task", "vqa", "--checkpoint", str(checkpoint), *configs,
                         "--output", str(tmp_path / checkpoint.parent.name), check=False)  # fmt: skip
        assert result.returncode != 0 and message in result.stderr.replace("\n", " "), result.stderr
        assert not (tmp_path / checkpoint.parent.name).exists()


def test_from_pretraining_gives_the_official_initialisation_from_a_vlalign_folder(folders, tmp_path):
    """A vlalign SIMLA pretraining folder (the fixture's pretraining checkpoint converted as such) initialises the VQA
    model as VQA.py does: the decoder from the second half of the stack, not from its first layers."""
    pretrained = DOWNSTREAM / "pretrained"
    run_cli(
        "convert", "--method", "simla", "--task", "pretraining", "--checkpoint", str(pretrained / "checkpoint.pth"),
        "--config", str(pretrained / "Pretrain.yaml"), "--config", str(pretrained / "shared_bert.json"),
        "--output", str(tmp_path / "pretraining"),
    )  # fmt: skip
    pretraining = AutoModelForPreTraining.from_pretrained(tmp_path / "pretraining")
    initialised = SimlaForQuestionAnswering.from_pretraining(pretraining, k_test=4)
    assert initialised.config.k_test == 4 and initialised.vision_model.embeddings.mask_token is None
    expected = load_file(folders["finetuned"] / "model.safetensors")
    for model in (initialised, vqa_model_from_pretrained(pretraining)):  # the fine-tuning script's route too
        state = model.state_dict()
        assert state.keys() == expected.keys()
        for key, tensor in expected.items():
            assert torch.equal(state[key], tensor), key
