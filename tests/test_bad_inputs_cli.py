"""Bad inputs at the command line, in conversion, in saved folders and in training (docs/bad_inputs.md, "CLI,
conversion, checkpoints and training"): each gives one clear line naming the problem and the fix, quickly, never a
traceback from yaml/torch/tokenizers/huggingface_hub and never a silently wrong result."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ALBEF_FIXTURES

from vlalign.cli import main
from vlalign.convert.albef import load_tokenizer
from vlalign.data.collator import AlignmentCollator
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.methods import get_method
from vlalign.models import AlbefTokenizer
from vlalign.recipes import dataset_captions
from vlalign.sources import SourceError
from vlalign.training.trainer import AlignmentTrainer, AlignmentTrainingArguments

ORIGINAL = ALBEF_FIXTURES / "original"
IMAGE_SIZE = 32


def run(*args: str, capsys) -> tuple[int, str]:
    """`vlalign ARGS` in this process: (exit code, stderr). argparse errors exit with 2."""
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def assert_one_line(code: int, stderr: str, expected_code: int, *phrases: str) -> None:
    lines = stderr.strip().splitlines()
    assert code == expected_code, stderr
    assert "Traceback" not in stderr and "error:" in lines[-1], stderr
    for phrase in phrases:
        assert phrase in lines[-1], (phrase, stderr)


def run_offline_cli(*args: str, tmp_path: Path, offline: bool) -> tuple[subprocess.CompletedProcess, float]:
    """`vlalign ARGS` in a fresh process with an empty Hub cache and the Hub unreachable: `HF_HUB_OFFLINE=1`, or an
    endpoint that refuses connections (what a machine without network sees). Returns the result and its seconds."""
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "OMP_NUM_THREADS": "1",
    }
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "vlalign", *args], capture_output=True, text=True, timeout=300, env=env, check=False
    )
    return result, time.perf_counter() - start


def convert_args(output: Path, *extra: str) -> list[str]:
    return [
        "convert", "--method", "albef", "--checkpoint", str(ORIGINAL / "checkpoint.pth"), "--config",
        str(ORIGINAL / "Pretrain.yaml"), "--config", str(ORIGINAL / "config_bert.json"), "--output", str(output),
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def saved_folders(tmp_path_factory) -> dict[str, Path]:
    """A micro ALBEF saved with its processor, and broken copies of it."""
    method = get_method("albef")
    dataset = make_synthetic_dataset(num_train=0, num_validation=0, num_test=4, seed=0)
    processor = method.build_processor(method.build_tokenizer(dataset_captions(dataset)), IMAGE_SIZE)
    torch.manual_seed(0)
    model = method.model_class(method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides))
    root = tmp_path_factory.mktemp("folders")
    good = root / "good"
    model.save_pretrained(good)
    processor.save_pretrained(good)
    folders = {"good": good}
    for name in ("truncated", "no_vocab", "clip", "unknown"):
        folders[name] = root / name
        shutil.copytree(good, folders[name])
    weights = folders["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (folders["no_vocab"] / "tokenizer.json").unlink()
    for name, model_type in (("clip", "clip"), ("unknown", "no-such-model")):
        config = folders[name] / "config.json"
        config.write_text(config.read_text().replace('"model_type": "albef"', f'"model_type": "{model_type}"'))
    return folders


# ------------------------------------------------------------------ argument validation (argparse, exit code 2)
@pytest.mark.parametrize(
    "args",
    [
        ["quickstart", "--max-steps", "-5"],
        ["quickstart", "--max-steps", "0"],
        ["quickstart", "--num-threads", "0"],
        ["evaluate", "--model", "m", "--batch-size", "0"],
        ["evaluate", "--model", "m", "--k-test", "-1"],
        ["evaluate", "--model", "m", "--synthetic-size", "0"],
        ["retrieve", "--model", "m", "--images", "i", "--query", "q", "--top-k", "0"],
        ["index", "--model", "m", "--image-folder", "i", "--output", "o", "--batch-size", "-3"],
        ["convert", "--method", "albef", "--checkpoint", "c", "--config", "c", "--output", "o", "--image-size", "0"],
    ],
)
def test_counts_must_be_positive_integers(args, capsys):
    code, stderr = run(*args, capsys=capsys)
    assert_one_line(code, stderr, 2, "must be a positive integer")


def test_image_size_must_be_a_multiple_of_the_patch_size(tmp_path, capsys):
    code, stderr = run(*convert_args(tmp_path / "out", "--image-size", "250"), capsys=capsys)
    assert_one_line(code, stderr, 1, "image_size=250 is not a multiple of patch_size=16", "Use 240 or 256")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ conversion
def test_convert_refuses_broken_yaml_with_the_file_named(tmp_path, capsys):
    broken = tmp_path / "Pretrain.yaml"
    broken.write_text("image_res: 32\nbert_config: [unclosed\n")
    args = convert_args(tmp_path / "out")
    args[args.index(str(ORIGINAL / "Pretrain.yaml"))] = str(broken)
    code, stderr = run(*args, capsys=capsys)
    assert_one_line(code, stderr, 1, f"Config file {broken} cannot be parsed", "line")


def test_outputs_that_are_existing_files_are_refused(tmp_path, saved_folders, capsys):
    existing = tmp_path / "a_file"
    existing.write_text("keep me")
    for args, flag in (
        (convert_args(existing), "--output"),
        (["quickstart", "--output-dir", str(existing), "--max-steps", "1"], "--output-dir"),
        (
            ["index", "--model", str(saved_folders["good"]), "--image-folder", ".", "--output", str(existing)],
            "--output",
        ),
        (["evaluate", "--model", str(saved_folders["good"]), "--output", str(existing / "metrics.json")], "--output"),
    ):
        code, stderr = run(*args, capsys=capsys)
        assert_one_line(code, stderr, 1, flag, "is a file" if "evaluate" in args else "is an existing file")
    assert existing.read_text() == "keep me"


def test_convert_tokenizer_from_an_unreachable_hub_fails_fast(tmp_path):
    for offline in (True, False):
        result, seconds = run_offline_cli(
            *convert_args(tmp_path / "out", "--tokenizer", "bert-base-uncased"), tmp_path=tmp_path, offline=offline
        )
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "--tokenizer bert-base-uncased" in result.stderr and "pass the local folder" in result.stderr
        assert seconds < 180, seconds  # the interpreter's imports included (up to a minute under load); before: 245 s
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("offline", [True, False])
def test_hub_ids_resolve_in_seconds_without_network(offline, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.model_info.__self__, "endpoint", "http://127.0.0.1:9")  # refuses connections
    start = time.perf_counter()
    with pytest.raises(SourceError, match="--tokenizer bert-base-uncased: not a local folder"):
        load_tokenizer("bert-base-uncased", [], AlbefTokenizer)
    assert time.perf_counter() - start < 10


def test_convert_refuses_tokenizers_without_a_vocabulary(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        SourceError, match=r"--tokenizer .*empty holds no vocabulary file \(vocab.txt or tokenizer.json"
    ):
        load_tokenizer(empty, [], AlbefTokenizer)
    specials_only = tmp_path / "specials_only"
    AlbefTokenizer(vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}).save_pretrained(
        specials_only
    )
    with pytest.raises(SourceError, match=r"has no vocabulary \(only its 5 special tokens\)"):
        load_tokenizer(specials_only, [], AlbefTokenizer)
    assert len(load_tokenizer(ORIGINAL, [], AlbefTokenizer)) > 5  # the fixture's vocab.txt loads


# ------------------------------------------------------------------ saved folders given to --model
@pytest.mark.parametrize(
    ("folder", "phrases"),
    [
        ("truncated", ["model.safetensors is truncated or corrupt", "download or copy it again"]),
        ("no_vocab", ["has no vocabulary (only its 5 special tokens)", "vocab.txt / tokenizer.json"]),
        ("clip", ["holds a 'clip' model, not a vlalign one (albef, codis, fdt, simla)"]),
        ("unknown", ["holds a 'no-such-model' model, not a vlalign one"]),
        ("missing", ["--model", "is not a folder"]),
    ],
)
def test_broken_model_folders_are_named(folder, phrases, saved_folders, tmp_path, capsys):
    path = saved_folders.get(folder, tmp_path / "missing")
    code, stderr = run("evaluate", "--model", str(path), "--synthetic-size", "4", capsys=capsys)
    assert_one_line(code, stderr, 1, *phrases)


def test_model_hub_id_with_no_network_fails_fast(tmp_path):
    for offline in (True, False):
        result, seconds = run_offline_cli(
            "evaluate", "--model", "someone/albef-coco", tmp_path=tmp_path, offline=offline
        )
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "--model someone/albef-coco: not a local folder" in result.stderr
        assert ("HF_HUB_OFFLINE is set" if offline else "the Hub is unreachable") in result.stderr
        assert seconds < 180, seconds


def test_empty_evaluation_dataset_is_refused(saved_folders, tmp_path, capsys):
    empty = tmp_path / "empty_dataset"
    make_synthetic_dataset(num_train=0, num_validation=0, num_test=1, seed=0)["test"].select([]).save_to_disk(empty)
    code, stderr = run("evaluate", "--model", str(saved_folders["good"]), "--dataset-dir", str(empty), capsys=capsys)
    assert_one_line(code, stderr, 1, f"--dataset-dir {empty} cannot be read", "an empty dataset")


def test_query_with_a_lone_surrogate_is_refused(saved_folders, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    code, stderr = run(
        "retrieve", "--model", str(saved_folders["good"]), "--images", str(images), "--query", "a red \udcff circle",
        capsys=capsys,
    )  # fmt: skip
    assert_one_line(code, stderr, 1, "--query holds characters that are not valid UTF-8", "'\\udcff' at position 6")


# ------------------------------------------------------------------ training
def tiny_trainer(tmp_path: Path, **args) -> AlignmentTrainer:
    method = get_method("albef")
    dataset = make_synthetic_dataset(num_train=16, num_validation=0, num_test=0, image_size=IMAGE_SIZE, seed=0)
    processor = method.build_processor(method.build_tokenizer(dataset_captions(dataset)), IMAGE_SIZE)
    torch.manual_seed(0)
    model = method.pretraining_class(method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides))
    collator = AlignmentCollator(
        processor, preset="pretrain", text_column="captions",
        **method.pretraining_collator_kwargs(model.config, processor, dataset["train"]),
    )  # fmt: skip
    training_args = AlignmentTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True, **args,
    )  # fmt: skip
    return AlignmentTrainer(model=model, args=training_args, train_dataset=dataset["train"], data_collator=collator)


def nan_loss_at_first_step(model) -> None:
    """Make the model's first training forward return a NaN total loss (its named losses stay finite)."""
    forward, calls = model.forward, []

    def poisoned(**inputs):
        outputs = forward(**inputs)
        calls.append(None)
        if len(calls) == 1:
            outputs["loss"] = outputs.loss * float("nan")
        return outputs

    model.forward = poisoned


def test_nonfinite_loss_stops_training_with_the_step_and_each_loss(tmp_path):
    trainer = tiny_trainer(tmp_path)
    with torch.no_grad():
        trainer.model.albef.text_proj.weight[0, 0] = float("nan")  # the model itself refuses: loss_itc is NaN
    with pytest.raises(
        FloatingPointError, match=r"Non-finite training loss at step 1: loss_itc is not finite \(nan\)"
    ):
        trainer.train()
    trainer = tiny_trainer(tmp_path)
    nan_loss_at_first_step(trainer.model)
    with pytest.raises(
        FloatingPointError, match=r"at step 1: loss=nan, loss_itc=[0-9.]+, loss_itm=[0-9.]+, loss_mlm="
    ):
        trainer.train()


def test_nonfinite_loss_can_skip_the_update_and_count_it(tmp_path):
    trainer = tiny_trainer(tmp_path, on_nonfinite_loss="skip")
    nan_loss_at_first_step(trainer.model)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    with pytest.warns(UserWarning, match="Skipping the update of step 1: non-finite training loss"):
        trainer.train()
    assert trainer.state.global_step == 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if n in before)  # step 2 ran
    logged = [entry["nonfinite_skipped"] for entry in trainer.state.log_history if "nonfinite_skipped" in entry]
    assert logged == [1, 1]  # the running count, at every logging step
    with pytest.raises(ValueError, match="on_nonfinite_loss must be 'raise' or 'skip'"):
        AlignmentTrainingArguments(output_dir=str(tmp_path), on_nonfinite_loss="ignore")
