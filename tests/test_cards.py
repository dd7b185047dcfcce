"""Honest artefacts: the quick start's model card states what actually ran (optimizer steps, epochs, the optimizer
object, the training data, the tokenizer), rounds percentages to one decimal, and every file written by the quick
start and `vlalign convert` has normal permissions with no empty folder left behind."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
import torch
from conftest import ALBEF_FIXTURES, run_cli
from transformers import AutoProcessor

from vlalign.hub.card import describe_optimizer, describe_tokenizer
from vlalign.quickstart import QuickstartSettings, run_quickstart


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("quickstart") / "run"  # created by the quick start
    umask = os.umask(0o022)
    try:
        settings = QuickstartSettings(num_train=64, num_test=12, batch_size=8, max_steps=20, warmup_steps=1, k_test=4)
        summary = run_quickstart(output, settings)
    finally:
        os.umask(umask)
    return output, summary


def assert_normal_files(folder: Path) -> None:
    """0644 files and 0755 folders (umask 022), and no empty folder."""
    for path in [folder, *folder.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: {oct(mode)}"
        assert not path.is_dir() or any(path.iterdir()), f"empty folder {path}"


def test_card_states_the_steps_epochs_and_optimizer_that_ran(quickstart):
    output, _ = quickstart
    card = (output / "model" / "README.md").read_text()
    assert "| `optimizer steps` | 20 |" in card
    assert "| `epochs` | 2.5 (64 training samples) |" in card  # 20 steps × 8 / 64
    assert "| `global batch size` | 8 |" in card
    assert "num_train_epochs" not in card and "| `max_steps` |" not in card  # the trainer's defaults did not run
    optimizer = re.search(r"\| `optimizer` \| (.*) \|", card).group(1)
    assert optimizer.startswith("torch.optim.adamw.AdamW; 2 parameter groups: ")
    assert "weight decay 0.02" in optimizer and "weight decay 0;" not in optimizer and "fused" not in card
    assert "| `optim` |" not in card and "| `min_lr` |" not in card  # replaced / unused settings are not shown


def test_card_documents_the_training_data_and_the_tokenizer(quickstart):
    output, _ = quickstart
    card = (output / "model" / "README.md").read_text()
    assert "The built-in procedurally generated image-caption data of vlalign" in card and "64 64-px images" in card
    assert "not documented" not in card
    tokenizer = AutoProcessor.from_pretrained(output / "model").tokenizer
    assert len(tokenizer) < 100  # a closed vocabulary built from the synthetic captions
    assert f"The text side uses `AlbefTokenizer` (WordPiece, {len(tokenizer)}-token vocabulary)." in card
    assert "English WordPiece" not in card


def test_card_rounds_percentages_to_one_decimal(quickstart):
    output, summary = quickstart
    card = (output / "model" / "README.md").read_text()
    row = re.search(r"\| Text retrieval, TR \(image → text\) \|(.*)\|", card).group(1)
    cells = [cell.strip() for cell in row.split("|")]
    assert cells == [f"{summary['metrics'][key]:.1f}" for key in ("txt_r1", "txt_r5", "txt_r10", "txt_r_mean")]
    assert f"Mean of all recalls (R@mean): **{summary['metrics']['r_mean']:.1f}**" in card


def test_quickstart_files_have_normal_permissions_and_no_empty_folders(quickstart):
    output, _ = quickstart
    assert not (output / "checkpoints").exists()
    assert_normal_files(output)


def test_converted_folder_has_normal_permissions(tmp_path):
    original = ALBEF_FIXTURES / "original"
    output = tmp_path / "converted"
    umask = os.umask(0o022)
    try:
        run_cli("convert", "--method", "albef", "--checkpoint", str(original / "checkpoint.pth"), "--config",
                str(original / "Pretrain.yaml"), "--config", str(original / "config_bert.json"), "--output",
                str(output))  # fmt: skip
    finally:
        os.umask(umask)
    assert_normal_files(output)


def test_descriptions_come_from_the_objects():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))]
    fused = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}], fused=True)
    assert describe_optimizer(fused) == (
        "torch.optim.adamw.AdamW (fused); 2 parameter groups: 3 parameters, weight decay 0.01; 2 parameters, "
        "weight decay 0"
    )
    assert describe_optimizer(torch.optim.SGD(params, lr=0.1)).startswith("torch.optim.sgd.SGD; 1 parameter group: ")
    two_rates = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:], "lr": 1e-4}], lr=2e-3)
    assert describe_optimizer(two_rates).endswith(
        "3 parameters, weight decay 0.01, learning rate 0.002; 2 parameters, weight decay 0.01, learning rate 0.0001"
    )
    assert describe_tokenizer(None) == "the tokenizer saved with the model"
