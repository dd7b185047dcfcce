"""Method plots: CODIS's codebook-usage curve and prototype gallery (and the assignment they draw), SIMLA's predicted
keywords (PSL), and the `Method.example_plots` contract (model, processor, dataset, folder, log history) for every
method that has plots."""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image

from vlalign import quickstart, visualization
from vlalign.data.collator import AlignmentCollator
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.methods import get_method
from vlalign.models import CodisForPreTraining, CodisModel, SimlaModel
from vlalign.recipes import dataset_captions
from vlalign.recipes.codis import build_codis_tokenizer, codis_processor, tiny_codis_config
from vlalign.recipes.simla import build_simla_tokenizer, simla_processor, tiny_simla_config
from vlalign.visualization import (
    CODEBOOK_STATS,
    codis_example_plots,
    most_used_prototypes,
    plot_codebook_usage,
    plot_prototype_gallery,
    plot_psl_keywords,
    prototype_assignments,
    psl_keywords,
    simla_example_plots,
)

IMAGE_SIZE = 32
CODEBOOK_SIZE = 12


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic_dataset(num_train=8, num_validation=2, num_test=12, image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def processor(dataset):
    return codis_processor(build_codis_tokenizer(dataset_captions(dataset)), IMAGE_SIZE)


@pytest.fixture(scope="module")
def config(processor):
    return tiny_codis_config(
        processor.tokenizer, IMAGE_SIZE, width=32, num_heads=2, vision_layers=1, text_layers=2, fusion_layer=1,
        patch_size=16, embed_dim=16, queue_size=16, codebook_size=CODEBOOK_SIZE,
    )  # fmt: skip


@pytest.fixture(scope="module")
def model(config):
    torch.manual_seed(0)
    return CodisModel(config).eval()


@pytest.fixture(scope="module")
def logged_stats(config, processor, dataset):
    """The codebook statistics a CODIS training model reports for logging after one training forward."""
    torch.manual_seed(0)
    trainer_model = CodisForPreTraining(config).train()
    batch = AlignmentCollator(processor, text_column="captions")([dataset["train"][i] for i in range(8)])
    trainer_model(**batch)
    return trainer_model.training_log_values()


def _history(stats: dict[str, float], steps=(5, 10, 15)) -> list[dict]:
    """A `trainer.state.log_history`-like list: logging entries with the stats, then the run summary."""
    entries = [{"loss": 3.0 - step / 10, "step": step, **stats} for step in steps]
    return [*entries, {"train_runtime": 1.5, "train_loss": 2.5, "step": steps[-1]}]


def _check_png(path, min_width=400, min_height=200) -> tuple[int, int]:
    assert path.exists() and path.suffix == ".png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert width >= min_width and height >= min_height, image.size
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 24)) > 10  # more than a blank canvas
    return width, height


def _hand_assignments(model, processor, test):
    with torch.no_grad():
        pixel_values = processor(images=list(test["image"]))["pixel_values"]
        image_codes = model.code_probabilities(model.get_image_features(pixel_values).pooler_output).argmax(-1)
        texts = [caption for captions in test["captions"] for caption in captions]
        encoded = processor(text=texts, preset="eval")
        text_embeds = model.get_text_features(encoded["input_ids"], encoded["attention_mask"]).pooler_output
        text_codes = model.code_probabilities(text_embeds).argmax(-1)
    return image_codes.tolist(), text_codes.tolist(), texts


def test_prototype_assignments_match_a_hand_argmax(model, processor, dataset):
    test = dataset["test"]
    image_codes, text_codes, texts = _hand_assignments(model, processor, test)
    assert len(set(image_codes + text_codes)) > 1, "the fixture model should spread samples over prototypes"
    assignments = prototype_assignments(model, processor, test, batch_size=5)  # uneven batches: 5 + 5 + 2 images
    expected = {}
    for kind, codes in (("images", image_codes), ("captions", text_codes)):
        for index, code in enumerate(codes):
            expected.setdefault(code, {"images": [], "captions": []})[kind].append(index)
    assert assignments == expected
    assert sorted(i for entry in assignments.values() for i in entry["images"]) == list(range(len(test)))
    assert sorted(i for entry in assignments.values() for i in entry["captions"]) == list(range(len(texts)))
    assert all(0 <= code < CODEBOOK_SIZE for code in assignments)


def test_most_used_prototypes_counts_both_modalities():
    assignments = {
        0: {"images": [0], "captions": []},
        3: {"images": [1, 2], "captions": [0, 1, 2]},  # 5 samples
        5: {"images": [], "captions": [3, 4, 5, 6, 7]},  # 5 samples, ties with 3: the lower index first
        7: {"images": [3, 4, 5], "captions": [8]},  # 4 samples
    }
    assert most_used_prototypes(assignments, 3) == [3, 5, 7]
    assert most_used_prototypes(assignments, 10) == [3, 5, 7, 0]


def test_prototype_gallery_png(model, processor, dataset, tmp_path):
    test = dataset["test"]
    one = _check_png(plot_prototype_gallery(model, processor, test, tmp_path / "one.png", prototypes=1))
    two = _check_png(plot_prototype_gallery(model, processor, test, tmp_path / "g" / "two.png", prototypes=2,
                                            per_prototype=3))  # fmt: skip
    assert two[1] > one[1]  # one row per prototype
    with pytest.raises(ValueError, match="positive"):
        plot_prototype_gallery(model, processor, test, tmp_path / "none.png", prototypes=0)


def test_codebook_usage_plot_of_the_models_logged_stats(logged_stats, tmp_path):
    assert set(CODEBOOK_STATS) <= set(logged_stats)  # the plot reads what the model logs
    history = _history({name: logged_stats[name] for name in CODEBOOK_STATS})
    _check_png(plot_codebook_usage(history, tmp_path / "usage.png", codebook_size=CODEBOOK_SIZE))
    # without the codebook size, and with a single logging step
    _check_png(plot_codebook_usage(_history(logged_stats, steps=(25,)), tmp_path / "single.png"))


@pytest.mark.parametrize(
    "history",
    [
        [],
        [{"loss": 2.0, "loss_itc": 1.0, "step": 25}, {"train_runtime": 1.0, "step": 50}],
        [{"codebook_usage_image": 0.5}],  # no step: not a training log entry
    ],
)
def test_codebook_usage_plot_without_stats_raises(history, tmp_path):
    with pytest.raises(ValueError, match="no codebook statistics"):
        plot_codebook_usage(history, tmp_path / "usage.png")
    assert not (tmp_path / "usage.png").exists()


def test_codis_example_plots_through_the_registry(model, processor, dataset, logged_stats, tmp_path):
    method = get_method("codis")
    assert method.example_plots is codis_example_plots
    paths = method.example_plots(model, processor, dataset["test"], tmp_path, _history(logged_stats))
    assert [path.name for path in paths] == ["codebook_usage.png", "prototype_gallery.png"]
    for path in paths:
        assert path.parent == tmp_path
        _check_png(path)
    # a run that logged no codebook statistics (code loss off, or shorter than logging_steps) still gets its gallery
    with pytest.warns(UserWarning, match="skipping codebook_usage.png"):
        paths = method.example_plots(model, processor, dataset["test"], tmp_path / "short", [{"step": 2}])
    assert [path.name for path in paths] == ["prototype_gallery.png"]


def test_fdt_example_plots_take_the_log_history(dataset, tmp_path):
    method = get_method("fdt")
    processor = method.build_processor(method.build_tokenizer(dataset_captions(dataset)), IMAGE_SIZE)
    torch.manual_seed(0)
    model = method.model_class(method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides))
    paths = method.example_plots(model, processor, dataset["test"], tmp_path, [{"loss": 1.0, "step": 1}])
    assert [path.name for path in paths] == ["fdt_tokens_0.png", "fdt_tokens_1.png"]
    for path in paths:
        _check_png(path)


def test_quickstart_draws_the_codebook_usage_of_its_own_training_log(tmp_path):
    # 26 steps: the quick start logs every 25, so the training log the method's plots get holds codebook statistics
    settings = quickstart.QuickstartSettings(method="codis", num_train=16, num_test=6, batch_size=8, max_steps=26,
                                             warmup_steps=1, k_test=2)  # fmt: skip
    summary = quickstart.run_quickstart(tmp_path, settings)
    assert summary["plots"][-2:] == [str(tmp_path / "codebook_usage.png"), str(tmp_path / "prototype_gallery.png")]
    for name in ("codebook_usage.png", "prototype_gallery.png"):
        _check_png(tmp_path / name)


# ---------------------------------------------------------------------------------------------------------------------
# SIMLA: keyword prediction (PSL)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simla_processor_(dataset):
    return simla_processor(build_simla_tokenizer(dataset_captions(dataset)), IMAGE_SIZE)


def _simla_model(processor, **overrides):
    config = tiny_simla_config(
        processor.tokenizer, IMAGE_SIZE, width=32, num_heads=2, vision_layers=1, text_layers=2, patch_size=16,
        embed_dim=16, queue_size=8, mim_vocab_size=16, **overrides,
    )  # fmt: skip
    torch.manual_seed(0)
    return SimlaModel(config).eval()


@pytest.fixture(scope="module")
def simla_model(simla_processor_):
    model = _simla_model(simla_processor_)
    special = simla_processor_.tokenizer.all_special_ids
    with torch.no_grad():  # make the special tokens the highest-scoring rows, so excluding them is tested
        model.concept_head.bias[special] += 100.0
    return model


def _hand_keywords(model, processor, images, top_k):
    """The top-k of `keyword_logits` over the non-special word pieces, computed independently."""
    tokenizer = processor.tokenizer
    with torch.no_grad():
        logits = model.keyword_logits(processor(images=list(images))["pixel_values"])
    special = set(tokenizer.all_special_ids)
    expected = []
    for row in logits:
        order = [i for i in row.argsort(descending=True).tolist() if i not in special][:top_k]
        expected.append([(tokenizer.convert_ids_to_tokens(i), torch.sigmoid(row[i]).item()) for i in order])
    return expected


def test_psl_keywords_are_the_top_non_special_keyword_logits(simla_model, simla_processor_, dataset):
    images = dataset["test"]["image"][:4]
    with torch.no_grad():
        logits = simla_model.keyword_logits(simla_processor_(images=list(images))["pixel_values"])
    special = simla_processor_.tokenizer.all_special_ids
    assert set(logits[0].topk(len(special)).indices.tolist()) == set(special)  # the raw ranking starts with them
    keywords = psl_keywords(simla_model, simla_processor_, images, top_k=3)
    expected = _hand_keywords(simla_model, simla_processor_, images, 3)
    assert [[word for word, _ in row] for row in keywords] == [[word for word, _ in row] for row in expected]
    for row, expected_row in zip(keywords, expected, strict=True):
        assert [p for _, p in row] == pytest.approx([p for _, p in expected_row], abs=1e-6)
        assert all(0.0 < p < 1.0 for _, p in row) and [p for _, p in row] == sorted((p for _, p in row), reverse=True)
        assert not {word for word, _ in row} & set(simla_processor_.tokenizer.all_special_tokens)
    # more keywords than words: every non-special word piece, once
    everything = psl_keywords(simla_model, simla_processor_, images[:1], top_k=10_000)[0]
    assert len(everything) == len(simla_processor_.tokenizer) - len(special)
    with pytest.raises(ValueError, match="positive"):
        psl_keywords(simla_model, simla_processor_, images, top_k=0)


def test_plot_psl_keywords_draws_the_predicted_keywords(simla_model, simla_processor_, dataset, tmp_path, monkeypatch):
    test = dataset["test"]
    images, captions = test["image"][:3], [row[0] for row in test["captions"][:3]]
    drawn = []
    save = visualization._save

    def recording_save(figure, path):
        bar_axes = [axis for axis in figure.axes if axis.patches]
        drawn.extend([label.get_text() for label in axis.get_yticklabels()] for axis in bar_axes)
        return save(figure, path)

    monkeypatch.setattr(visualization, "_save", recording_save)
    path = plot_psl_keywords(simla_model, simla_processor_, images, captions, tmp_path / "k" / "psl.png", top_k=4)
    assert path == tmp_path / "k" / "psl.png"
    _, height = _check_png(path)
    expected = _hand_keywords(simla_model, simla_processor_, images, 4)
    assert drawn == [[word for word, _ in row] for row in expected]  # one bar panel per image, best keyword on top
    monkeypatch.undo()
    _, one_row_height = _check_png(
        plot_psl_keywords(simla_model, simla_processor_, images[:1], captions[:1], tmp_path / "one.png"),
        min_height=150,
    )
    assert height > one_row_height  # one row per image
    with pytest.raises(ValueError, match="captions"):
        plot_psl_keywords(simla_model, simla_processor_, images, captions[:2], tmp_path / "bad.png")


def test_simla_example_plots(simla_model, simla_processor_, dataset, tmp_path):
    paths = simla_example_plots(simla_model, simla_processor_, dataset["test"], tmp_path, [{"loss": 1.0, "step": 1}])
    assert paths == [tmp_path / "psl_keywords.png"]
    _, height = _check_png(paths[0])
    _, five_rows = _check_png(
        plot_psl_keywords(
            simla_model, simla_processor_, dataset["test"]["image"][:5],
            [row[0] for row in dataset["test"]["captions"][:5]], tmp_path / "five.png",
        )
    )  # fmt: skip
    assert height > five_rows  # the first six test images


def test_simla_example_plots_without_pretraining_heads(simla_processor_, dataset, tmp_path, caplog):
    model = _simla_model(simla_processor_, use_pretraining_heads=False)
    assert not hasattr(model, "concept_head")
    with caplog.at_level(logging.WARNING, logger="vlalign.visualization"):
        assert simla_example_plots(model, simla_processor_, dataset["test"], tmp_path, []) == []
    assert "no pretraining heads" in caplog.text
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="pretraining heads"):
        psl_keywords(model, simla_processor_, dataset["test"]["image"][:1])
