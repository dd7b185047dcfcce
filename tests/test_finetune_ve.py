"""`examples/finetune_ve.py` as a user runs it on the ALBEF SNLI-VE fixture's official JSON and images: from a
converted VE folder and from a pretraining folder (`from_pretraining`), a two-step run with the momentum EMA as a
training duty, scored on validation and test pairs and saved as an entailment model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from test_examples import load_script, run_example

from vlalign import AutoModelForVisualEntailment
from vlalign.models import AlbefForVisualEntailment

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOWNSTREAM = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "albef" / "downstream"
VE = DOWNSTREAM / "ve"
DATA = ["--train_json", str(VE / "data" / "ve_test.json"), "--image_root", str(VE / "data")]
SMALL = [
    "--use_cpu", "--report_to", "none", "--image_size", "32", "--augment", "false", "--max_steps", "2",
    "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--warmup_steps", "0", "--save_strategy", "no",
]  # fmt: skip


def convert(task: str, checkpoint: Path, configs: list[Path], output: Path) -> Path:
    original = VE / "original"
    run_cli(
        "convert", "--method", "albef", "--task", task, "--checkpoint", str(checkpoint),
        *[arg for config in configs for arg in ("--config", str(config))], "--config", str(original / "config_bert.json"),
        "--tokenizer", str(original), "--output", str(output),
    )  # fmt: skip
    return output


def test_finetune_ve_from_a_pretraining_folder(tmp_path):
    """The entailment model starts from the pretraining folder's encoders (`from_pretraining`), trains two steps with
    the EMA as a training duty, and is scored and saved."""
    pretrained = DOWNSTREAM / "pretrained"
    folder = convert("pretraining", pretrained / "checkpoint.pth", [pretrained / "Pretrain.yaml"], tmp_path / "in")
    out = tmp_path / "out"
    run_example(
        "finetune_ve.py", "--model_name_or_path", str(folder), "--output_dir", str(out), *DATA, *SMALL,
        "--val_json", str(VE / "data" / "ve_test.json"), "--test_json", str(VE / "data" / "ve_test.json"),
    )  # fmt: skip
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    results = json.loads((out / "eval_results.json").read_text())
    for split in ("val", "test"):
        assert 0.0 <= results[split]["accuracy"] <= 1.0 and results[split]["num_pairs"] == 4
        assert results[split]["majority_baseline"] == 0.5  # entailment: 2 of the 4 pairs
    card = ModelCard.load(out / "README.md")
    index = {result.dataset_split: result for result in card.data.eval_results}
    assert set(index) == {"val", "test"} and index["test"].task_type == "visual-entailment"
    assert index["test"].metric_value == round(100 * results["test"]["accuracy"], 2)
    trained = AutoModelForVisualEntailment.from_pretrained(out)
    assert type(trained) is AlbefForVisualEntailment and trained.config.alpha_warmup_epochs == 0
    # the head started equal to its momentum copy; two optimizer steps and two EMA steps later they differ
    assert not torch.equal(trained.cls_head_m[2].weight, trained.cls_head[2].weight)


def test_real_data_arguments_are_required(tmp_path):
    with pytest.raises(AssertionError, match="--model_name_or_path"):
        run_example("finetune_ve.py", "--output_dir", str(tmp_path), *DATA, "--use_cpu")


@pytest.fixture(scope="module")
def ve_folder(tmp_path_factory) -> Path:
    original = VE / "original"
    return convert("ve", original / "checkpoint.pth", [original / "VE.yaml"], tmp_path_factory.mktemp("ve") / "in")


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_resumed_run_equals_the_uninterrupted_one(ve_folder, tmp_path):
    """A run resumed from its step-2 checkpoint ends with the uninterrupted run's weights, bit for bit (momentum
    copies included: the EMA continues from the saved step)."""
    run = [*DATA, *SMALL, "--model_name_or_path", str(ve_folder), "--max_steps", "4", "--save_strategy", "steps",
           "--save_steps", "2"]  # fmt: skip
    straight = tmp_path / "straight"
    run_example("finetune_ve.py", "--output_dir", str(straight), *run)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    run_example("finetune_ve.py", "--output_dir", str(resumed), *run, "--resume_from_checkpoint", "true")
    expected, got = weights(straight / "checkpoint-4"), weights(resumed / "checkpoint-4")
    assert any(name.startswith("cls_head_m.") for name in expected)
    assert expected.keys() == got.keys()
    assert not [name for name in expected if not torch.equal(expected[name], got[name])]


def test_defaults_are_the_official_ve_yaml():
    """ALBEF's configs/VE.yaml: AdamW lr 2e-5, weight decay 0.02, 5 epochs, batch 32 / 64, cosine to 1e-6 after one
    warm-up stage at 1e-5 (the official scheduler's warmup_epochs 1, stepped every 100 iterations)."""
    script = load_script("finetune_ve")
    official = dict(
        learning_rate=2e-5, weight_decay=0.02, num_train_epochs=5, per_device_train_batch_size=32,
        per_device_eval_batch_size=64, epoch_lr_schedule=True, warmup_lr=1e-5, warmup_steps=100, warmup_stages=1,
        min_lr=1e-6,
    )  # fmt: skip
    for method in ("albef", "simla", "codis"):
        argv = ["--method", method, "--output_dir", "unused", "--model_name_or_path", "m", "--train_json", "t.json"]
        script_args, training_args = script.parse_args(argv)
        assert {name: getattr(training_args, name) for name in official} == official
        assert script_args.image_size is None and script.REAL_DATA_IMAGE_SIZE == 384
