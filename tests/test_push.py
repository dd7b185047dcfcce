"""`vlalign push` over HTTP against the `LocalHub` stand-in (tests/hub_server.py), in a fresh process pointed at it
with `HF_ENDPOINT` as a user would (and in-process, clients patched): evaluating on a dataset or reading the results saved with the model, the card's
`model-index` holds exactly the measured retrieval recalls and zero-shot accuracies with their datasets named, and
weights, processor, remote code, the custom pipeline, the card and the results file arrive in one commit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from hub_server import DEFAULT_TOKEN, LocalHub, client_env, patch_clients
from huggingface_hub import HfApi, ModelCard

from vlalign.cli import main
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.evaluation import evaluate_retrieval
from vlalign.hub.push import RESULTS_FILE, measure_results, save_results
from vlalign.methods import get_method
from vlalign.recipes import dataset_captions

REPO_ID = "user/tiny-albef-pushed"
IMAGE_SIZE = 32
#: what a push of an ALBEF folder uploads besides the weights, config, processor and card
CODE_FILES = {"configuration_albef.py", "modeling_albef.py", "processing_albef.py", "pipeline_retrieval.py"}


@pytest.fixture(scope="module")
def test_split():
    """What `--eval-dataset synthetic --synthetic-size 12` evaluates on."""
    return make_synthetic_dataset(num_train=0, num_validation=0, num_test=12, seed=0)["test"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, test_split) -> Path:
    method = get_method("albef")
    captions = dataset_captions({"test": test_split})
    processor = method.build_processor(method.build_tokenizer([*captions, "picture of one"]), IMAGE_SIZE)
    torch.manual_seed(0)
    model = method.model_class(method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides)).eval()
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture
def hub(tmp_path: Path):
    with LocalHub(tmp_path / "hub") as local_hub:
        yield local_hub


def push(hub: LocalHub, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **client_env(hub, tmp_path / "hf_home"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "vlalign", "push", *args], capture_output=True, text=True, timeout=300, env=env
    )


def model_index(card_text: str) -> dict[tuple[str, str, str], float]:
    """{(task type, dataset name, metric name): value} of a card's model-index."""
    return {
        (result.task_type, result.dataset_name, result.metric_name): result.metric_value
        for result in ModelCard(card_text).data.eval_results
    }


def test_push_evaluates_and_uploads_everything_in_one_commit(hub, tmp_path, model_dir, test_split, monkeypatch):
    result = push(
        hub, tmp_path, "--model", str(model_dir), "--repo-id", REPO_ID, "--eval-dataset", "synthetic",
        "--synthetic-size", "12", "--private", "--token", DEFAULT_TOKEN,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    stored = hub.files(REPO_ID)
    assert {"model.safetensors", "config.json", "processor_config.json", "tokenizer.json", "README.md"} <= set(stored)
    assert CODE_FILES <= set(stored) and RESULTS_FILE in stored
    assert len(hub.commits) == 1
    # conftest turns offline mode on for the whole suite; the stand-in on the loopback is the exception
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert HfApi(endpoint=hub.endpoint, token=DEFAULT_TOKEN).model_info(REPO_ID).private

    results = json.loads(stored[RESULTS_FILE])
    from vlalign.sources import load_saved_model

    model, processor = load_saved_model(model_dir)
    expected = evaluate_retrieval(model, processor, test_split, show_progress=False)
    index = model_index(stored["README.md"].decode())
    dataset = results["dataset_name"]
    assert index[("image-text-retrieval", dataset, "TR@1")] == expected["txt_r1"] == results["retrieval"]["txt_r1"]
    assert index[("image-text-retrieval", dataset, "R@mean")] == expected["r_mean"]
    zero_shot = results["zero_shot"]
    assert "single-shape images" in zero_shot["dataset_name"] and zero_shot["num_classes"] == 5
    for k in (1, 5):
        key = ("zero-shot-image-classification", zero_shot["dataset_name"], f"top-{k} accuracy")
        assert index[key] == zero_shot[f"top{k}_accuracy"]
    assert f"Pushed {REPO_ID}" in result.stdout


def test_push_uses_the_saved_results(hub, tmp_path, model_dir, test_split, monkeypatch, capsys):
    from vlalign.sources import load_saved_model

    model, processor = load_saved_model(model_dir)
    results = measure_results(model, processor, test_split, dataset_name="Twelve shapes")
    results["retrieval"]["txt_r1"] = 12.5  # a recognisable value: the card must carry the file's numbers
    folder = tmp_path / "with_results"
    folder.mkdir()
    for path in model_dir.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    save_results(results, folder)

    patch_clients(hub, monkeypatch, tmp_path / "hf_home")
    assert main(["push", "--model", str(folder), "--repo-id", REPO_ID]) == 0
    assert f"Pushed {REPO_ID}" in capsys.readouterr().out
    index = model_index(hub.files(REPO_ID)["README.md"].decode())
    assert index[("image-text-retrieval", "Twelve shapes", "TR@1")] == 12.5


def test_push_without_results_names_the_fix(hub, tmp_path, model_dir, monkeypatch, capsys):
    patch_clients(hub, monkeypatch, tmp_path / "hf_home")
    assert main(["push", "--model", str(model_dir), "--repo-id", REPO_ID]) == 1
    error = capsys.readouterr().err
    assert "--eval-dataset" in error and RESULTS_FILE in error
    assert hub.commits == []
