"""The main job's wiring on a few steps (its learning targets are measured by `vlalign quickstart` itself, see the
README): every artefact is written, the card and the saved results carry the measured recalls and zero-shot accuracy,
the saved model reloads."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from vlalign.quickstart import QuickstartSettings, chance_levels, chance_recall_at_1, run_quickstart


def test_quickstart_writes_every_artefact(tmp_path, capsys):
    settings = QuickstartSettings(num_train=64, num_test=12, batch_size=8, max_steps=4, warmup_steps=1, k_test=4)
    summary = run_quickstart(tmp_path, settings)
    printed = capsys.readouterr().out
    assert "text retrieval" in printed and "x chance" in printed and "->" in printed
    for name in ("losses.png", "recalls.png", "text_to_image_top5.png", "summary.json"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert json.loads((tmp_path / "summary.json").read_text())["metrics"] == pytest.approx(summary["metrics"])
    card = ModelCard.load(tmp_path / "model" / "README.md")
    recalls = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert recalls["TR@1"] == pytest.approx(summary["metrics"]["txt_r1"])
    assert recalls["IR@1"] == pytest.approx(summary["metrics"]["img_r1"])
    zero_shot = summary["zero_shot"]
    assert "zero-shot shape classification" in printed and zero_shot["num_classes"] == 5
    assert recalls["top-1 accuracy"] == pytest.approx(zero_shot["top1_accuracy"])
    assert recalls["top-5 accuracy"] == 100.0  # five shape classes
    saved = json.loads((tmp_path / "model" / "eval_results.json").read_text())
    assert saved["zero_shot"]["top1_accuracy"] == zero_shot["top1_accuracy"]
    # the colour control and every chance level: 2 of 24 captions, 1 of 12 images, 1 of 5 shapes, 1 of 8 colours
    color = summary["zero_shot_color"]
    assert color["num_classes"] == 8 and color["class_names"][0] == "red" and color["num_images"] > 0
    assert saved["zero_shot_color"]["top1_accuracy"] == color["top1_accuracy"]
    expected_chance = {
        "txt_r1": pytest.approx(100 / 12),
        "img_r1": pytest.approx(100 / 12),
        "zero_shot_top1_accuracy": 20.0,
        "zero_shot_color_top1_accuracy": 12.5,
    }
    assert saved["chance"] == summary["chance"] == expected_chance
    assert "(chance 20.0%," in printed and "zero-shot colour classification" in printed and "(chance 12.5%," in printed
    assert printed.count("R@1 chance 8.3%") == 2
    # a shape accuracy under 2x chance is called what it is
    assert ("shape accuracy is under 2x chance" in printed) == (zero_shot["top1_accuracy"] < 40.0)
    assert saved["retrieval"] == pytest.approx(summary["metrics"])
    assert {"model.safetensors", "config.json", "processor_config.json", "modeling_albef.py"} <= {
        p.name for p in (tmp_path / "model").iterdir()
    }


def test_chance_level():
    dataset = {"captions": [["a", "b"], ["c", "d"], ["e", "f"], ["g", "h"]]}

    class Rows(dict):
        def __len__(self):
            return 4

    chance = chance_recall_at_1(Rows(dataset))
    assert chance == {"txt_r1": 25.0, "img_r1": 25.0}


def test_chance_levels_name_every_figure():
    dataset = {"captions": [["a", "b"], ["c", "d"], ["e", "f"], ["g", "h"]]}

    class Rows(dict):
        def __len__(self):
            return 4

    assert chance_levels(Rows(dataset), {"num_classes": 5}, {"num_classes": 8}) == {
        "txt_r1": 25.0,
        "img_r1": 25.0,
        "zero_shot_top1_accuracy": 20.0,
        "zero_shot_color_top1_accuracy": 12.5,
    }
    assert chance_levels(Rows(dataset), None, None) == {"txt_r1": 25.0, "img_r1": 25.0}


@pytest.fixture(scope="module")
def quickstart_model(tmp_path_factory):
    """What `vlalign quickstart` saves (an `AlbefModel` with its processor), tiny and untrained."""
    from vlalign.data.synthetic import make_synthetic_dataset
    from vlalign.methods import get_method
    from vlalign.recipes import dataset_captions

    method = get_method("albef")
    tokenizer = method.build_tokenizer(dataset_captions(make_synthetic_dataset(8, 0, 0, image_size=64, seed=0)))
    folder = tmp_path_factory.mktemp("quickstart_output") / "model"
    method.model_class(method.tiny_config(tokenizer, 64, **method.test_overrides)).save_pretrained(folder)
    method.build_processor(tokenizer, 64).save_pretrained(folder)
    return folder


def test_vqa_quickstart_writes_every_artefact(quickstart_model, tmp_path, capsys):
    from vlalign.quickstart_vqa import VqaQuickstartSettings, run_vqa_quickstart

    settings = VqaQuickstartSettings(
        pretrained=str(quickstart_model), num_train=16, num_test=8, batch_size=8, max_steps=2, warmup_steps=1, k=4
    )
    summary = run_vqa_quickstart(tmp_path, settings)
    printed = capsys.readouterr().out
    vqa = summary["vqa"]
    assert summary["started_from"] == str(quickstart_model) and summary["pretrain_seconds"] is None
    table = printed[printed.index("[5/5]") :]
    assert "baseline" in table and "overall" in table
    for kind, accuracy in vqa["vqa_accuracy_per_type"].items():  # one row per question type, model then baseline
        level = vqa["majority_baseline"]["per_type_by_type"][kind]
        assert f"{kind:<14}{accuracy:8.1f}{level:10.1f}" in table
    assert f"{vqa['majority_baseline']['per_type_vqa_accuracy']:.1f}% answering each question type's" in table
    assert printed.count("' -> '") == 8  # the pipeline's answers to the shown questions
    for name in ("vqa_answers.png", "vqa_losses.png", "summary.json", "vqa_result.json"):
        assert (tmp_path / name).stat().st_size > 100, name
    card = ModelCard.load(tmp_path / "model" / "README.md")
    [result] = card.data.eval_results
    assert (result.task_type, result.metric_value) == ("visual-question-answering", pytest.approx(vqa["vqa_accuracy"]))
    saved = json.loads((tmp_path / "model" / "eval_results.json").read_text())
    assert saved["vqa"]["vqa_accuracy"] == vqa["vqa_accuracy"] and saved["vqa"]["num_questions"] == 24


def test_vqa_quickstart_refuses_another_methods_model(quickstart_model, tmp_path):
    from vlalign.quickstart_vqa import VqaQuickstartSettings, run_vqa_quickstart

    with pytest.raises(ValueError, match="holds a albef model; pass --method albef or another folder"):
        run_vqa_quickstart(tmp_path, VqaQuickstartSettings(method="simla", pretrained=str(quickstart_model)))
    with pytest.raises(ValueError, match="fdt has no visual question answering model"):
        VqaQuickstartSettings(method="fdt")
