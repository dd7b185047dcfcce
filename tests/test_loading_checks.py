"""Wrong or damaged weights are refused before use (`vlalign.models.weights_check`).

The load matrix: every model class of the four methods × a saved folder of every class of the four methods either
loads by design, with the saving model's features, or is refused before anything is built, in one line naming what
the folder holds and what to call. Damaged safetensors files (truncated, random bytes, corrupt header, flipped bytes
in the data) are refused with the file named; a folder without `weights_checksums.json` loads as before; the checksum
record is written by every saving path (`save_pretrained`, Trainer's `save_model`, `save_for_hub`, `push_to_hub`)
and checked for Hub ids, online and from the offline cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from hub_server import LocalHub, patch_clients
from safetensors.torch import load_file, save_file
from transformers import AutoModel, Trainer, TrainingArguments

import vlalign
from vlalign.hub import save_for_hub
from vlalign.methods import get_method, method_names
from vlalign.models.weights_check import CHECKSUMS_NAME

IMAGE_SIZE = 32
METHODS = method_names()
CAPTIONS = ["a red circle above a blue square", "two green triangles on a white background"]
#: model types whose folders each method's classes load by design: their own, and ALBEF <-> CODIS (CODIS is ALBEF plus
#: a codebook: ALBEF classes drop the codebook, CODIS classes start it random)
LOADS_BY_DESIGN = {"albef": {"albef", "codis"}, "codis": {"codis", "albef"}, "fdt": {"fdt"}, "simla": {"simla"}}
#: (class, folder class) pairs of one method that are refused: a SIMLA retrieval folder has no pretraining heads
REFUSED_IN_FAMILY = {("SimlaForPreTraining", "SimlaForImageTextRetrieval")}


def method_classes(name: str) -> list[type]:
    method = get_method(name)
    return [cls for cls in (method.model_class, method.pretraining_class, method.retrieval_class) if cls is not None]


ALL_CLASSES = [cls for name in METHODS for cls in method_classes(name)]


@pytest.fixture(scope="session")
def saved(tmp_path_factory) -> dict[str, dict]:
    """One tiny saved folder per model class (by class name): its method, folder, and the saving model's image and
    text features on fixed inputs (with those inputs)."""
    root = tmp_path_factory.mktemp("saved_models")
    folders = {}
    for name in METHODS:
        method = get_method(name)
        processor = method.build_processor(method.build_tokenizer(CAPTIONS), IMAGE_SIZE)
        config = method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides)
        inputs = dict(processor.tokenizer(CAPTIONS, padding=True, return_tensors="pt"))
        inputs["pixel_values"] = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
        for cls in method_classes(name):
            torch.manual_seed(0)
            model = cls(config).eval()
            folder = root / cls.__name__
            model.save_pretrained(folder)
            folders[cls.__name__] = {
                "method": name,
                "folder": folder,
                "inputs": inputs,
                "features": features(model, inputs),
            }
    return folders


def features(model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, text) projected embeddings of the online model."""
    online = model.base_model.eval()
    with torch.no_grad():
        image = online.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        text = online.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).pooler_output
    return image, text


def damaged_copy(saved: dict[str, dict], tmp_path: Path, class_name: str = "AlbefModel") -> Path:
    folder = tmp_path / class_name
    shutil.copytree(saved[class_name]["folder"], folder)
    return folder


# ---------------------------------------------------------------------------------------------------------------------
# the load matrix
# ---------------------------------------------------------------------------------------------------------------------


def must_not_build(self, *args, **kwargs):
    raise AssertionError(f"{type(self).__name__} was built from a folder it refuses")


@pytest.mark.parametrize("folder_method", METHODS)
@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda cls: cls.__name__)
def test_load_matrix(saved, cls, folder_method, monkeypatch):
    """Each folder of `folder_method` loads into `cls` with the saving model's features, or is refused in one line
    naming the folder's model type and architecture and the calls that load it."""
    own_method = cls.config_class.model_type
    for folder_class, entry in saved.items():
        if entry["method"] != folder_method:
            continue
        folder = entry["folder"]
        by_design = (
            folder_method in LOADS_BY_DESIGN[own_method] and (cls.__name__, folder_class) not in REFUSED_IN_FAMILY
        )
        if by_design:
            model = cls.from_pretrained(folder)
            assert type(model) is cls
            image, text = features(model, entry["inputs"])
            assert torch.equal(image, entry["features"][0]), (cls.__name__, folder_class)
            assert torch.equal(text, entry["features"][1]), (cls.__name__, folder_class)
            continue
        with monkeypatch.context() as patch, pytest.raises(ValueError) as refused:
            patch.setattr(cls, "__init__", must_not_build)
            cls.from_pretrained(folder)
        if folder_method == own_method:
            continue  # the SIMLA retrieval folder into SimlaForPreTraining: its own test below
        loadable = " or ".join(repr(t) for t in [own_method, *sorted(LOADS_BY_DESIGN[own_method] - {own_method})])
        auto_class = "AutoModelForPreTraining" if cls.__name__.endswith("ForPreTraining") else "AutoModel"
        assert str(refused.value) == (
            f"{folder} holds a model of type '{folder_method}' (architectures ['{folder_class}']), but "
            f"{cls.__name__} loads {loadable} folders: load it with {folder_class}.from_pretrained(...) or "
            f"{auto_class}.from_pretrained(...)."
        )


def test_an_albef_model_loaded_from_a_codis_folder_saves_an_albef_folder(saved, tmp_path):
    """The `codis.` keys renamed on loading stay renamed on saving (not written back as loaded)."""
    model = vlalign.AlbefForPreTraining.from_pretrained(saved["CodisForPreTraining"]["folder"])
    model.save_pretrained(tmp_path)
    assert {key.split(".")[0] for key in load_file(tmp_path / "model.safetensors")} >= {"albef", "vision_model_m"}
    reloaded, info = vlalign.AlbefForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    inputs, expected = saved["CodisForPreTraining"]["inputs"], saved["CodisForPreTraining"]["features"]
    assert all(torch.equal(a, b) for a, b in zip(features(reloaded, inputs), expected, strict=True))
    assert not any(key.startswith("codis.") for key in load_file(tmp_path / "model.safetensors"))


def test_explicit_config_is_checked_against_the_folder(saved):
    simla_folder = saved["SimlaModel"]["folder"]
    config = vlalign.AlbefConfig.from_pretrained(saved["AlbefModel"]["folder"])
    with pytest.raises(ValueError, match=re.escape(f"{simla_folder} holds a model of type 'simla'")):
        vlalign.AlbefModel.from_pretrained(simla_folder, config=config)
    # the same config with its own folder loads as before
    model = vlalign.AlbefModel.from_pretrained(saved["AlbefModel"]["folder"], config=config)
    assert torch.equal(features(model, saved["AlbefModel"]["inputs"])[0], saved["AlbefModel"]["features"][0])


def test_a_simla_retrieval_folder_names_the_missing_pretraining_heads(saved):
    folder = saved["SimlaForImageTextRetrieval"]["folder"]
    with pytest.raises(ValueError) as refused:
        vlalign.SimlaForPreTraining.from_pretrained(folder)
    assert str(refused.value) == (
        f"{folder} holds a model of type 'simla' (architectures ['SimlaForImageTextRetrieval']), saved without "
        "use_pretraining_heads=True, which SimlaForPreTraining needs: load it with "
        "SimlaForImageTextRetrieval.from_pretrained(...) or AutoModel.from_pretrained(...)."
    )


def test_auto_classes_still_pick_the_folders_own_class(saved):
    for class_name in ("AlbefModel", "CodisModel", "FdtModel", "SimlaModel"):
        assert type(AutoModel.from_pretrained(saved[class_name]["folder"])).__name__ == class_name


# ---------------------------------------------------------------------------------------------------------------------
# damaged files
# ---------------------------------------------------------------------------------------------------------------------


def test_every_saved_folder_records_the_sha256_of_its_weights(saved):
    for entry in saved.values():
        record = json.loads((entry["folder"] / CHECKSUMS_NAME).read_text())
        weights = entry["folder"] / "model.safetensors"
        assert record == {
            "algorithm": "sha256",
            "files": {
                "model.safetensors": {
                    "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                    "size": weights.stat().st_size,
                }
            },
        }


def header_length(data: bytes) -> int:
    """The length of a safetensors file's JSON header (its first 8 bytes, little-endian)."""
    return int.from_bytes(data[:8], "little")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: os.urandom(len(data)), id="random-bytes"),
        pytest.param(lambda data: data[:8] + b"{" * header_length(data) + data[8 + header_length(data) :],
                     id="corrupt-header"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("with_record", [True, False], ids=["with-checksums", "without-checksums"])
def test_a_damaged_safetensors_file_is_named(saved, tmp_path, damage, with_record):
    folder = damaged_copy(saved, tmp_path)
    if not with_record:
        (folder / CHECKSUMS_NAME).unlink()
    weights = folder / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(OSError) as refused:
        vlalign.AlbefModel.from_pretrained(folder)
    message = str(refused.value)
    assert message.startswith(f"{weights} is not a complete safetensors file (")
    assert message.endswith(
        "re-save the model, re-download it (from_pretrained(..., force_download=True)) or convert the original "
        "checkpoint again."
    )


def test_flipped_bytes_in_the_data_are_caught_at_load(saved, tmp_path):
    folder = damaged_copy(saved, tmp_path)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8 + header_length(data) + 100] ^= 0xFF  # a byte of the first tensor's data: the header still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(OSError) as refused:
        vlalign.AlbefModel.from_pretrained(folder)
    assert str(refused.value) == (
        f"{weights} does not match the sha256 that {folder / CHECKSUMS_NAME} recorded when it was saved (other bytes "
        "of the same size): the file was damaged or changed after saving; re-save the model, re-download it "
        "(from_pretrained(..., force_download=True)) or convert the original checkpoint again (if you replaced it on "
        f"purpose, delete {CHECKSUMS_NAME})."
    )


def test_a_folder_without_checksums_loads_as_before(saved, tmp_path):
    """Older saves, converted checkpoints and Hub repositories have no record: they load unverified, flipped bytes
    included (nothing to compare them with)."""
    folder = damaged_copy(saved, tmp_path)
    (folder / CHECKSUMS_NAME).unlink()
    model = vlalign.AlbefModel.from_pretrained(folder)
    assert torch.equal(features(model, saved["AlbefModel"]["inputs"])[0], saved["AlbefModel"]["features"][0])
    weights = folder / "model.safetensors"
    state = load_file(weights)
    state["temp"] = state["temp"] + 1
    save_file(state, weights, metadata={"format": "pt"})
    assert vlalign.AlbefModel.from_pretrained(folder).temp.item() == pytest.approx(state["temp"].item())


def test_a_corrupt_checksum_record_is_named(saved, tmp_path):
    folder = damaged_copy(saved, tmp_path)
    (folder / CHECKSUMS_NAME).write_text('{"algorithm": "sha256", "files": ')
    with pytest.raises(OSError, match=re.escape(f"{folder / CHECKSUMS_NAME} is not a valid weights checksum record")):
        vlalign.AlbefModel.from_pretrained(folder)


def test_sharded_weights_are_checked_shard_by_shard(saved, tmp_path):
    torch.manual_seed(0)
    model = vlalign.FdtModel.from_pretrained(saved["FdtModel"]["folder"])
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, max_shard_size="100KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    record = json.loads((folder / CHECKSUMS_NAME).read_text())["files"]
    assert len(shards) > 1 and sorted(record) == sorted(
        [shard.name for shard in shards] + ["model.safetensors.index.json"]
    )
    assert torch.equal(features(vlalign.FdtModel.from_pretrained(folder), saved["FdtModel"]["inputs"])[0],
                       saved["FdtModel"]["features"][0])  # fmt: skip
    data = bytearray(shards[-1].read_bytes())
    data[-1] ^= 0x01
    shards[-1].write_bytes(bytes(data))
    with pytest.raises(OSError, match=re.escape(f"{shards[-1]} does not match the sha256")):
        vlalign.FdtModel.from_pretrained(folder)
    shards[-1].write_bytes(bytes(data[:-10]))
    with pytest.raises(OSError, match=re.escape(f"{shards[-1]} is not a complete safetensors file")):
        vlalign.FdtModel.from_pretrained(folder)


# ---------------------------------------------------------------------------------------------------------------------
# every saving path writes the record; Hub ids are checked online and offline
# ---------------------------------------------------------------------------------------------------------------------


def assert_current_record(folder: Path) -> None:
    record = json.loads((folder / CHECKSUMS_NAME).read_text())["files"]
    assert (
        record["model.safetensors"]["sha256"]
        == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    )


def test_trainer_and_hub_folders_carry_the_record(saved, tmp_path):
    model = vlalign.AlbefForPreTraining.from_pretrained(saved["AlbefForPreTraining"]["folder"])
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "run"), report_to=[]))
    trainer.save_model(str(tmp_path / "trainer"))  # what Trainer's checkpoints save the model with
    assert_current_record(tmp_path / "trainer")
    method = get_method("albef")
    processor = method.build_processor(method.build_tokenizer(CAPTIONS), IMAGE_SIZE)
    hub_folder = save_for_hub(model, processor, tmp_path / "hub", metrics=None, dataset_name="synthetic")
    assert_current_record(hub_folder)


def test_push_to_hub_publishes_the_record_and_hub_ids_are_checked_offline_too(saved, tmp_path, monkeypatch):
    model = vlalign.AlbefModel.from_pretrained(saved["AlbefModel"]["folder"])
    with LocalHub(tmp_path / "hub") as hub:
        patch_clients(hub, monkeypatch, hf_home=tmp_path / "hf-home")
        model.push_to_hub("user/pushed")
        model.save_pretrained(tmp_path / "saved-and-pushed", push_to_hub=True, repo_id="user/saved-and-pushed")
        for repo_id in ("user/pushed", "user/saved-and-pushed"):
            stored = hub.files(repo_id)
            record = json.loads(stored[CHECKSUMS_NAME])["files"]
            assert record["model.safetensors"]["sha256"] == hashlib.sha256(stored["model.safetensors"]).hexdigest()
        online = vlalign.AlbefModel.from_pretrained("user/pushed")
        requests = len(hub.requests)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        offline = vlalign.AlbefModel.from_pretrained("user/pushed")
        assert len(hub.requests) == requests  # served from the cache
    inputs, expected = saved["AlbefModel"]["inputs"], saved["AlbefModel"]["features"][0]
    assert torch.equal(features(online, inputs)[0], expected) and torch.equal(features(offline, inputs)[0], expected)
    cached = next((tmp_path / "hf-home" / "hub").glob("models--user--pushed/snapshots/*/model.safetensors"))
    blob = cached.resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(OSError, match=re.escape(f"{cached} does not match the sha256")):
        vlalign.AlbefModel.from_pretrained("user/pushed")
