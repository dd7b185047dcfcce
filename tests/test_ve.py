"""Visual entailment beyond parity (`tests/test_ve_parity.py`): the model's training behaviour (distillation, EMA as a
training duty, label checks), saving and remote code, CODIS's conversion, the SNLI-VE JSON loader and the accuracy
evaluation against the official `VE.evaluate()` result of the ALBEF fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import pytest
import torch
from conftest import run_cli
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, pipeline

from vlalign import AutoModelForVisualEntailment
from vlalign.data.loaders import DataValidationError
from vlalign.data.ve import VE_LABELS, VeCollator, load_ve_dataset, load_ve_json
from vlalign.evaluation.ve import entailment_accuracy, evaluate_ve, ve_eval_results, ve_model_card
from vlalign.models import AlbefForVisualEntailment, CodisForVisualEntailment

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOWNSTREAM = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "albef" / "downstream"
VE = DOWNSTREAM / "ve"


def convert(method: str, output: Path, checkpoint: Path = VE / "original" / "checkpoint.pth") -> Path:
    original = VE / "original"
    run_cli(
        "convert", "--method", method, "--task", "ve", "--checkpoint", str(checkpoint),
        "--config", str(original / "VE.yaml"), "--config", str(original / "config_bert.json"),
        "--tokenizer", str(original), "--output", str(output),
    )  # fmt: skip
    return output


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return convert("albef", tmp_path_factory.mktemp("ve") / "albef")


@pytest.fixture(scope="module")
def golden():
    return load_file(VE / "inputs.safetensors")


def fresh(folder) -> AlbefForVisualEntailment:
    return AutoModelForVisualEntailment.from_pretrained(folder).train()


def batch(inputs, **extra):
    return {key: inputs[key] for key in ("pixel_values", "input_ids", "attention_mask")} | extra


def test_ema_is_a_training_duty(folder, golden):
    """An optimizer step without the duties is refused; `after_optimizer_step` takes one EMA step of every momentum
    module (head included) with `config.momentum`, the official update."""
    model = fresh(folder)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**batch(golden, labels=golden["targets"])).loss.backward()
    optimizer.step()
    with pytest.raises(RuntimeError, match="training duties did not run"):
        model(**batch(golden, labels=golden["targets"]))
    online = [p.detach().clone() for p in model.cls_head.parameters()]
    before = [p.detach().clone() for p in model.cls_head_m.parameters()]
    model.after_optimizer_step(1)
    m = model.config.momentum
    for new, old, target in zip(model.cls_head_m.parameters(), before, online, strict=True):
        torch.testing.assert_close(new, m * old + (1 - m) * target)
    assert not any(p.requires_grad for p in model.cls_head_m.parameters())
    model(**batch(golden, labels=golden["targets"]))  # the duties ran: accepted


def test_distillation_weight_and_switches(folder, golden):
    model = fresh(folder)
    with torch.no_grad():
        default = model(**batch(golden, labels=golden["targets"]))
        plain = model(**batch(golden, labels=golden["targets"], alpha=0.0))
    assert model.training_log_values() == {"alpha": 0.0}
    # α = config.alpha (0.4, constant: VE.yaml has warm_up False) when not given
    torch.testing.assert_close(default.loss, 0.6 * plain.loss + 0.4 * default.loss_distill)
    model.set_training_progress(0, 100)  # the first step of a trainer run: no warm-up ramp for VE
    with torch.no_grad():
        model(**batch(golden, labels=golden["targets"]))
    assert model.training_log_values() == {"alpha": pytest.approx(0.4)}
    undistilled = AlbefForVisualEntailment.from_pretrained(folder, distill=False)
    assert not hasattr(undistilled, "cls_head_m") and not undistilled.has_training_duties
    with torch.no_grad():
        output = undistilled(**batch(golden, labels=golden["targets"], alpha=0.4))
    assert output.logits_m is None and output.loss_distill is None
    torch.testing.assert_close(output.loss, plain.loss)


def test_labels_and_batch_are_checked(folder, golden):
    model = fresh(folder)
    with pytest.raises(ValueError, match="class indices in 0..2"):
        model(**batch(golden, labels=torch.tensor([0, 1, 3, 2])))
    with pytest.raises(ValueError, match="one class index per pair"):
        model(**batch(golden, labels=torch.zeros(4, 3)))
    with pytest.raises(ValueError, match="one image per hypothesis"):
        model(golden["pixel_values"][:2], golden["input_ids"], golden["attention_mask"])


def test_attentions_and_hidden_states(folder, golden):
    model = AutoModelForVisualEntailment.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        output = model(**batch(golden), output_attentions=True, output_hidden_states=True)
    text = model.config.text_config
    assert len(output.fusion_model_output.attentions) == text.num_hidden_layers - text.fusion_layer
    assert len(output.fusion_model_output.cross_attentions) == text.num_hidden_layers - text.fusion_layer
    assert len(output.vision_model_output.attentions) == model.config.vision_config.num_hidden_layers
    assert output.text_model_output.hidden_states is not None
    as_tuple = model(**batch(golden), return_dict=False)
    torch.testing.assert_close(as_tuple[0], output.logits)


def test_pretraining_folder_is_refused(tmp_path):
    original = VE / "original"
    run_cli(
        "convert", "--method", "albef", "--task", "pretraining",
        "--checkpoint", str(DOWNSTREAM / "pretrained" / "checkpoint.pth"),
        "--config", str(DOWNSTREAM / "pretrained" / "Pretrain.yaml"), "--config", str(original / "config_bert.json"),
        "--tokenizer", str(original), "--output", str(tmp_path / "pre"),
    )  # fmt: skip
    with pytest.raises(ValueError, match="from_pretraining"):
        AlbefForVisualEntailment.from_pretrained(tmp_path / "pre")


def test_codis_converts_the_albef_checkpoint(folder, golden, tmp_path):
    codis = AutoModelForVisualEntailment.from_pretrained(convert("codis", tmp_path / "codis")).eval()
    assert type(codis) is CodisForVisualEntailment and codis.config.model_type == "codis"
    albef = fresh(folder).eval()
    with torch.no_grad():
        assert torch.equal(codis(**batch(golden)).logits, albef(**batch(golden)).logits)


REMOTE = textwrap.dedent(
    """
    import sys
    sys.modules["vlalign"] = None  # make `import vlalign` fail in this process
    import json, torch
    from safetensors.torch import load_file
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    folder, inputs_file, output_file = sys.argv[1:]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    cls = get_class_from_dynamic_module(config.auto_map["AutoModelForVisualEntailment"], folder)
    model = cls.from_pretrained(folder).eval()
    inputs = load_file(inputs_file)
    with torch.no_grad():
        logits = model(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]).logits
    torch.save({"module": type(model).__module__, "logits": logits}, output_file)
    """
)


def test_remote_code_without_vlalign(folder, golden, tmp_path):
    script = tmp_path / "load.py"
    script.write_text(REMOTE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(VE / "inputs.safetensors"), str(tmp_path / "out.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    assert loaded["module"].startswith("transformers_modules.")
    with torch.no_grad():
        expected = fresh(folder).eval()(**batch(golden)).logits
    torch.testing.assert_close(loaded["logits"], expected, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Data and evaluation
# ---------------------------------------------------------------------------------------------------------------------


def test_loader_reads_the_official_json():
    dataset = load_ve_json(VE / "data" / "ve_test.json", VE / "data")
    rows = json.loads((VE / "data" / "ve_test.json").read_text())
    assert len(dataset) == len(rows) and list(dataset.features["label"].names) == list(VE_LABELS)
    assert dataset["sentence"] == [row["sentence"] for row in rows]
    assert dataset["label"] == load_file(VE / "inputs.safetensors")["targets"].tolist()  # the official label map
    assert dataset[0]["image"].mode == "RGB"


def test_evaluation_reproduces_the_official_accuracy(folder):
    """`VE.evaluate()` on the fixture's test file: {'acc': '0.2500'}."""
    dataset = load_ve_json(VE / "data" / "ve_test.json", VE / "data")
    model = fresh(folder)
    results = evaluate_ve(model, AutoProcessor.from_pretrained(folder), dataset, batch_size=3, show_progress=False)
    meta = json.loads((VE / "meta.json").read_text())
    assert f"{results['accuracy']:.4f}" == meta["evaluate_result"]["acc"]
    assert results["num_pairs"] == 4 and model.training  # the model's mode is restored
    assert results["labels"] == [model.config.id2label[i] for i in results["predictions"]]
    assert set(results["per_class_accuracy"]) == {"contradiction", "neutral", "entailment"}


def test_entailment_accuracy():
    assert entailment_accuracy([2, 1, 0, 1], [2, 1, 1, 0]) == 0.5
    with pytest.raises(ValueError, match="one per pair"):
        entailment_accuracy([1, 2], [1])


def write(tmp_path: Path, entries) -> Path:
    file = tmp_path / "ve.json"
    file.write_text(json.dumps(entries))
    return file


def test_bad_rows_raise_or_are_counted(tmp_path):
    image = (VE / "data" / "img_0.jpg").read_bytes()
    (tmp_path / "a.jpg").write_bytes(image)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    entries = [
        {"image": "a", "sentence": "A dog runs.", "label": "entailment"},
        {"image": "a", "sentence": "   ", "label": "neutral"},
        {"image": "a", "sentence": "A cat sleeps.", "label": "-"},
        {"image": "broken", "sentence": "A bird sings.", "label": "contradiction"},
        {"image": "missing", "sentence": "A car.", "label": "neutral"},
    ]
    file = write(tmp_path, entries)
    with pytest.raises(DataValidationError, match="4 of 5 samples") as raised:
        load_ve_json(file, tmp_path)
    assert raised.value.report.num_skipped == 4
    with pytest.warns(UserWarning, match="skipped 4 of 5"):
        dataset, report = load_ve_json(file, tmp_path, on_error="skip", return_report=True)
    assert len(dataset) == 1 and dataset[0]["label"] == VE_LABELS.index("entailment")
    assert [reason for _, reason in report.bad_rows] == [
        "blank hypothesis",
        "label '-' is none of contradiction, neutral, entailment",
    ]
    assert len(report.bad_images) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"image": "a"}, "expected a JSON list"),
        (["a"], "entry 0: expected an object"),
        ([{"image": "a", "sentence": "x"}], "'label' must be a string, it is missing"),
        ([{"image": 3, "sentence": "x", "label": "neutral"}], "'image' must be a string, it is int 3"),
    ],
)
def test_malformed_files_name_the_entry_and_the_format(tmp_path, content, message):
    with pytest.raises(ValueError, match=message) as raised:
        load_ve_json(write(tmp_path, content), tmp_path)
    assert "official SNLI-VE JSON" in str(raised.value)


def test_collator_gives_the_official_training_inputs(folder):
    """The fixture's pairs collate into the official tokens (pre_caption, padded to the longest) and label indices."""
    dataset = load_ve_json(VE / "data" / "ve_test.json", VE / "data")
    collator = VeCollator(AutoProcessor.from_pretrained(folder))
    collated = collator([dataset[i] for i in range(len(dataset))])
    inputs = load_file(VE / "inputs.safetensors")
    assert torch.equal(collated["input_ids"], inputs["input_ids"])
    assert torch.equal(collated["attention_mask"], inputs["attention_mask"])
    assert torch.equal(collated["labels"], inputs["targets"])
    assert collated["pixel_values"].shape == (4, 3, 32, 32)
    named = collator([{**dataset[0], "label": "neutral"}])
    assert named["labels"].tolist() == [1]
    with pytest.raises(ValueError, match="row 0: label .maybe. is not a class"):
        collator([{**dataset[0], "label": "maybe"}])
    with pytest.raises(KeyError, match="remove_unused_columns=False"):
        collator([{"image": dataset[0]["image"], "sentence": "a dog"}])


def hub_layout(labels, names=("entailment", "neutral", "contradiction")) -> datasets.Dataset:
    """The fixture's pairs as a Hub dataset would hold them: an Image column, `hypothesis`, and a ClassLabel in
    another order than the official one."""
    rows = json.loads((VE / "data" / "ve_test.json").read_text())
    features = datasets.Features(
        {"image": datasets.Image(), "hypothesis": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
    )
    return datasets.Dataset.from_dict(
        {
            "image": [str(VE / "data" / f"{row['image']}.jpg") for row in rows],
            "hypothesis": [row["sentence"] for row in rows],
            "label": labels if labels is not None else [names.index(row["label"]) for row in rows],
        },
        features=features,
    )


def test_hub_layout_maps_labels_by_name():
    adapted = load_ve_dataset(hub_layout(None))
    assert adapted["label"] == load_file(VE / "inputs.safetensors")["targets"].tolist()  # the official indices
    assert list(adapted.features["label"].names) == list(VE_LABELS)
    assert adapted["sentence"] == hub_layout(None)["hypothesis"] and adapted[0]["image"].mode == "RGB"
    as_names = hub_layout(None).cast_column("label", datasets.Value("string"))
    as_names = as_names.map(lambda row, i: {"label": ["entailment", "neutral", "contradiction", "entailment"][i]},
                            with_indices=True)  # fmt: skip
    assert load_ve_dataset(as_names)["label"] == adapted["label"]
    with pytest.warns(UserWarning, match="skipped 1 of 4"):
        dataset, report = load_ve_dataset(hub_layout([0, -1, 2, 0]), on_error="skip", return_report=True)
    assert len(dataset) == 3 and report.bad_rows[0][1] == "label '-1' is none of contradiction, neutral, entailment"
    with pytest.raises(DataValidationError, match="1 of 4 samples"):
        load_ve_dataset(hub_layout([0, -1, 2, 0]))
    unnamed = hub_layout(None).cast_column("label", datasets.Value("int64"))
    with pytest.raises(ValueError, match="pass label_names"):
        load_ve_dataset(unnamed)
    assert (
        load_ve_dataset(unnamed, label_names=["entailment", "neutral", "contradiction"])["label"] == adapted["label"]
    )
    with pytest.raises(ValueError, match="sentence_column='premise' is not a column"):
        load_ve_dataset(hub_layout(None), sentence_column="premise")


def test_model_index_holds_the_accuracy_per_split():
    metrics = {"val": {"accuracy": 0.8014}, "test": {"accuracy": 0.803}}
    results = ve_eval_results(metrics)
    assert [(r.dataset_split, r.metric_type, r.metric_value, r.task_type) for r in results] == [
        ("val", "accuracy", 80.14, "visual-entailment"),
        ("test", "accuracy", 80.3, "visual-entailment"),
    ]
    card = ve_model_card("albef-ve", "albef", metrics)
    assert card.data.to_dict()["model-index"][0]["results"][1]["metrics"][0]["value"] == 80.3
    with pytest.raises(ValueError, match="no 'accuracy'"):
        ve_eval_results({"test": {"acc": 0.5}})


def test_pipeline(folder, golden):
    """`pipeline("visual-entailment")`: the softmax of the model's logits over the labels, best first."""
    classify = pipeline("visual-entailment", model=str(folder))
    image = VE / "data" / "img_0.jpg"
    hypothesis = json.loads((VE / "data" / "ve_test.json").read_text())[0]["sentence"]
    result = classify(str(image), hypothesis=hypothesis)
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(images=[Image.open(image)], text=[hypothesis], preset="train")
    with torch.no_grad():
        probabilities = fresh(folder).eval()(**batch(inputs)).logits.softmax(-1)[0]
    expected = sorted(
        zip(("contradiction", "neutral", "entailment"), probabilities.tolist(), strict=True), key=lambda x: -x[1]
    )
    assert [r["label"] for r in result] == [label for label, _ in expected]
    assert [r["score"] for r in result] == pytest.approx([p for _, p in expected], abs=1e-6)
    assert len(classify([{"image": str(image), "hypothesis": hypothesis}] * 2, top_k=1)) == 2
    with pytest.raises(ValueError, match="Pass the hypothesis"):
        classify(str(image))


REMOTE_PIPELINE = textwrap.dedent(
    """
    import sys
    sys.modules["vlalign"] = None  # make `import vlalign` fail in this process
    import json
    from transformers import pipeline

    folder, image, hypothesis, output_file = sys.argv[1:]
    classify = pipeline("visual-entailment", model=folder, trust_remote_code=True)
    result = classify(image, hypothesis=hypothesis)
    json.dump({"module": type(classify.model).__module__, "name": type(classify.model).__name__, "result": result},
              open(output_file, "w"))
    """
)


def test_pipeline_with_remote_code_without_vlalign(folder, tmp_path):
    script = tmp_path / "pipe.py"
    script.write_text(REMOTE_PIPELINE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    image, hypothesis = str(VE / "data" / "img_0.jpg"), "Two men are playing with a ball."
    result = subprocess.run(
        [sys.executable, str(script), str(folder), image, hypothesis, str(tmp_path / "out.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads((tmp_path / "out.json").read_text())
    assert remote["module"].startswith("transformers_modules.") and remote["name"] == "AlbefForVisualEntailment"
    local = pipeline("visual-entailment", model=str(folder))(image, hypothesis=hypothesis)
    assert [r["label"] for r in remote["result"]] == [r["label"] for r in local]
    assert [r["score"] for r in remote["result"]] == pytest.approx([r["score"] for r in local], abs=1e-6)


def test_evaluator(folder):
    """`VisualEntailmentEvaluator` from a folder (through the pipeline) and from (model, processor): the official
    accuracy of the fixture (0.25 → 25 %), with a bootstrap interval around it."""
    from vlalign.evaluation.ve_evaluator import VisualEntailmentEvaluator

    dataset = load_ve_json(VE / "data" / "ve_test.json", VE / "data")
    evaluator = VisualEntailmentEvaluator()
    result = evaluator.compute(str(folder), dataset)
    assert result["accuracy"] == pytest.approx(25.0) and result["num_pairs"] == 4
    assert set(result["per_class_accuracy"]) == {"contradiction", "neutral", "entailment"}
    pair = (fresh(folder), AutoProcessor.from_pretrained(folder))
    boot = evaluator.compute(pair, dataset, strategy="bootstrap", n_resamples=200, random_state=0)
    low, high = boot["accuracy"]["confidence_interval"]
    assert boot["accuracy"]["score"] == pytest.approx(25.0) and low <= 25.0 <= high
    assert pair[0].training  # the model's mode is restored


def test_auto_task_recognises_a_fine_tuned_ve_checkpoint(tmp_path):
    """`vlalign convert` without `--task`: a checkpoint with `cls_head` is a VE checkpoint (ALBEF and SIMLA)."""
    for method, bert in (("albef", "config_bert.json"), ("simla", "shared_bert.json")):
        original = VE.parents[2] / method / "downstream" / "ve" / "original"
        run_cli(
            "convert", "--method", method, "--checkpoint", str(original / "checkpoint.pth"),
            "--config", str(original / "VE.yaml"), "--config", str(original / bert),
            "--tokenizer", str(original), "--output", str(tmp_path / method),
        )  # fmt: skip
        model = AutoModelForVisualEntailment.from_pretrained(tmp_path / method)
        assert type(model).__name__ == f"{method.capitalize()}ForVisualEntailment"
