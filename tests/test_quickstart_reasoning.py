"""`vlalign quickstart --task ve` / `--task nlvr2` wiring on a few steps (their learning targets are measured by the
quick start itself): every artefact is written, the card and the saved results carry the measured accuracy and the
majority-class baseline, the saved folder reloads with the task's Auto class and answers through its pipeline."""

from __future__ import annotations

import ast
import json

import pytest
from huggingface_hub import ModelCard
from transformers import AutoProcessor

from vlalign import AutoModelForVisualEntailment, AutoModelForVisualReasoning
from vlalign.models import AlbefForVisualEntailment, AlbefForVisualReasoning, SimlaForVisualEntailment
from vlalign.quickstart_reasoning import ReasoningQuickstartSettings, majority_class_accuracy, run_reasoning_quickstart
from vlalign_cli import build_parser

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_quickstart_model(folder, name: str):
    """What `vlalign quickstart --method NAME` saves (a `<Method>Model` with its processor), tiny and untrained."""
    from vlalign.data.synthetic import make_synthetic_dataset
    from vlalign.methods import get_method
    from vlalign.recipes import dataset_captions

    method = get_method(name)
    tokenizer = method.build_tokenizer(dataset_captions(make_synthetic_dataset(8, 0, 0, image_size=32, seed=0)))
    method.model_class(method.tiny_config(tokenizer, 32, **method.test_overrides)).save_pretrained(folder)
    method.build_processor(tokenizer, 32).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def albef_model(tmp_path_factory):
    return tiny_quickstart_model(tmp_path_factory.mktemp("quickstart_output") / "model", "albef")


def small(task: str, folder, method: str = "albef") -> ReasoningQuickstartSettings:
    return ReasoningQuickstartSettings(
        task=task, method=method, pretrained=str(folder), num_train=8, num_test=6, batch_size=4, max_steps=2,
        warmup_steps=1,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("task", "auto_class", "model_class", "examples", "classes"),
    [
        ("ve", AutoModelForVisualEntailment, AlbefForVisualEntailment, 18, 3),
        ("nlvr2", AutoModelForVisualReasoning, AlbefForVisualReasoning, 6, 2),
    ],
)
def test_quickstart_writes_every_artefact(
    albef_model, tmp_path, capsys, task, auto_class, model_class, examples, classes
):
    summary = run_reasoning_quickstart(tmp_path, small(task, albef_model))
    printed = capsys.readouterr().out
    scored = summary["test"]
    assert summary["started_from"] == str(albef_model) and summary["pretrain_seconds"] is None
    assert scored["num_pairs"] == examples and 0.0 <= scored["accuracy"] <= 1.0
    assert 1 / classes - 1e-9 <= scored["majority_baseline"] < 1
    assert summary["train_cpu_seconds"] >= 0 and summary["steps_per_second"] > 0
    table = printed[printed.index("[5/5]") :]
    assert f"{100 * scored['accuracy']:8.1f}   majority class ({scored['majority_class']!r}" in table
    assert f"{100 * (scored['accuracy'] - scored['majority_baseline']):+.1f} points" in table
    assert printed.count(" -> '") == min(8, examples)  # the pipeline's judgements of the shown examples
    for name in (f"{task}_examples.png", f"{task}_losses.png", "summary.json"):
        assert (tmp_path / name).stat().st_size > 500, name
    model_dir = tmp_path / "model"
    [result] = ModelCard.load(model_dir / "README.md").data.eval_results
    assert result.metric_value == round(100 * scored["accuracy"], 2) and result.dataset_split == "test"
    saved = json.loads((model_dir / "eval_results.json").read_text())
    assert saved["test"] == scored and json.loads((tmp_path / "summary.json").read_text())["test"] == scored
    reloaded = auto_class.from_pretrained(model_dir)
    assert type(reloaded) is model_class and len(reloaded.config.id2label) == classes
    # the vocabulary learned the set's words ("wood", "exactly", ...): the saved tokenizer knows every one
    tokenizer = AutoProcessor.from_pretrained(model_dir).tokenizer
    assert reloaded.get_input_embeddings().num_embeddings == len(tokenizer)
    sentences = [ast.literal_eval(line.split(" -> ")[0].strip()) for line in printed.splitlines() if " -> '" in line]
    assert tokenizer.unk_token_id not in tokenizer(sentences)["input_ids"][0] + tokenizer(sentences)["input_ids"][-1]


def test_simla_entailment(tmp_path_factory, tmp_path):
    folder = tiny_quickstart_model(tmp_path_factory.mktemp("qs_simla") / "model", "simla")
    summary = run_reasoning_quickstart(tmp_path, small("ve", folder, "simla"))
    assert type(AutoModelForVisualEntailment.from_pretrained(summary["model_dir"])) is SimlaForVisualEntailment


def test_settings_and_folder_checks(albef_model, tmp_path):
    with pytest.raises(ValueError, match="holds a albef model; pass --method albef or another folder"):
        run_reasoning_quickstart(tmp_path, small("nlvr2", albef_model, "codis"))
    with pytest.raises(ValueError, match="fdt has no visual entailment model"):
        ReasoningQuickstartSettings(task="ve", method="fdt")
    with pytest.raises(ValueError, match="task must be one of"):
        ReasoningQuickstartSettings(task="vqa")
    assert ReasoningQuickstartSettings(task="nlvr2").max_steps > 0  # the method's tuned recipe
    assert majority_class_accuracy([1, 1, 0], [0, 1, 1, 1]) == (1, 0.75)
    args = build_parser().parse_args(["quickstart", "--task", "nlvr2", "--method", "simla", "--from", "x"])
    assert (args.task, args.pretrained) == ("nlvr2", "x")
