"""`examples/pretrain_text_assignment.py` on the ALBEF NLVR2 fixture (`../shared/fixtures/albef/downstream/nlvr`): the
official caption tokens, a tiny run from a pretraining folder (layer doubling) saved as a text-assignment model (what
`examples/finetune_nlvr2.py` starts from, tested there with a converted one), exact resume (the draw's global generator
included), the official NLVR_pretrain.yaml defaults."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file
from test_examples import load_script, run_example
from transformers import AutoModelForPreTraining, AutoProcessor

from vlalign import AutoModelForTextAssignment
from vlalign.models import AlbefForTextAssignment

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOWNSTREAM = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "albef" / "downstream"
NLVR = DOWNSTREAM / "nlvr"
SMALL = [
    "--use_cpu", "--report_to", "none", "--image_size", "32", "--augment", "false", "--max_steps", "2",
    "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--warmup_steps", "0", "--save_strategy", "no",
]  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    folder, output = DOWNSTREAM / "pretrained", tmp_path_factory.mktemp("pretrained") / "albef"
    run_cli(
        "convert", "--method", "albef", "--task", "pretraining", "--checkpoint", str(folder / "checkpoint.pth"),
        "--config", str(folder / "Pretrain.yaml"), "--config", str(NLVR / "original" / "config_bert.json"),
        "--tokenizer", str(NLVR / "original"), "--output", str(output),
    )  # fmt: skip
    return output


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> list[str]:
    """The fixture's text-assignment captions (official pretraining JSON) with the fixture's images."""
    entries = json.loads((NLVR / "data" / "ta_train.json").read_text())
    entries = [{**entry, "image": f"img_{i}.png"} for i, entry in enumerate(entries)]
    file = tmp_path_factory.mktemp("ta_data") / "ta_train.json"
    file.write_text(json.dumps(entries))
    return ["--train_json", str(file), "--image_root", str(NLVR / "data")]


def test_captions_tokenize_as_the_official_script(pretrained):
    """`Pretrain_nlvr.train`: pre_caption, then padded to the longest, truncated at 25 tokens (preset "pretrain")."""
    captions = json.loads((NLVR / "meta.json").read_text())["ta_captions_raw"]
    encoded = AutoProcessor.from_pretrained(pretrained)(text=captions, preset="pretrain", return_tensors="pt")
    inputs = load_file(NLVR / "inputs.safetensors")
    assert torch.equal(encoded["input_ids"], inputs["ta_input_ids"])
    assert torch.equal(encoded["attention_mask"], inputs["ta_attention_mask"])


def test_pretrain_text_assignment_from_a_pretraining_folder(pretrained, data, tmp_path):
    out = tmp_path / "ta"
    run_example("pretrain_text_assignment.py", "--model_name_or_path", str(pretrained), "--output_dir", str(out),
                *data, *SMALL)  # fmt: skip
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    trained = AutoModelForTextAssignment.from_pretrained(out)
    assert type(trained) is AlbefForTextAssignment
    initial = AlbefForTextAssignment.from_pretraining(AutoModelForPreTraining.from_pretrained(pretrained)).state_dict()
    after = trained.state_dict()
    changed = {name for name in after if not torch.equal(after[name], initial[name])}
    # the projections and temperature are frozen (the official loss never reaches them); the encoders and head learn
    assert not {name for name in changed if name.startswith(("vision_proj.", "text_proj.", "temp"))}
    assert "ta_head.weight" in changed and any(name.startswith("fusion_model.") for name in changed)


def test_resumed_run_equals_the_uninterrupted_one(pretrained, data, tmp_path):
    """Resumed from its step-2 checkpoint, the run ends with the uninterrupted run's weights, bit for bit: the draw of
    the other images continues the restored global generator."""
    run = [*data, *SMALL, "--model_name_or_path", str(pretrained), "--max_steps", "4", "--save_strategy", "steps",
           "--save_steps", "2"]  # fmt: skip
    straight = tmp_path / "straight"
    run_example("pretrain_text_assignment.py", "--output_dir", str(straight), *run)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    run_example("pretrain_text_assignment.py", "--output_dir", str(resumed), *run, "--resume_from_checkpoint", "true")
    expected = load_file(straight / "checkpoint-4" / "model.safetensors")
    got = load_file(resumed / "checkpoint-4" / "model.safetensors")
    assert expected.keys() == got.keys() and "ta_head.weight" in expected
    assert not [name for name in expected if not torch.equal(expected[name], got[name])]


def test_defaults_are_the_official_nlvr_pretrain_yaml():
    """ALBEF's configs/NLVR_pretrain.yaml: AdamW lr 2e-5, weight decay 0.02, 1 epoch, batch 64, one warm-up stage at
    1e-5 (stepped every 100 iterations), min_lr 1e-5, 256 px."""
    script = load_script("pretrain_text_assignment")
    official = dict(
        learning_rate=2e-5, weight_decay=0.02, num_train_epochs=1, per_device_train_batch_size=64,
        epoch_lr_schedule=True, warmup_lr=1e-5, warmup_steps=100, warmup_stages=1, min_lr=1e-5,
    )  # fmt: skip
    for method in ("albef", "simla", "codis"):
        argv = ["--method", method, "--output_dir", "unused", "--model_name_or_path", "m", "--train_json", "t.json"]
        script_args, training_args = script.parse_args(argv)
        assert {name: getattr(training_args, name) for name in official} == official
        assert script_args.image_size is None and script.REAL_DATA_IMAGE_SIZE == 256
    from vlalign.training.argument_checks import ArgumentError

    with pytest.raises(ArgumentError, match="per_device_train_batch_size 3"):
        script.parse_args([*argv, "--per_device_train_batch_size", "2"])
