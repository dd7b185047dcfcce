"""Publishing to the Hub: the model card carries exactly the measured metrics, and a folder written by `save_for_hub`
and pushed over HTTP to the `LocalHub` stand-in (tests/hub_server.py) holds the complete file set and reloads from
the stand-in, with and without vlalign, to outputs identical to the local model's."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
import yaml
from conftest import micro_albef_config
from hub_server import DEFAULT_TOKEN, LocalHub, client_env
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file
from transformers import pipeline

from vlalign import AlbefConfig, AlbefForPreTraining, AlbefModel, AlbefProcessor, CodisConfig
from vlalign.hub import (
    DEFAULT_COMMIT_MESSAGE,
    build_model_card,
    push_folder_to_hub,
    save_for_hub,
    save_model_card,
    template_path,
)
from vlalign.methods import get_method, method_names
from vlalign.recipes import albef_processor, build_tokenizer
from vlalign.training.trainer import AlbefTrainingArguments

REPO_ID = "user/tiny-albef"
DATASET_NAME = "Synthetic shapes (made-up test numbers)"
CAPTIONS = ["a red circle above a blue square", "two green triangles on a white background"]
#: what `save_for_hub` writes for an ALBEF model and processor, i.e. what must arrive on the Hub
PUBLISHED_FILES = {
    "README.md",
    "config.json",
    "configuration_albef.py",
    "frozen.py",
    "input_checks.py",
    "losses.py",
    "parameter_groups.py",
    "patch_grid.py",
    "model.safetensors",
    "modeling_albef.py",
    "modeling_albef_encoders.py",
    "modeling_albef_layers.py",
    "modeling_albef_training.py",
    "pipeline_retrieval.py",
    "processing_albef.py",
    "processing_alignment.py",
    "processor_config.json",
    "remote_code.py",
    "tokenization_albef.py",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_duties.py",
    "weights_check.py",
    "weights_checksums.json",
}

# Made-up but explicit results, shaped like `evaluate_retrieval`'s (percent). Some are not short decimals on purpose:
# the model-index must hold the exact floats, the README table their 2-decimal rounding.
METRICS = {
    "txt_r1": 100 * 7 / 16,
    "txt_r5": 81.25,
    "txt_r10": 93.75,
    "img_r1": 100 * 7 / 48,
    "img_r5": 56.25,
    "img_r10": 77.08333333333333,
    "txt_r_mean": 71.875,
    "img_r_mean": 49.30555555555556,
    "r_mean": 60.59027777777778,
    "num_images": 16,
    "num_texts": 48,
    "num_itm_pairs": 412,
}
#: (metric_name, metric_type, value, direction) in model-index order
EXPECTED_RESULTS = [
    ("TR@1", "recall@1", 43.75, "image-to-text"),
    ("TR@5", "recall@5", 81.25, "image-to-text"),
    ("TR@10", "recall@10", 93.75, "image-to-text"),
    ("TR@mean", "mean_recall", 71.875, "image-to-text"),
    ("IR@1", "recall@1", 14.583333333333334, "text-to-image"),
    ("IR@5", "recall@5", 56.25, "text-to-image"),
    ("IR@10", "recall@10", 77.08333333333333, "text-to-image"),
    ("IR@mean", "mean_recall", 49.30555555555556, "text-to-image"),
    ("R@mean", "mean_recall", 60.59027777777778, "both"),
]


# ---------------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> tuple[AlbefForPreTraining, AlbefProcessor]:
    """A tiny pretraining model (ViT 32×1 at 32 px, BERT 32 with 1 text + 1 fusion layer, embed 16, queue 8)."""
    tokenizer = build_tokenizer(["a red circle above a blue square", "two green triangles", "a white background"])
    config = micro_albef_config(tokenizer, k_test=4)
    torch.manual_seed(0)
    model = AlbefForPreTraining(config).eval()
    with torch.no_grad():  # a trained-looking temperature, so the card shows the learned value
        model.albef.temp.fill_(0.05)
    return model, albef_processor(tokenizer, image_size=32)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[LocalHub]:
    with LocalHub(tmp_path / "hub") as local_hub:
        yield local_hub


@pytest.fixture
def api(hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> HfApi:
    # conftest turns offline mode on for the whole suite; talking to the loopback stand-in is the exception
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return HfApi(endpoint=hub.endpoint, token=DEFAULT_TOKEN)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Bitwise comparisons with a subprocess: run both sides single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _eval_results(card: ModelCard) -> list[tuple]:
    return [
        (r.metric_name, r.metric_type, r.metric_value, (r.metric_args or {}).get("direction"))
        for r in card.data.eval_results
    ]


def _images() -> list[Image.Image]:
    rng = np.random.RandomState(0)
    return [Image.fromarray((rng.rand(40, 40, 3) * 255).astype("uint8")) for _ in range(2)]


# ---------------------------------------------------------------------------------------------------------------------
# the card
# ---------------------------------------------------------------------------------------------------------------------


def test_card_round_trips_the_measured_metrics(tiny, tmp_path: Path) -> None:
    model, _ = tiny
    args = AlbefTrainingArguments(
        output_dir=str(tmp_path / "run"), learning_rate=1e-4, per_device_train_batch_size=32, num_train_epochs=5,
        weight_decay=0.02, seed=7, report_to="none",
    )  # fmt: skip
    card = build_model_card(
        model.albef,
        metrics=METRICS,
        dataset_name=DATASET_NAME,
        training_args=args,
        model_id=REPO_ID,
        dataset_id="user/synthetic-shapes",
        license="apache-2.0",
    )
    readme = save_model_card(card, tmp_path / "card")
    assert readme == tmp_path / "card" / "README.md"

    loaded = ModelCard.load(readme)
    assert _eval_results(loaded) == EXPECTED_RESULTS
    assert {
        (r.task_type, r.task_name, r.dataset_type, r.dataset_name, r.dataset_split) for r in loaded.data.eval_results
    } == {("image-text-retrieval", "Image-Text Retrieval", "user/synthetic-shapes", DATASET_NAME, "test")}
    data = loaded.data
    assert data.model_name == "tiny-albef"
    assert (data.library_name, data.pipeline_tag, data.license, data.language) == (
        "transformers", "zero-shot-image-classification", "apache-2.0", "en",
    )  # fmt: skip
    assert data.tags == ["vlalign", "albef", "image-text-retrieval", "vision-language"]
    assert data.datasets == ["user/synthetic-shapes"]

    # The raw YAML holds the same numbers (what the Hub reads), and the metrics of both directions in one result.
    text = readme.read_text(encoding="utf-8")
    front_matter = yaml.safe_load(text.split("---\n")[1])
    [entry] = front_matter["model-index"]
    [result] = entry["results"]
    assert [(m["name"], m["value"]) for m in result["metrics"]] == [(n, v) for n, _, v, _ in EXPECTED_RESULTS]

    # The body: rendered completely, results table from the same values, config and training arguments.
    assert "{{" not in text and "{%" not in text and "{#" not in text
    assert text.startswith("---\n") and "\n---\n\n# user/tiny-albef\n" in text
    assert "| Direction | R@1 | R@5 | R@10 | Mean |" in text
    assert "| Text retrieval, TR (image → text) | 43.8 | 81.2 | 93.8 | 71.9 |" in text  # percentages to 1 decimal
    assert "| Image retrieval, IR (text → image) | 14.6 | 56.2 | 77.1 | 49.3 |" in text
    assert "Mean of all recalls (R@mean): **60.6**" in text
    assert "(16 images, 48 captions)" in text and "(412 image-text pairs)" in text
    assert "| Image encoder | ViT: 1 layer, width 32, 2 heads, patch 16, 32×32 px |" in text
    assert "| Fusion encoder | BERT layer 2, cross-attending to the image tokens |" in text
    assert "temperature 0.05 (learned; initial 0.07)" in text
    assert f"| Parameters in this repository | {sum(p.numel() for p in model.albef.parameters()):,} |" in text
    assert "| `learning_rate` | 0.0001 |" in text and "| `per_device_train_batch_size` | 32 |" in text
    assert "| `seed` | 7 |" in text and "| `official_optimizer` | True |" in text
    assert "| `max_steps` |" not in text  # unset (-1): not shown
    assert 'AutoModel.from_pretrained("user/tiny-albef", trust_remote_code=True)' in text
    assert 'pipeline("zero-shot-image-classification", model="user/tiny-albef", trust_remote_code=True)' in text
    assert 'pipeline("zero-shot-image-text-retrieval", model="user/tiny-albef", trust_remote_code=True)' in text
    assert "@inproceedings{li2021albef," in text and "Align before Fuse" in text
    assert "## Limitations and risks" in text

    # Loading and saving again keeps the metadata.
    loaded.save(tmp_path / "again.md")
    assert _eval_results(ModelCard.load(tmp_path / "again.md")) == EXPECTED_RESULTS


def test_card_metric_keys_and_validation(tiny) -> None:
    model, _ = tiny
    # Trainer.evaluate prefixes the keys ("eval_txt_r1"); other logged values (eval_loss, ...) are ignored.
    prefixed = {f"eval_{key}": value for key, value in METRICS.items()} | {"eval_loss": 1.25, "epoch": 3.0}
    card = build_model_card(model, metrics=prefixed, dataset_name=DATASET_NAME, training_args={"lr": 3e-4})
    assert _eval_results(card) == EXPECTED_RESULTS
    assert card.data.datasets == ["synthetic-shapes-made-up-test-numbers"]  # no dataset_id: a slug of the name
    assert "This repository holds the **full training model** (`AlbefForPreTraining`)" in card.text
    assert "| `lr` | 0.0003 |" in card.text

    no_results = build_model_card(model.albef, metrics=None, dataset_name=DATASET_NAME, train_datasets=["user/shapes"])
    assert no_results.data.eval_results is None and "model-index" not in no_results.content
    assert "No evaluation results were reported" in no_results.text
    assert "Trained on [`user/shapes`](https://huggingface.co/datasets/user/shapes)." in no_results.text

    for bad, error in [
        ({"loss": 1.0}, ValueError),  # nothing to report: a mistake, not an empty model-index
        ({"txt_r1": 150.0}, ValueError),  # not a percentage
        ({"txt_r1": float("nan")}, ValueError),
        ({"txt_r1": "43"}, TypeError),
        ({"txt_r1": 40.0, "eval_txt_r1": 41.0}, ValueError),  # two evaluations mixed
    ]:
        with pytest.raises(error):
            build_model_card(model.albef, metrics=bad, dataset_name=DATASET_NAME)


def test_template_is_package_data() -> None:
    path = template_path("albef")
    assert path.is_file() and path.parts[-4:] == ("vlalign", "hub", "templates", "albef.md")
    pointer = Path(__file__).parents[1] / "model_cards" / "albef.md"
    assert "src/vlalign/hub/templates/albef.md" in pointer.read_text(encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="package-data"):
        template_path("no-such-family")


def _registry_model(name: str):
    """A micro training model of a registered method, built from its tiny recipe with the unit-test caps."""
    method = get_method(name)
    tokenizer = method.build_tokenizer(CAPTIONS)
    torch.manual_seed(0)
    return method.pretraining_class(method.tiny_config(tokenizer, 32, **method.test_overrides)).eval()


@pytest.mark.parametrize("name", method_names())
def test_every_method_card_renders_from_its_own_template(name: str) -> None:
    """Each method's packaged template renders completely (no Jinja left) around exactly the measured metrics, and
    `model_cards/<method>.md` points at it."""
    model = _registry_model(name)
    for metrics in (METRICS, None):
        card = build_model_card(model.base_model, metrics=metrics, dataset_name=DATASET_NAME, model_id=REPO_ID)
        text = str(card)
        assert not any(marker in text for marker in ("{{", "}}", "{%", "%}", "{#", "#}")), name
        assert f'AutoModel.from_pretrained("{REPO_ID}", trust_remote_code=True)' in text
        assert (_eval_results(card) if metrics else card.data.eval_results) == (EXPECTED_RESULTS if metrics else None)
        assert ("No evaluation results were reported" in text) == (metrics is None)
    assert template_path(name).is_file()
    pointer = Path(__file__).parents[1] / "model_cards" / f"{name}.md"
    assert f"src/vlalign/hub/templates/{name}.md" in pointer.read_text(encoding="utf-8")


def test_codis_card_separates_confirmed_choices_ours_and_the_paper_claims() -> None:
    """No official CODIS code exists: the card says so, names every open-choice config field, and keeps the paper's
    reported numbers apart from (and out of the model-index of) the measured ones."""
    model = _registry_model("codis")
    card = build_model_card(model.base_model, metrics=METRICS, dataset_name=DATASET_NAME, model_id=REPO_ID)
    text = str(card)
    assert "No official CODIS code or checkpoints exist" in text
    confirmed, ours = text.index("Confirmed by a source:"), text.index("Our choices")
    assert confirmed < ours < text.index("## How to use")
    # every CODIS setting beyond ALBEF's is an open choice the card names (codebook_dim only mirrors embed_dim)
    codis_fields = set(CodisConfig.__dataclass_fields__) - set(AlbefConfig.__dataclass_fields__) - {"codebook_dim"}
    assert codis_fields, "CodisConfig has no fields of its own?"
    missing = sorted(f for f in codis_fields if f"`{f}`" not in text and f"`{f}=" not in text)
    assert not missing, f"the CODIS card does not name {missing}"
    assert "least certain" in text and '"assignment_contrast"' in text  # the flagged risk of the swapped loss
    # measured results first, then the paper's claims, which never enter the model-index
    measured, claimed = text.index("## Evaluation results"), text.index("What the paper reports")
    assert measured < claimed < text.index("## Training data")
    for value in ("71.5", "53.9", "91.7", "79.7"):
        assert value in text[claimed:]
    assert _eval_results(card) == EXPECTED_RESULTS
    assert "@inproceedings{duan2022codis," in text and "@inproceedings{li2021albef," in text


def test_codis_pointer_lists_every_open_choice_with_its_default() -> None:
    """`model_cards/codis.md` tabulates confirmed and own choices with the defaults: they must be CodisConfig's."""
    text = (Path(__file__).parents[1] / "model_cards" / "codis.md").read_text(encoding="utf-8")
    assert "without code" in text and "confirmed" in text and "ours" in text
    listed = dict(re.findall(r"`(\w+)=([^`]+)`", text))
    defaults = CodisConfig()
    codis_fields = set(CodisConfig.__dataclass_fields__) - set(AlbefConfig.__dataclass_fields__) - {"codebook_dim"}
    assert sorted(codis_fields - set(listed)) == []
    for name in codis_fields:
        assert ast.literal_eval(listed[name]) == getattr(defaults, name), name


# ---------------------------------------------------------------------------------------------------------------------
# the folder
# ---------------------------------------------------------------------------------------------------------------------


def test_save_for_hub_publishes_the_inference_model(tiny, tmp_path: Path) -> None:
    model, processor = tiny
    architectures, auto_map = model.config.architectures, getattr(model.config, "auto_map", None)

    folder = save_for_hub(model, processor, tmp_path / "out", metrics=METRICS, dataset_name=DATASET_NAME)
    assert {p.name for p in folder.iterdir()} == PUBLISHED_FILES
    weights = load_file(folder / "model.safetensors")
    expected = model.albef.state_dict()
    assert sorted(weights) == sorted(expected)  # no momentum encoders, queues or MLM head
    assert all(torch.equal(weights[name], tensor) for name, tensor in expected.items())
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["AlbefModel"] and config["auto_map"]["AutoModel"] == "modeling_albef.AlbefModel"
    # the training model's (shared) config is left as it was
    assert (model.config.architectures, getattr(model.config, "auto_map", None)) == (architectures, auto_map)

    with pytest.raises(FileExistsError):
        save_for_hub(model, processor, folder, metrics=METRICS, dataset_name=DATASET_NAME)

    full = save_for_hub(
        model, processor, tmp_path / "full", metrics=None, dataset_name=DATASET_NAME, include_training_state=True
    )
    assert sorted(load_file(full / "model.safetensors")) == sorted(model.state_dict())
    assert json.loads((full / "config.json").read_text())["architectures"] == ["AlbefForPreTraining"]


# ---------------------------------------------------------------------------------------------------------------------
# push over HTTP and reload from the stand-in
# ---------------------------------------------------------------------------------------------------------------------

RELOAD_SCRIPT = (
    textwrap.dedent(
        """
    import json
    import sys

    mode, output = sys.argv[1:]
    if mode == "remote-code":
        sys.modules["vlalign"] = None  # make `import vlalign` fail in this process
        try:
            import vlalign  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("vlalign is importable; the test would prove nothing")
        kwargs = {"trust_remote_code": True}
    else:
        import vlalign  # noqa: F401  (registers the ALBEF classes)
        kwargs = {}

    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoProcessor, pipeline

    torch.set_num_threads(1)
    rng = np.random.RandomState(0)
    images = [Image.fromarray((rng.rand(40, 40, 3) * 255).astype("uint8")) for _ in range(2)]
    captions = CAPTIONS

    model = AutoModel.from_pretrained("REPO_ID", **kwargs).eval()
    processor = AutoProcessor.from_pretrained("REPO_ID", **kwargs)
    inputs = processor(images=images, text=captions)
    with torch.no_grad():
        outputs = model(**inputs)
        text_hidden = model.text_model(inputs["input_ids"], inputs["attention_mask"]).last_hidden_state
        image_hidden = model.vision_model(inputs["pixel_values"]).last_hidden_state
        itm = model.itm_logits(text_hidden, inputs["attention_mask"], image_hidden)
    ranker = pipeline("zero-shot-image-classification", model="REPO_ID", **kwargs)
    ranked = ranker(images[0], candidate_labels=["red circle", "green triangle", "blue square"])
    tensors = {
        "input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"],
        "pixel_values": inputs["pixel_values"], "logits_per_image": outputs.logits_per_image,
        "image_embeds": outputs.image_embeds, "text_embeds": outputs.text_embeds, "itm_logits": itm,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, output + ".safetensors")
    with open(output + ".json", "w") as f:
        json.dump(
            {"model": type(model).__module__ + "." + type(model).__name__,
             "processor": type(processor).__module__ + "." + type(processor).__name__,
             "pipeline_model": type(ranker.model).__module__, "ranked": ranked},
            f,
        )
    """
    )
    .replace("REPO_ID", REPO_ID)
    .replace("CAPTIONS", repr(CAPTIONS))
)


def _local_outputs(model: AlbefModel, processor: AlbefProcessor) -> tuple[dict[str, torch.Tensor], list[dict]]:
    images = _images()
    inputs = processor(images=images, text=CAPTIONS)
    with torch.no_grad():
        outputs = model(**inputs)
        text_hidden = model.text_model(inputs["input_ids"], inputs["attention_mask"]).last_hidden_state
        image_hidden = model.vision_model(inputs["pixel_values"]).last_hidden_state
        itm = model.itm_logits(text_hidden, inputs["attention_mask"], image_hidden)
    ranker = pipeline(
        "zero-shot-image-classification",
        model=model,
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
    )
    ranked = ranker(images[0], candidate_labels=["red circle", "green triangle", "blue square"])
    tensors = {
        "input_ids": inputs["input_ids"],
        "attention_mask": inputs["attention_mask"],
        "pixel_values": inputs["pixel_values"],
        "logits_per_image": outputs.logits_per_image,
        "image_embeds": outputs.image_embeds,
        "text_embeds": outputs.text_embeds,
        "itm_logits": itm,
    }
    return tensors, ranked


def test_push_to_local_hub_and_reload_over_http(
    tiny, hub: LocalHub, api: HfApi, tmp_path: Path, one_thread: None
) -> None:
    model, processor = tiny
    folder = save_for_hub(
        model,
        processor,
        tmp_path / "publish",
        metrics=METRICS,
        dataset_name=DATASET_NAME,
        training_args={"learning_rate": 1e-4, "num_train_epochs": 5},
        model_id=REPO_ID,
    )

    commit = push_folder_to_hub(folder, REPO_ID, token=DEFAULT_TOKEN, endpoint=hub.endpoint)

    # Exactly the saved files arrived, byte for byte, in one commit.
    stored = hub.files(REPO_ID)
    assert set(stored) == PUBLISHED_FILES
    assert stored == {path.name: path.read_bytes() for path in folder.iterdir()}
    assert [(c.repo_id, c.summary, sorted(c.added)) for c in hub.commits] == [
        (REPO_ID, DEFAULT_COMMIT_MESSAGE, sorted(PUBLISHED_FILES))
    ]
    assert commit.oid == hub.head(REPO_ID) and commit.repo_url.repo_id == REPO_ID
    weights = load_safetensors(stored["model.safetensors"])
    assert sorted(weights) == sorted(model.albef.state_dict())
    assert _eval_results(ModelCard(stored["README.md"].decode())) == EXPECTED_RESULTS

    # Pushing the same folder again changes nothing (no new commit).
    assert push_folder_to_hub(folder, REPO_ID, token=DEFAULT_TOKEN, endpoint=hub.endpoint).oid == commit.oid
    assert len(hub.commits) == 1

    # Reload from the stand-in over HTTP in fresh processes: remote code without vlalign, then vlalign's classes.
    expected, expected_ranked = _local_outputs(model.albef, processor)
    script = tmp_path / "reload.py"
    script.write_text(RELOAD_SCRIPT)
    for mode, module in [("remote-code", "transformers_modules."), ("vlalign", "vlalign.models.")]:
        env = {**os.environ, **client_env(hub, tmp_path / f"client-{mode}")}
        result = subprocess.run(
            [sys.executable, str(script), mode, str(tmp_path / mode)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        info = json.loads((tmp_path / f"{mode}.json").read_text())
        assert info["model"].startswith(module) and info["model"].endswith(".AlbefModel"), info
        assert info["processor"].startswith(module) and info["processor"].endswith(".AlbefProcessor"), info
        assert info["pipeline_model"].startswith(module), info
        reloaded = load_file(tmp_path / f"{mode}.safetensors")
        assert sorted(reloaded) == sorted(expected)
        for name, tensor in expected.items():
            assert torch.equal(reloaded[name], tensor), (mode, name)
        # The pipeline's softmax can differ in the last bit between processes (vectorised kernels): same ranking,
        # scores equal to float32 precision.
        assert [r["label"] for r in info["ranked"]] == [r["label"] for r in expected_ranked], mode
        assert [r["score"] for r in info["ranked"]] == pytest.approx([r["score"] for r in expected_ranked], rel=1e-6)

    downloaded = {
        path.split("/resolve/", 1)[1].split("/", 1)[1] for method, path in hub.requests if "/resolve/" in path
    }
    assert {"config.json", "model.safetensors", "modeling_albef.py", "processing_albef.py"} <= downloaded
    assert hub.unhandled == []
