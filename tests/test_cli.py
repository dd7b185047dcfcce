"""`vlalign evaluate` and `vlalign retrieve` on saved folders of every registered method, run as a user's shell would."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import run_cli

from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.evaluation import evaluate_retrieval
from vlalign.methods import get_method, method_names
from vlalign.recipes import dataset_captions

IMAGE_SIZE = 32


@pytest.fixture(scope="module", params=method_names())
def saved(request, tmp_path_factory):
    """A micro model of each method saved with its processor, and the built-in test split the CLI regenerates."""
    method = get_method(request.param)
    dataset = make_synthetic_dataset(num_train=0, num_validation=0, num_test=8, seed=0)  # as the CLI makes it
    processor = method.build_processor(method.build_tokenizer(dataset_captions(dataset)), IMAGE_SIZE)
    torch.manual_seed(0)
    model = method.model_class(method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides)).eval()
    folder = tmp_path_factory.mktemp(method.name)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return method, model, processor, dataset["test"], folder


def test_evaluate_writes_the_recalls_of_the_python_api(saved, tmp_path):
    method, model, processor, test, folder = saved
    output = tmp_path / "metrics.json"
    run_cli("evaluate", "--model", str(folder), "--synthetic-size", "8", "--k-test", "4", "--output", str(output))
    written = json.loads(output.read_text())
    expected = evaluate_retrieval(model, processor, test, k_test=4, show_progress=False)
    for key in ("txt_r1", "txt_r5", "img_r1", "img_r10", "r_mean", "num_images", "num_texts", "num_itm_pairs"):
        assert written[key] == pytest.approx(expected[key], abs=1e-9), key
    assert (written["num_itm_pairs"] > 0) == method.supports_itm_rerank


def test_retrieve_ranks_a_folder_of_images(saved, tmp_path):
    method, model, processor, test, folder = saved
    images = tmp_path / "images"
    images.mkdir()
    for index, image in enumerate(test["image"]):
        image.save(images / f"{index:02d}.png")
    query = test[3]["captions"][0]
    result = run_cli("retrieve", "--model", str(folder), "--images", str(images), "--query", query, "--top-k", "3",
                     "--json")  # fmt: skip
    ranked = json.loads(result.stdout)
    assert [hit["rank"] for hit in ranked] == [1, 2, 3]
    inputs = processor(images=list(test["image"]), text=[query])
    with torch.no_grad():
        image_embeds = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        text_embeds = model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).pooler_output
    cosine = (
        torch.nn.functional.normalize(text_embeds, dim=-1) @ torch.nn.functional.normalize(image_embeds, dim=-1).t()
    )
    expected = torch.sort(cosine[0], descending=True, stable=True).indices[:3].tolist()
    assert [int(hit["path"].split("/")[-1][:2]) for hit in ranked] == expected


def test_unreadable_inputs_give_clear_errors(saved, tmp_path):
    _, _, _, _, folder = saved
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli(
        "retrieve", "--model", str(folder), "--images", str(empty), "--query", "a red circle", check=False
    )
    assert result.returncode == 1 and "holds no image files" in result.stderr
    result = run_cli("evaluate", "--model", str(tmp_path / "missing"), check=False)
    assert result.returncode == 1 and "is not a folder" in result.stderr


def test_thread_count_follows_the_cpus_available_and_the_user(monkeypatch, tmp_path):
    from vlalign import threads

    previous = torch.get_num_threads()
    try:
        quota = tmp_path / "cpu.max"
        quota.write_text("100000 100000\n")  # a cgroup quota of one CPU
        monkeypatch.setattr(threads, "CGROUP_CPU_MAX", quota)
        assert threads.available_cpus() == 1
        quota.write_text("max 100000\n")
        assert threads.available_cpus() == len(os.sched_getaffinity(0))

        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv(threads.ENV_VAR, "1")
        assert threads.configure_threads() == 1 == torch.get_num_threads()
        assert threads.configure_threads(2) == 2  # --num-threads wins over the variable
        monkeypatch.setenv(threads.ENV_VAR, "zero")
        with pytest.raises(ValueError, match="VLALIGN_NUM_THREADS='zero' must be a positive integer"):
            threads.configure_threads()
        monkeypatch.delenv(threads.ENV_VAR)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert threads.configure_threads() == 1  # the user's OMP_NUM_THREADS stands
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert 1 <= threads.default_num_threads() <= torch.get_num_threads()  # never more than the user's setting
        torch.set_num_threads(2)
        with threads.thread_limit(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(previous)
