"""`examples/finetune_vqa.py` as a user runs it, on the built-in synthetic VQA set: a tiny run from a pretraining folder
to the saved, evaluated VQA model (result file, eval_results.json beside the majority baseline, card); a resumed run
equal to an uninterrupted one; two processes equal to one with the same global batch; bad arguments refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_examples import EXAMPLES, RECIPE_SPECS, load_script, refusal, run_example
from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor

from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.data.synthetic_vqa import make_synthetic_vqa_dataset
from vlalign.evaluation.vqa import majority_answer_baseline
from vlalign.methods import get_method
from vlalign.recipes import dataset_captions

#: the smallest synthetic setting: 8 training images (24 questions), 4 test images, batches of 8 questions
SMALL = ["--use_cpu", "--report_to", "none", "--num_train", "8", "--num_test", "4", "--learning_rate", "1e-4"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def pretrained_folder(tmp_path_factory) -> Path:
    """A saved tiny ALBEF pretraining model (random weights) whose vocabulary is the synthetic captions' only."""
    method = get_method("albef")
    tokenizer = method.build_tokenizer(dataset_captions(make_synthetic_dataset(8, 0, 0, image_size=64, seed=0)))
    folder = tmp_path_factory.mktemp("albef_pretrained")
    config = method.tiny_config(tokenizer, 64, **method.test_overrides)
    method.pretraining_class(config).save_pretrained(folder)
    method.build_processor(tokenizer, 64).save_pretrained(folder)
    return folder


def test_finetune_vqa_from_a_pretraining_folder(pretrained_folder, tmp_path):
    out = tmp_path / "vqa"
    run_example(
        "finetune_vqa.py", "--model_name_or_path", str(pretrained_folder), "--output_dir", str(out), *SMALL,
        "--max_steps", "2", "--per_device_train_batch_size", "8", "--k_test", "4", "--save_strategy", "no",
    )  # fmt: skip
    splits = make_synthetic_vqa_dataset(num_train=8, num_validation=0, num_test=4, image_size=64)
    test = splits["test"]
    results = json.loads((out / "eval_results.json").read_text())
    vqa = results["vqa"]
    assert vqa["num_questions"] == len(test) and 0.0 <= vqa["vqa_accuracy"] <= 100.0
    assert set(vqa["vqa_accuracy_per_type"]) == set(test["question_type"])
    baseline, expected = vqa["majority_baseline"], majority_answer_baseline(splits["train"], test)
    assert baseline["per_type_answers"] == expected["per_type_answers"]
    for key in ("vqa_accuracy", "per_type_vqa_accuracy"):
        assert baseline[key] == pytest.approx(expected[key])
    served = json.loads((out / "vqa_result.json").read_text())  # the evaluation server's format
    assert [row["question_id"] for row in served] == test["question_id"]
    assert all(set(row) == {"question_id", "answer"} and isinstance(row["answer"], str) for row in served)
    assert "vqa_accuracy" in (out / "README.md").read_text()
    model = AutoModelForVisualQuestionAnswering.from_pretrained(out)
    assert type(model).__name__ == "AlbefForQuestionAnswering"
    tokenizer = AutoProcessor.from_pretrained(out).tokenizer
    assert len(tokenizer) > len(AutoProcessor.from_pretrained(pretrained_folder).tokenizer)  # learned "how", "0", ...
    assert tokenizer.unk_token_id not in tokenizer("how many circles are there? 0")["input_ids"]
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_resumed_run_equals_the_uninterrupted_one(tmp_path):
    """A run resumed from its step-2 checkpoint ends with the uninterrupted run's weights, bit for bit (momentum
    copies included: the EMA and the α warm-up continue from the saved step)."""
    run = [*SMALL, "--method", "simla", "--max_steps", "4", "--per_device_train_batch_size", "4", "--save_steps", "2",
           "--save_strategy", "steps", "--num_test", "0"]  # fmt: skip
    straight = tmp_path / "straight"
    run_example("finetune_vqa.py", "--output_dir", str(straight), *run)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    run_example("finetune_vqa.py", "--output_dir", str(resumed), *run, "--resume_from_checkpoint", "true")
    expected, got = weights(straight / "checkpoint-4"), weights(resumed / "checkpoint-4")
    assert any("text_decoder_m." in name for name in expected)
    assert expected.keys() == got.keys()
    assert not [name for name in expected if not torch.equal(expected[name], got[name])]


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    """2 gloo processes × 4 questions train the same model as 1 process × 8: the loss divides by the questions of
    each process and DDP averages, so the gradients, the EMA and the α warm-up agree."""
    run = [*SMALL, "--max_steps", "2", "--save_strategy", "no", "--num_test", "0"]
    outputs = {}
    for processes, batch in ((1, 8), (2, 4)):
        out = outputs[processes] = tmp_path / f"p{processes}"
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command = [*(launcher if processes > 1 else [sys.executable]), str(EXAMPLES / "finetune_vqa.py")]
        args = ["--output_dir", str(out), *run, "--per_device_train_batch_size", str(batch)]
        result = subprocess.run([*command, *args], capture_output=True, text=True, env=ENV, timeout=300)
        assert result.returncode == 0, result.stderr[-4000:]
    single, double = weights(outputs[1]), weights(outputs[2])
    assert single.keys() == double.keys()
    for name in single:
        torch.testing.assert_close(double[name], single[name], atol=1e-5, rtol=0, msg=name)


def test_bad_arguments_are_refused_before_any_model_is_built(tmp_path, monkeypatch, capsys):
    out = ["--output_dir", str(tmp_path / "out"), "--use_cpu"]
    assert refusal(monkeypatch, capsys, "finetune_vqa", *out, "--method", "fdt") == (
        "--method fdt: this script serves albef, codis, simla."
    )
    assert refusal(monkeypatch, capsys, "finetune_vqa", *out, "--train_json", "train.json") == (
        "real data needs --model_name_or_path (a converted or pretrained folder of the method)"
    )
    line = refusal(monkeypatch, capsys, "finetune_vqa", *out, "--train_json", "t.json", "--model_name_or_path", "m")
    assert line == "real data needs --answer_list (the official answer_list.json) to rank answers"
    assert refusal(monkeypatch, capsys, "finetune_vqa", *out, "--warmup_stages", "0") == (
        "--warmup_stages 0: must be 1 or more."
    )
    assert refusal(monkeypatch, capsys, "finetune_vqa", *out, "--max_steps", "0").startswith(
        "--max_steps 0: pass the number of optimizer steps"
    )


@pytest.mark.parametrize("method", ["albef", "simla", "codis"])
def test_defaults_and_recipe_are_the_official_vqa_yaml(method):
    """The script's defaults and examples/configs/<method>/finetune_vqa.yaml are ALBEF's configs/VQA.yaml (SIMLA's
    is the same; CODIS takes ALBEF's), written out independently in test_examples' RECIPE_SPECS."""
    script = load_script("finetune_vqa")
    official = {name: value for name, value in RECIPE_SPECS[method]["finetune_vqa"].items() if name != "image_size"}
    training_args = script.parse_args(["--method", method, "--output_dir", "unused"])[1]
    assert {name: getattr(training_args, name) for name in official} == official
    recipe = EXAMPLES / "configs" / method / "finetune_vqa.yaml"
    script_args, training_args = script.parse_args([str(recipe)])
    parsed = {**vars(training_args), **vars(script_args)}
    assert {name: parsed[name] for name in RECIPE_SPECS[method]["finetune_vqa"]} == RECIPE_SPECS[method][
        "finetune_vqa"
    ]
    for name, value in yaml.safe_load(recipe.read_text()).items():
        assert parsed[name] == value, name
    assert script_args.method == method and script.REAL_DATA_IMAGE_SIZE == 384
