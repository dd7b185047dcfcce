"""Numerical parity of `AlbefForVisualEntailment` and `SimlaForVisualEntailment` with the official VE code (ALBEF
`model_ve.py` @ b9727e4, SIMLA `models/simla/ve.py` @ 44c700d) on the public fixtures
`../shared/fixtures/{albef,simla}/downstream/ve` (tolerance from their READMEs: 1e-5 absolute, float32, CPU).

Both official checkpoints of each method go through `vlalign convert --method M --task ve` and load with
`AutoModelForVisualEntailment`: the fine-tuned VE layout (the fixture's `original/checkpoint.pth`) and the pretraining
checkpoint (`downstream/pretrained`), initialised as `VE.py` does (every weight but the random head equals the
fine-tuned layout's, which is that initialisation).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor

from vlalign import AutoModelForVisualEntailment
from vlalign.convert.restricted_unpickle import load_official_checkpoint
from vlalign.convert.ve import pretraining_keys_left_out
from vlalign.models import AlbefForVisualEntailment, SimlaForVisualEntailment

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
ATOL = 1e-5  # the READMEs' tolerance for other implementations
METHODS = {
    "albef": ("config_bert.json", AlbefForVisualEntailment),
    "simla": ("shared_bert.json", SimlaForVisualEntailment),
}


def ve_dir(method: str) -> Path:
    return FIXTURES / method / "downstream" / "ve"


def convert(method: str, checkpoint: Path, output: Path) -> Path:
    original = ve_dir(method) / "original"
    run_cli(
        "convert", "--method", method, "--task", "ve", "--checkpoint", str(checkpoint),
        "--config", str(original / "VE.yaml"), "--config", str(original / METHODS[method][0]),
        "--tokenizer", str(original), "--output", str(output),
    )  # fmt: skip
    return output


@pytest.fixture(scope="module", params=list(METHODS))
def method(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def folders(method, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp(f"{method}_ve")
    return {
        "finetuned": convert(method, ve_dir(method) / "original" / "checkpoint.pth", root / "finetuned"),
        "pretrained": convert(
            method, FIXTURES / method / "downstream" / "pretrained" / "checkpoint.pth", root / "pre"
        ),
    }


@pytest.fixture(scope="module")
def model(method, folders):
    loaded = AutoModelForVisualEntailment.from_pretrained(folders["finetuned"])
    assert type(loaded) is METHODS[method][1]
    return loaded.train()  # the official training outputs were recorded in train mode (dropout 0 in the fixture)


@pytest.fixture(scope="module")
def golden(method):
    return load_file(ve_dir(method) / "inputs.safetensors"), load_file(ve_dir(method) / "outputs.safetensors")


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), atol=ATOL, rtol=0)


def forward(model, inputs, **kwargs):
    with torch.no_grad():
        return model(
            pixel_values=inputs["pixel_values"],
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            **kwargs,
        )


def test_config_and_labels(model):
    assert model.config.id2label == {0: "contradiction", 1: "neutral", 2: "entailment"}
    assert model.config.alpha == pytest.approx(0.4) and model.config.distill
    assert model.config.alpha_warmup_epochs == 0  # VE.yaml: warm_up False, α constant from the first step


def test_forward_matches(model, golden):
    inputs, outputs = golden
    alpha = float(inputs["alpha"])
    plain = forward(model.eval(), inputs)
    assert_close(plain.image_embeds, outputs["image_embeds"])
    assert_close(plain.fused_states, outputs["fused_states"])
    assert_close(plain.logits, outputs["logits"])
    model.train()
    distilled = forward(model, inputs, labels=inputs["targets"], alpha=alpha)
    assert_close(distilled.logits, outputs["logits_train"])
    # the official forward takes one EMA step first; the momentum copies equal the online weights here
    assert_close(distilled.logits_m, outputs["logits_m"])
    assert_close(distilled.loss_ce, outputs["loss_ce"])
    assert_close(distilled.loss, outputs["loss_alpha04"])
    expected = (1 - alpha) * distilled.loss_ce + alpha * distilled.loss_distill
    torch.testing.assert_close(distilled.loss, expected, atol=1e-7, rtol=0)
    undistilled = forward(model, inputs, labels=inputs["targets"], alpha=0.0)
    assert undistilled.logits_m is None and undistilled.loss_distill is None
    assert_close(undistilled.loss, outputs["loss_alpha0"])


def test_official_evaluation_accuracy(method, folders, model):
    """`VE.evaluate()` on the fixture's test file through the saved processor (preset "train": `pre_caption` to 30
    words, padded to the longest): the same tokens and the same accuracy."""
    directory = ve_dir(method)
    rows = json.loads((directory / "data" / "ve_test.json").read_text())
    meta = json.loads((directory / "meta.json").read_text())
    inputs, _ = load_file(directory / "inputs.safetensors"), None
    processor = AutoProcessor.from_pretrained(folders["finetuned"])
    images = [Image.open(directory / "data" / f"{row['image']}.jpg") for row in rows]
    encoded = processor(images=images, text=[row["sentence"] for row in rows], preset="train")
    assert torch.equal(encoded["input_ids"], inputs["input_ids"])
    assert torch.equal(encoded["attention_mask"], inputs["attention_mask"])
    labels = torch.tensor([model.config.label2id[row["label"]] for row in rows])
    assert torch.equal(labels, inputs["targets"])
    predictions = model.eval().predict(inputs["pixel_values"], encoded["input_ids"], encoded["attention_mask"])
    accuracy = (predictions == labels).float().mean().item()
    assert f"{accuracy:.4f}" == meta["evaluate_result"]["acc"]


def test_pretraining_initialisation_is_the_official_one(method, folders, model):
    """The pretraining checkpoint converts into the fine-tuned layout's weights (the fixture's VE checkpoint is the
    official initialisation), except the head, which is new: PyTorch's default init, the momentum head a copy."""
    initialised = AutoModelForVisualEntailment.from_pretrained(folders["pretrained"])
    reference = model.state_dict()
    state = initialised.state_dict()
    assert state.keys() == reference.keys()
    for key, value in state.items():
        if not key.startswith("cls_head"):
            assert torch.equal(value, reference[key]), key
    for online, momentum in zip(initialised.cls_head.parameters(), initialised.cls_head_m.parameters(), strict=True):
        assert torch.equal(online, momentum)
    bound = 1 / model.config.text_config.hidden_size**0.5  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert initialised.cls_head[0].weight.abs().max() <= bound
    assert initialised.cls_head[0].weight.std() > 0.5 * bound / 3**0.5


def test_left_out_keys_are_the_official_unexpected_keys(method):
    """The pretraining keys the conversion leaves out are exactly what the official `strict=False` load reports as
    unexpected."""
    original, _ = load_official_checkpoint(FIXTURES / method / "downstream" / "pretrained" / "checkpoint.pth")
    meta = json.loads((ve_dir(method) / "meta.json").read_text())
    assert sorted(pretraining_keys_left_out(original)) == sorted(meta["load_state_dict_msg"]["unexpected_keys"])


def test_from_pretraining_matches_the_conversion(method, folders):
    """A vlalign pretraining model → `from_pretraining` gives the same encoders as converting the official
    pretraining checkpoint with `--task ve`."""
    from transformers import AutoModelForPreTraining

    with torch.no_grad():
        original = ve_dir(method) / "original"
        pretraining_dir = folders["pretrained"].parent / "pretraining"
        run_cli(
            "convert", "--method", method, "--task", "pretraining", "--checkpoint",
            str(FIXTURES / method / "downstream" / "pretrained" / "checkpoint.pth"),
            "--config", str(FIXTURES / method / "downstream" / "pretrained" / "Pretrain.yaml"),
            "--config", str(original / METHODS[method][0]), "--tokenizer", str(original),
            "--output", str(pretraining_dir),
        )  # fmt: skip
        pretraining = AutoModelForPreTraining.from_pretrained(pretraining_dir)
        ve = METHODS[method][1].from_pretraining(pretraining)
        converted = AutoModelForVisualEntailment.from_pretrained(folders["pretrained"])
    assert ve.training
    assert pretraining.config.alpha_warmup_epochs == 1 and ve.config.alpha_warmup_epochs == 0  # VE: α constant
    state, reference = ve.state_dict(), converted.state_dict()
    assert state.keys() == reference.keys()
    for key in state:
        if not key.startswith("cls_head"):
            assert torch.equal(state[key], reference[key]), key
    for online, momentum in zip(ve.cls_head.parameters(), ve.cls_head_m.parameters(), strict=True):
        assert torch.equal(online, momentum)
