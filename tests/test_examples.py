"""Smoke runs of the example scripts, for every registered method, as a user runs them: `python examples/x.py ...`
in a fresh interpreter on the built-in synthetic data (tiny model, a few steps, CPU, nothing downloaded)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers import AutoModel

from vlalign.methods import get_method, method_names, method_of

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RECALLS = [f"{side}_r{k}" for side in ("txt", "img") for k in (1, 5, 10)] + ["txt_r_mean", "img_r_mean", "r_mean"]
#: the smallest synthetic setting every script accepts: 16 training images, 8 per eval split, batches of 8
SMALL = ["--use_cpu", "--report_to", "none", "--per_device_train_batch_size", "8", "--num_train", "16"]


def run_example(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, env=env, timeout=300
    )
    if result.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through the module
    spec.loader.exec_module(module)
    return module


def assert_recalls(metrics: dict, prefix: str = "") -> None:
    for key in RECALLS:
        assert 0.0 <= metrics[prefix + key] <= 100.0, (prefix + key, metrics[prefix + key])


def assert_loads(folder: Path, method: str) -> None:
    model = AutoModel.from_pretrained(folder)
    assert method_of(model).name == method
    assert type(model).__name__.endswith("Model")


@pytest.fixture(scope="module", params=method_names())
def pretrained(request, tmp_path_factory) -> tuple[str, Path]:
    """`examples/pretrain.py --tiny` for 2 steps, evaluated on 8 synthetic test images."""
    method = request.param
    out = tmp_path_factory.mktemp(f"pretrain_{method}")
    run_example(
        "pretrain.py", "--method", method, "--tiny", "--output_dir", str(out), *SMALL,
        "--max_steps", "2", "--num_test", "8", "--save_strategy", "no",
    )  # fmt: skip
    return method, out


def test_pretrain(pretrained):
    method, out = pretrained
    metrics = json.loads((out / "eval_results.json").read_text())
    assert_recalls(metrics, "eval_")
    assert metrics["eval_num_images"] == 8
    assert json.loads((out / "train_results.json").read_text())["train_loss"] > 0
    assert_loads(out, method)
    # methods with masked image modelling save the fitted built-in image tokenizer with the run
    pretrain = load_script("pretrain")
    assert (out / "image_tokenizer").is_dir() == pretrain.has_image_tokenizer(get_method(method))


def test_evaluate_retrieval(pretrained, tmp_path):
    method, folder = pretrained
    output = tmp_path / "retrieval.json"
    run_example(
        "evaluate_retrieval.py", "--model_name_or_path", str(folder), "--num_test", "8", "--k_test", "4",
        "--use_cpu", "--output_file", str(output),
    )  # fmt: skip
    result = json.loads(output.read_text())
    assert result["method"] == method
    assert_recalls(result["metrics"])
    assert result["metrics"]["num_images"] == 8
    assert (result["metrics"]["num_itm_pairs"] > 0) == get_method(method).supports_itm  # re-rank only with ITM


def test_finetune_retrieval(pretrained, tmp_path):
    method, folder = pretrained
    out = tmp_path / "finetune"
    run_example(
        "finetune_retrieval.py", "--method", method, "--model_name_or_path", str(folder), "--output_dir", str(out),
        *SMALL, "--num_validation", "8", "--num_test", "8", "--max_steps", "2", "--learning_rate", "1e-4",
        "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
    )  # fmt: skip
    metrics = json.loads((out / "eval_results.json").read_text())
    for split in ("val", "test"):
        assert_recalls(metrics, f"eval_{split}_")
    assert_loads(out, method)


@pytest.mark.parametrize("method", method_names())
def test_official_defaults_per_method(method, monkeypatch, tmp_path):
    """`--method` selects that method's official settings as defaults; flags still override them."""
    pretrain = load_script("pretrain")
    assert set(pretrain.PRETRAIN_DEFAULTS) == set(method_names()) == set(pretrain.TRAIN_TRANSFORMS)
    argv = ["pretrain.py", "--method", method, "--output_dir", str(tmp_path), "--use_cpu", "--report_to", "none"]
    monkeypatch.setattr(sys, "argv", argv)
    script_args, training_args = pretrain.parse_args()
    assert script_args.method == method
    for name, value in pretrain.PRETRAIN_DEFAULTS[method].items():
        args = script_args if hasattr(script_args, name) else training_args
        assert getattr(args, name) == value, name
    if method == "fdt":  # spec §4.1: AdamW (0.9, 0.98), eps 1e-8, wd 0.1, 128/GPU, 32 epochs, 1e-4 -> 1e-3 in 2500
        assert (training_args.adam_beta1, training_args.adam_beta2, training_args.adam_epsilon) == (0.9, 0.98, 1e-8)
        assert (training_args.weight_decay, training_args.per_device_train_batch_size) == (0.1, 128)
        assert (training_args.num_train_epochs, training_args.warmup_steps) == (32, 2500)
        assert (training_args.warmup_lr, training_args.learning_rate, training_args.min_lr) == (1e-4, 1e-3, 0.0)
        assert script_args.fdt_lr_schedule and not training_args.albef_lr_schedule
    monkeypatch.setattr(sys, "argv", [*argv, "--learning_rate", "3e-4"])
    assert pretrain.parse_args()[1].learning_rate == 3e-4

    finetune = load_script("finetune_retrieval")
    assert set(finetune.RETRIEVAL_DEFAULTS) == set(method_names()) == set(finetune.TRAIN_TRANSFORMS)


def test_config_overrides_are_applied_and_checked():
    """`--config_overrides 'name=value,...'` (both training scripts) changes config fields with their types, and the
    rebuilt config runs its own checks again: a bad choice, an unknown name or an inconsistent pair is refused."""
    method = get_method("codis")
    for script in ("pretrain", "finetune_retrieval"):
        apply = load_script(script).apply_config_overrides  # the scripts use vlalign.training.script_helpers
        assert apply(method.config_class(), None).to_dict() == method.config_class().to_dict()
        config = apply(
            method.config_class(), "code_loss_type=assignment_contrast,ot_loss_weight=0,sinkhorn_joint=true"
        )
        assert type(config) is method.config_class
        assert (config.code_loss_type, config.ot_loss_weight, config.sinkhorn_joint) == (
            "assignment_contrast",
            0,
            True,
        )
        for bad in ("code_loss_type=kmeans", "no_such_field=1", "sinkhorn_use_queue=true,sinkhorn_queue_rows=0"):
            with pytest.raises((ValueError, TypeError, StrictDataclassFieldValidationError)):
                apply(method.config_class(), bad)
        wants_teacher_view = load_script(script).wants_teacher_view
        teacher = apply(method.config_class(), "teacher_image_view=augmented")
        assert wants_teacher_view(teacher, augment=True) and not wants_teacher_view(config, augment=False)
        with pytest.raises(ValueError, match="--augment true"):
            wants_teacher_view(teacher, augment=False)


@pytest.mark.parametrize("pretrained", ["codis"], indirect=True)
def test_finetune_codis_with_switched_choices(pretrained, tmp_path):
    """CODIS open choices switched from the command line reach the loaded model and the saved folder; TCL's teacher
    view gets its second augmented image from the collator."""
    method, folder = pretrained
    out = tmp_path / "finetune"
    run_example(
        "finetune_retrieval.py", "--method", method, "--model_name_or_path", str(folder), "--output_dir", str(out),
        *SMALL, "--num_validation", "8", "--num_test", "0", "--max_steps", "1", "--learning_rate", "1e-4",
        "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
        "--config_overrides", "finetune_objective=albef,teacher_image_view=augmented", "--augment", "true",
    )  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert (config["finetune_objective"], config["teacher_image_view"]) == ("albef", "augmented")
    assert_loads(out, method)


@pytest.mark.parametrize("pretrained", ["simla"], indirect=True)
def test_pretrain_simla_with_dalle_image_tokenizer(pretrained, tmp_path):
    """`--image_tokenizer DIR` (a converted DALL-E dVAE folder, here a tiny random `FlavaImageCodebook` whose 64-px
    inputs give the tiny ViT's 8 × 8 patch grid) supplies SIMLA's MIM targets, read from the augmented tokenizer view;
    the new model predicts its codes. Methods without MIM refuse the flag; the built-in tokenizer saved by a run is
    what a resumed run reloads."""
    from transformers import FlavaImageCodebook, FlavaImageCodebookConfig

    dvae = tmp_path / "dvae"
    FlavaImageCodebook(FlavaImageCodebookConfig(hidden_size=8, num_blocks_per_group=1, vocab_size=16)).save_pretrained(
        dvae
    )
    out = tmp_path / "pretrain"
    run_example(
        "pretrain.py", "--method", "simla", "--tiny", "--output_dir", str(out), *SMALL, "--max_steps", "2",
        "--num_test", "0", "--save_strategy", "no", "--image_tokenizer", str(dvae), "--augment", "true",
        "--logging_steps", "1",
    )  # fmt: skip
    assert json.loads((out / "config.json").read_text())["mim_vocab_size"] == 16
    logged = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any(row.get("loss_mim", 0) > 0 for row in logged), logged
    assert not (out / "image_tokenizer").exists()  # the dVAE is an input of the run, not saved with it

    with pytest.raises(AssertionError, match="--image_tokenizer is for methods with masked image modelling"):
        run_example(
            "pretrain.py", "--method", "albef", "--tiny", "--output_dir", str(tmp_path / "albef"), *SMALL,
            "--max_steps", "1", "--num_test", "0", "--image_tokenizer", str(dvae),
        )  # fmt: skip

    pretrain = load_script("pretrain")
    _, folder = pretrained
    saved = pretrain.saved_image_tokenizer([None, str(tmp_path), str(folder)])
    assert isinstance(saved, pretrain.PatchCodebookImageTokenizer)
    fitted = pretrain.PatchCodebookImageTokenizer.from_pretrained(folder / "image_tokenizer")
    assert (saved.grid, saved.vocab_size) == (8, json.loads((folder / "config.json").read_text())["mim_vocab_size"])
    assert saved.codebook.equal(fitted.codebook) and saved.codebook.abs().sum() > 0
