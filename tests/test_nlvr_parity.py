"""Numerical parity of the NLVR2 and text-assignment models with the official code (ALBEF `model_nlvr.py` /
`model_pretrain_nlvr.py` @ b9727e4, SIMLA `models/simla/nlvr.py` / `pretrain_nlvr.py` @ 44c700d) on the public
fixtures `../shared/fixtures/{albef,simla}/downstream/nlvr` (tolerance from their READMEs: 1e-5 absolute, float32, CPU).

Every checkpoint is converted through the `vlalign convert` CLI and loaded with the Auto classes: the fixture's NLVR
checkpoint (`--task nlvr2`), its text-assignment checkpoint (`--task text-assignment`), and the pretraining checkpoint
both ways, which must give the official loading blocks' state dicts (`Pretrain_nlvr.py`, then `NLVR.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file
from transformers import AutoProcessor

from vlalign.auto import AutoModelForTextAssignment, AutoModelForVisualReasoning, model_family
from vlalign.convert.albef import build_config, load_original_checkpoint, read_config_file
from vlalign.convert.nlvr import convert_to_two_image_task
from vlalign.convert.simla import simla_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
ATOL = 1e-5
METHODS = ("albef", "simla")


def nlvr_dir(method: str) -> Path:
    return FIXTURES / method / "downstream" / "nlvr"


def convert(method: str, task: str, checkpoint: Path, yaml_name: str, output: Path) -> Path:
    original = nlvr_dir(method) / "original"
    run_cli(
        "convert", "--method", method, "--task", task, "--checkpoint", str(checkpoint),
        "--config", str(original / yaml_name), "--config", str(original / "config_bert.json"),
        "--tokenizer", str(original), "--output", str(output),
    )  # fmt: skip
    return output


@pytest.fixture(scope="module", params=METHODS)
def method(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def folders(method, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp(f"{method}_nlvr")
    original = nlvr_dir(method) / "original"
    pretrained = nlvr_dir(method).parent / "pretrained" / "checkpoint.pth"
    return {
        "nlvr2": convert(method, "nlvr2", original / "checkpoint.pth", "NLVR.yaml", root / "nlvr2"),
        "ta": convert(method, "text-assignment", original / "checkpoint_ta.pth", "NLVR_pretrain.yaml", root / "ta"),
        "ta_from_pretrained": convert(
            method, "text-assignment", pretrained, "NLVR_pretrain.yaml", root / "ta_from_pretrained"
        ),
        "nlvr2_from_ta": convert(method, "nlvr2", original / "checkpoint_ta.pth", "NLVR.yaml", root / "nlvr2_from_ta"),
        "nlvr2_from_pretrained": convert(method, "nlvr2", pretrained, "NLVR.yaml", root / "nlvr2_from_pretrained"),
    }


@pytest.fixture(scope="module")
def golden(method):
    return load_file(nlvr_dir(method) / "inputs.safetensors"), load_file(nlvr_dir(method) / "outputs.safetensors")


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), atol=ATOL, rtol=0)


def test_nlvr2_outputs(method, folders, golden):
    """Image embeddings, fused states and logits (eval), then one EMA step and the distilled training loss."""
    inputs, outputs = golden
    model = AutoModelForVisualReasoning.from_pretrained(folders["nlvr2"])
    assert type(model).__name__ == f"{method.capitalize()}ForVisualReasoning"
    batch = {key: inputs[key] for key in ("pixel_values", "input_ids", "attention_mask")}
    with torch.no_grad():
        output = model.eval()(**batch)
        assert_close(output.image_embeds, outputs["image_embeds"])
        assert_close(output.fused_states, outputs["fused_states"])
        assert_close(output.logits, outputs["logits"])
    # the first training forward (gradients on) primes the momentum copies: the official `_momentum_update()`
    output = model.train()(**batch, labels=inputs["targets"], alpha=float(inputs["alpha"]))
    assert_close(output.logits, outputs["logits_train"])
    assert_close(output.logits_m, outputs["logits_m"])
    assert_close(output.loss_ce, outputs["loss_ce"])
    assert_close(output.loss, outputs["loss_alpha04"])
    assert_close(model(**batch, labels=inputs["targets"], alpha=0.0).loss, outputs["loss_alpha0"])


def test_official_evaluation_accuracy(method, folders, golden):
    """`NLVR.evaluate()` on the fixture's test file: the saved processor gives the same tokens (preset "train":
    `pre_caption` to 30 words, padded to the longest, no [SEP]) and the model the same accuracy."""
    inputs, _ = golden
    rows = json.loads((nlvr_dir(method) / "data" / "nlvr_test.json").read_text())
    meta = json.loads((nlvr_dir(method) / "meta.json").read_text())
    encoded = AutoProcessor.from_pretrained(folders["nlvr2"])(text=[row["sentence"] for row in rows], preset="train")
    assert torch.equal(encoded["input_ids"], inputs["input_ids"])
    assert torch.equal(encoded["attention_mask"], inputs["attention_mask"])
    labels = torch.tensor([int(row["label"] == "True") for row in rows])
    assert torch.equal(labels, inputs["targets"])
    model = AutoModelForVisualReasoning.from_pretrained(folders["nlvr2"]).eval()
    with torch.no_grad():
        logits = model(inputs["pixel_values"], encoded["input_ids"], encoded["attention_mask"]).logits
    assert f"{(logits.argmax(1) == labels).float().mean().item():.4f}" == meta["evaluate_result"]["acc"]


def test_text_assignment_outputs(method, folders, golden):
    """The deterministic reference (each caption with images b and b+1, label 0), the sampling weights, and the
    official RNG-drawn forward replayed from its recorded pairs and labels."""
    inputs, outputs = golden
    model = AutoModelForTextAssignment.from_pretrained(folders["ta"]).eval()
    assert type(model).__name__ == f"{method.capitalize()}ForTextAssignment"
    batch = {
        "pixel_values": inputs["ta_pixel_values"],
        "input_ids": inputs["ta_input_ids"],
        "attention_mask": inputs["ta_attention_mask"],
    }
    rows = torch.arange(batch["input_ids"].shape[0])
    with torch.no_grad():
        shifted = model(**batch, pairs=torch.stack([rows, (rows + 1) % len(rows)], 1), labels=torch.zeros_like(rows))
        replayed = model(**batch, pairs=outputs["ta_pairs"], labels=outputs["ta_labels"])
    assert_close(shifted.image_embeds, outputs["ta_image_embeds"])
    assert_close(shifted.sim_weights, outputs["ta_sim_weights"])
    assert_close(shifted.logits, outputs["ta_logits_shift"])
    assert_close(shifted.loss, outputs["ta_loss_shift_label0"])
    assert_close(replayed.logits, outputs["ta_logits"])
    assert_close(replayed.loss, outputs["ta_loss"])


def test_global_generator_draws_what_the_official_forward_drew(method, folders, golden):
    """The README calls the official draw RNG-dependent: seeded as the generator seeded it (`torch.manual_seed(2)`
    right before the forward), the draw from torch's global generator is the recorded one."""
    inputs, outputs = golden
    model = AutoModelForTextAssignment.from_pretrained(folders["ta"]).train()
    torch.manual_seed(2)
    with torch.no_grad():
        output = model(inputs["ta_pixel_values"], inputs["ta_input_ids"], inputs["ta_attention_mask"])
    assert torch.equal(output.pairs, outputs["ta_pairs"]) and torch.equal(output.labels, outputs["ta_labels"])
    assert_close(output.loss, outputs["ta_loss"])


def online_encoders(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        key: value for key, value in state.items() if key.startswith(("vision_model.", "text_model.", "fusion_model."))
    }


def test_text_assignment_initialisation_is_the_official_one(method, folders):
    """`Pretrain_nlvr.py`'s load of the pretraining checkpoint: the fixture's text-assignment checkpoint, except the
    weights that load leaves at their construction values (`ta_head`; SIMLA: the token-type table its MED BERT lacks)."""
    reference = AutoModelForTextAssignment.from_pretrained(folders["ta"]).state_dict()
    state = AutoModelForTextAssignment.from_pretrained(folders["ta_from_pretrained"]).state_dict()
    assert state.keys() == reference.keys()
    differing = {key for key in state if not torch.equal(state[key], reference[key])}
    fresh = {"ta_head.weight", "ta_head.bias"} | (
        {"text_model.embeddings.token_type_embeddings.weight"} if method == "simla" else set()
    )
    assert differing == fresh


def test_nlvr2_initialisation_keeps_construction_momentum(method, folders):
    """`NLVR.py`'s load of the text-assignment checkpoint: the online encoders are the fixture NLVR checkpoint's; the
    momentum copies are the *construction-time* weights (copied before loading), so they differ from the online ones,
    and the fresh head's momentum copy equals it. From the pretraining checkpoint the encoders are the same."""
    reference = AutoModelForVisualReasoning.from_pretrained(folders["nlvr2"]).state_dict()
    for name in ("nlvr2_from_ta", "nlvr2_from_pretrained"):
        model = AutoModelForVisualReasoning.from_pretrained(folders[name])
        state = model.state_dict()
        assert state.keys() == reference.keys()
        for key, value in online_encoders(state).items():
            if name == "nlvr2_from_pretrained" and "token_type_embeddings" in key:
                continue  # SIMLA: left at construction by the text-assignment load, then carried
            assert torch.equal(value, reference[key]), key
        for online, momentum, equal in (
            (model.vision_model, model.vision_model_m, False),
            (model.fusion_model, model.fusion_model_m, False),
            (model.cls_head, model.cls_head_m, True),
        ):
            pairs = zip(online.parameters(), momentum.parameters(), strict=True)
            # matrices only: biases and LayerNorms are zeros/ones both at construction and in the untrained fixture
            same = [torch.equal(o, m) for o, m in pairs if o.dim() > 1]
            assert all(same) if equal else not any(same)


def test_momentum_switch_starts_the_teacher_from_the_loaded_weights(method):
    """The switch for the quirk: `momentum_from_loaded=True` copies the loaded weights into the momentum model."""
    original = nlvr_dir(method) / "original"
    yaml_config = read_config_file(original / "NLVR.yaml")
    bert_config = read_config_file(original / "config_bert.json")
    config = build_config(yaml_config, bert_config) if method == "albef" else simla_config(yaml_config, bert_config)
    family = model_family(method)
    checkpoint = load_original_checkpoint(original / "checkpoint_ta.pth")
    model = convert_to_two_image_task(
        checkpoint, config, "nlvr2", family.visual_reasoning_class, family.text_assignment_class,
        momentum_from_loaded=True,
    )  # fmt: skip
    assert all(torch.equal(online, momentum) for online, momentum in model.momentum_parameter_pairs())


def test_token_type_switch(method):
    """`zero_token_types=True` zeroes the token-type table only where the checkpoint lacks it (SIMLA's pretraining
    checkpoint); ALBEF's pretrained table is loaded either way."""
    original = nlvr_dir(method) / "original"
    yaml_config = read_config_file(original / "NLVR_pretrain.yaml")
    bert_config = read_config_file(original / "config_bert.json")
    config = build_config(yaml_config, bert_config) if method == "albef" else simla_config(yaml_config, bert_config)
    family = model_family(method)
    checkpoint = load_original_checkpoint(nlvr_dir(method).parent / "pretrained" / "checkpoint.pth")
    classes = (family.visual_reasoning_class, family.text_assignment_class)
    model = convert_to_two_image_task(checkpoint, config, "text-assignment", *classes, zero_token_types=True)
    table = model.text_model.embeddings.token_type_embeddings.weight
    expected = checkpoint.get("text_encoder.bert.embeddings.token_type_embeddings.weight", torch.zeros_like(table))
    assert torch.equal(table, expected)


def test_auto_task_recognises_nlvr_and_text_assignment_checkpoints(method, tmp_path):
    """`--task auto` (the default) tells an NLVR checkpoint (`cls_head` and more BERT layers than the json: a VE one
    has `cls_head` too) and a text-assignment one (`ta_head`) from the others."""
    original = nlvr_dir(method) / "original"
    for checkpoint, yaml_name, expected in (
        ("checkpoint.pth", "NLVR.yaml", "ForVisualReasoning"),
        ("checkpoint_ta.pth", "NLVR_pretrain.yaml", "ForTextAssignment"),
    ):
        folder = convert(method, "auto", original / checkpoint, yaml_name, tmp_path / checkpoint)
        architectures = json.loads((folder / "config.json").read_text())["architectures"]
        assert architectures == [f"{method.capitalize()}{expected}"]
