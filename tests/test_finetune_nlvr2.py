"""`examples/finetune_nlvr2.py` as a user runs it on the ALBEF NLVR2 fixture's official JSON and images: from a
pretraining folder (through the text-assignment layer doubling), from a text-assignment folder, a two-step run with the
momentum EMA as a training duty, scored on dev and test pairs and saved as an NLVR2 model; exact resume; the official
NLVR.yaml defaults."""

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

from vlalign import AutoModelForVisualReasoning
from vlalign.models import AlbefForVisualReasoning

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOWNSTREAM = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "albef" / "downstream"
NLVR = DOWNSTREAM / "nlvr"
ANNOTATIONS = str(NLVR / "data" / "nlvr_test.json")
DATA = ["--train_json", ANNOTATIONS, "--image_root", str(NLVR / "data")]
SMALL = [
    "--use_cpu", "--report_to", "none", "--image_size", "32", "--augment", "false", "--max_steps", "2",
    "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--warmup_steps", "0", "--save_strategy", "no",
]  # fmt: skip


def convert(task: str, checkpoint: Path, yaml: Path, output: Path) -> Path:
    original = NLVR / "original"
    run_cli(
        "convert", "--method", "albef", "--task", task, "--checkpoint", str(checkpoint), "--config", str(yaml),
        "--config", str(original / "config_bert.json"), "--tokenizer", str(original), "--output", str(output),
    )  # fmt: skip
    return output


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_finetune_nlvr2_from_a_pretraining_folder(tmp_path):
    """The NLVR2 model starts from the pretraining folder's encoders (layer doubling), trains two steps with the EMA
    as a training duty, and is scored and saved with its model card."""
    pretrained = DOWNSTREAM / "pretrained"
    folder = convert("pretraining", pretrained / "checkpoint.pth", pretrained / "Pretrain.yaml", tmp_path / "in")
    out = tmp_path / "out"
    run_example(
        "finetune_nlvr2.py", "--model_name_or_path", str(folder), "--output_dir", str(out), *DATA, *SMALL,
        "--val_json", ANNOTATIONS, "--test_json", ANNOTATIONS,
    )  # fmt: skip
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    results = json.loads((out / "eval_results.json").read_text())
    for split in ("dev", "test"):
        assert results[split]["accuracy"] in (0.0, 1 / 3, 2 / 3, 1.0) and results[split]["num_pairs"] == 3
        assert results[split]["majority_baseline"] == pytest.approx(2 / 3)  # True: 2 of the 3 pairs
    card = ModelCard.load(out / "README.md")
    index = {result.dataset_split: result for result in card.data.eval_results}
    assert set(index) == {"dev", "test"} and index["test"].task_type == "visual-reasoning"
    assert index["test"].metric_value == round(100 * results["test"]["accuracy"], 2)
    trained = AutoModelForVisualReasoning.from_pretrained(out)
    assert type(trained) is AlbefForVisualReasoning and trained.config.alpha_warmup_epochs == 1  # warm_up: True
    # the head started equal to its momentum copy; two optimizer steps and two EMA steps later they differ
    online, momentum = trained.cls_head.state_dict(), trained.cls_head_m.state_dict()
    assert online.keys() == momentum.keys() and not all(torch.equal(online[k], momentum[k]) for k in online)
    assert "visual-reasoning" in json.loads((out / "config.json").read_text())["custom_pipelines"]


@pytest.fixture(scope="module")
def ta_folder(tmp_path_factory) -> Path:
    original = NLVR / "original"
    output = tmp_path_factory.mktemp("ta") / "in"
    return convert("text-assignment", original / "checkpoint_ta.pth", original / "NLVR_pretrain.yaml", output)


def test_resumed_run_equals_the_uninterrupted_one(ta_folder, tmp_path):
    """From a text-assignment folder (`from_text_assignment`); a run resumed from its step-2 checkpoint ends with the
    uninterrupted run's weights, bit for bit (momentum copies included)."""
    run = [*DATA, *SMALL, "--model_name_or_path", str(ta_folder), "--max_steps", "4", "--save_strategy", "steps",
           "--save_steps", "2"]  # fmt: skip
    straight = tmp_path / "straight"
    run_example("finetune_nlvr2.py", "--output_dir", str(straight), *run)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    run_example("finetune_nlvr2.py", "--output_dir", str(resumed), *run, "--resume_from_checkpoint", "true")
    expected, got = weights(straight / "checkpoint-4"), weights(resumed / "checkpoint-4")
    assert any(name.startswith("cls_head_m.") for name in expected)
    assert expected.keys() == got.keys()
    assert not [name for name in expected if not torch.equal(expected[name], got[name])]


def test_real_data_arguments_are_required():
    from vlalign.training.argument_checks import ArgumentError

    with pytest.raises(ArgumentError, match="--model_name_or_path"):
        load_script("finetune_nlvr2").parse_args(["--output_dir", "unused", *DATA])


def test_defaults_are_the_official_nlvr_yaml():
    """ALBEF's configs/NLVR.yaml: AdamW lr 2e-5, weight decay 0.02, 10 epochs, batch 16, cosine to 1e-6 after one
    warm-up stage at 1e-5 (the official scheduler's warmup_epochs 1, stepped every 100 iterations), 384 px."""
    script = load_script("finetune_nlvr2")
    official = dict(
        learning_rate=2e-5, weight_decay=0.02, num_train_epochs=10, per_device_train_batch_size=16,
        per_device_eval_batch_size=16, epoch_lr_schedule=True, warmup_lr=1e-5, warmup_steps=100, warmup_stages=1,
        min_lr=1e-6,
    )  # fmt: skip
    for method in ("albef", "simla", "codis"):
        argv = ["--method", method, "--output_dir", "unused", "--model_name_or_path", "m", "--train_json", "t.json"]
        script_args, training_args = script.parse_args(argv)
        assert {name: getattr(training_args, name) for name in official} == official
        assert script_args.image_size is None and script.REAL_DATA_IMAGE_SIZE == 384
        assert not script_args.momentum_from_loaded
