"""`examples/finetune_ve.py` as a user runs it on the ALBEF SNLI-VE fixture's official JSON and images: from a
converted VE folder and from a pretraining folder (`from_pretraining`), a two-step run with the momentum EMA as a
training duty, scored on validation and test pairs and saved as an entailment model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from test_examples import run_example

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


@pytest.mark.parametrize("start", ["ve", "pretraining"])
def test_finetune_ve(start, tmp_path):
    if start == "ve":
        folder = convert("ve", VE / "original" / "checkpoint.pth", [VE / "original" / "VE.yaml"], tmp_path / "in")
    else:
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
    trained = AutoModelForVisualEntailment.from_pretrained(out)
    assert type(trained) is AlbefForVisualEntailment
    start_model = AutoModelForVisualEntailment.from_pretrained(folder) if start == "ve" else None
    if start_model is not None:  # the head moved, and its momentum copy followed by EMA steps
        assert not torch.equal(trained.cls_head[2].weight, start_model.cls_head[2].weight)
        assert not torch.equal(trained.cls_head_m[2].weight, start_model.cls_head_m[2].weight)
    assert not torch.equal(trained.cls_head_m[2].weight, trained.cls_head[2].weight)


def test_real_data_arguments_are_required(tmp_path):
    with pytest.raises(AssertionError, match="--model_name_or_path"):
        run_example("finetune_ve.py", "--output_dir", str(tmp_path), *DATA, "--use_cpu")
