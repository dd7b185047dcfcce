"""NLVR2 evaluation and pipeline: the accuracy against the official `NLVR.evaluate()` result of the ALBEF fixture
(`../shared/fixtures/albef/downstream/nlvr`: {'acc': '0.6667'}), the model card's model-index, the
`visual-reasoning` evaluator and pipeline, and the pipeline from a saved folder without vlalign."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from PIL import Image
from transformers import AutoProcessor, pipeline

from vlalign import AutoModelForVisualReasoning
from vlalign.data.nlvr import NLVR_LABELS, load_nlvr_json
from vlalign.evaluation.nlvr import evaluate_nlvr, nlvr_eval_results, nlvr_model_card
from vlalign.evaluation.nlvr_evaluator import VisualReasoningEvaluator
from vlalign.models.pipeline_nlvr import NLVR_ID2LABEL

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NLVR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "albef" / "downstream" / "nlvr"
DATA = NLVR / "data"
ANNOTATIONS = DATA / "nlvr_test.json"
OFFICIAL_ACC = json.loads((NLVR / "meta.json").read_text())["evaluate_result"]["acc"]  # '0.6667'


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    original, output = NLVR / "original", tmp_path_factory.mktemp("nlvr") / "albef"
    run_cli(
        "convert", "--method", "albef", "--task", "nlvr2", "--checkpoint", str(original / "checkpoint.pth"),
        "--config", str(original / "NLVR.yaml"), "--config", str(original / "config_bert.json"),
        "--tokenizer", str(original), "--output", str(output),
    )  # fmt: skip
    return output


@pytest.fixture(scope="module")
def dataset():
    return load_nlvr_json(ANNOTATIONS, DATA)


def fresh(folder):
    return AutoModelForVisualReasoning.from_pretrained(folder).train()


def test_evaluation_reproduces_the_official_accuracy(folder, dataset):
    model = fresh(folder)
    results = evaluate_nlvr(model, AutoProcessor.from_pretrained(folder), dataset, batch_size=2, show_progress=False)
    assert f"{results['accuracy']:.4f}" == OFFICIAL_ACC
    assert results["num_pairs"] == 3 and model.training  # the model's mode is restored
    assert results["labels"] == [NLVR_LABELS[i] for i in results["predictions"]]
    assert set(results["per_class_accuracy"]) == {"True", "False"}
    unlabelled = evaluate_nlvr(model, AutoProcessor.from_pretrained(folder), dataset.remove_columns("label"))
    assert unlabelled["predictions"] == results["predictions"] and "accuracy" not in unlabelled
    with pytest.raises(KeyError, match="no 'image_right' column"):
        evaluate_nlvr(model, AutoProcessor.from_pretrained(folder), dataset.remove_columns("image_right"))


def test_model_index_holds_the_accuracy_per_split():
    metrics = {"dev": {"accuracy": 0.8024}, "test-P": {"accuracy": 0.805}}
    results = nlvr_eval_results(metrics)
    assert [(r.dataset_split, r.metric_type, r.metric_value, r.task_type, r.dataset_name) for r in results] == [
        ("dev", "accuracy", 80.24, "visual-reasoning", "NLVR2"),
        ("test-P", "accuracy", 80.5, "visual-reasoning", "NLVR2"),
    ]
    card = nlvr_model_card("albef-nlvr2", "albef", metrics)
    assert card.data.to_dict()["model-index"][0]["results"][1]["metrics"][0]["value"] == 80.5
    assert "finetune_nlvr2.py" in card.text
    with pytest.raises(ValueError, match="no 'accuracy'"):
        nlvr_eval_results({"dev": {"acc": 0.5}})


def test_evaluator(folder, dataset):
    """From a folder (through the pipeline) and from (model, processor): the official accuracy in percent, with a
    bootstrap interval around it."""
    evaluator = VisualReasoningEvaluator()
    result = evaluator.compute(str(folder), dataset)
    assert result["accuracy"] == pytest.approx(100 * float(OFFICIAL_ACC), abs=0.01) and result["num_pairs"] == 3
    pair = (fresh(folder), AutoProcessor.from_pretrained(folder))
    boot = evaluator.compute(pair, dataset, strategy="bootstrap", n_resamples=200, random_state=0)
    low, high = boot["accuracy"]["confidence_interval"]
    assert boot["accuracy"]["score"] == pytest.approx(result["accuracy"]) and low <= result["accuracy"] <= high
    assert pair[0].training


def pair_inputs():
    row = json.loads(ANNOTATIONS.read_text())[0]
    return tuple(str(DATA / name) for name in row["images"]), row["sentence"]


def test_pipeline(folder):
    """`pipeline("visual-reasoning")`: the softmax of the model's logits (left image, right image), best first."""
    reason = pipeline("visual-reasoning", model=str(folder))
    images, sentence = pair_inputs()
    result = reason(images, sentence=sentence)
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(images=[Image.open(path) for path in images], text=[sentence], preset="train")
    with torch.no_grad():
        model = fresh(folder).eval()
        probabilities = model(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]).logits.softmax(-1)
    expected = sorted(zip(NLVR_ID2LABEL.values(), probabilities[0].tolist(), strict=True), key=lambda x: -x[1])
    assert [r["label"] for r in result] == [label for label, _ in expected]
    assert [r["score"] for r in result] == pytest.approx([p for _, p in expected], abs=1e-6)
    swapped = reason(images[::-1], sentence=sentence)  # the order matters: a different pair
    assert swapped != result
    batched = reason([{"images": images, "sentence": sentence}, {"images": images[::-1], "sentence": sentence}],
                     batch_size=2)  # fmt: skip
    assert [r[0]["score"] for r in batched] == pytest.approx([result[0]["score"], swapped[0]["score"]], abs=1e-6)
    with pytest.raises(ValueError, match="Pass the sentence"):
        reason(images)
    with pytest.raises(ValueError, match="Pass two images"):
        reason(images[0], sentence=sentence)


REMOTE_PIPELINE = textwrap.dedent(
    """
    import sys
    sys.modules["vlalign"] = None  # make `import vlalign` fail in this process
    import json
    from transformers import pipeline

    folder, left, right, sentence, output_file = sys.argv[1:]
    reason = pipeline("visual-reasoning", model=folder, trust_remote_code=True)
    result = reason((left, right), sentence=sentence)
    json.dump({"module": type(reason.model).__module__, "name": type(reason.model).__name__, "result": result},
              open(output_file, "w"))
    """
)


def test_pipeline_with_remote_code_without_vlalign(folder, tmp_path):
    script = tmp_path / "pipe.py"
    script.write_text(REMOTE_PIPELINE)
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"]["visual-reasoning"]["impl"] == "pipeline_nlvr.VisualReasoningPipeline"
    assert config["auto_map"]["AutoModel"] == "modeling_albef_nlvr.AlbefForVisualReasoning"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    images, sentence = pair_inputs()
    result = subprocess.run(
        [sys.executable, str(script), str(folder), *images, sentence, str(tmp_path / "out.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads((tmp_path / "out.json").read_text())
    assert remote["module"].startswith("transformers_modules.") and remote["name"] == "AlbefForVisualReasoning"
    local = pipeline("visual-reasoning", model=str(folder))(images, sentence=sentence)
    assert [r["label"] for r in remote["result"]] == [r["label"] for r in local]
    assert [r["score"] for r in remote["result"]] == pytest.approx([r["score"] for r in local], abs=1e-6)
