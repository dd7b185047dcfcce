"""Old names keep working, with a `FutureWarning` naming the new one: deprecated classes and attributes, and folders
saved before SIMLA's and CODIS's online model was named after its family (state-dict keys `albef.` instead of
`simla.` / `codis.`), in this process and as remote code where vlalign is not importable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import vlalign
from vlalign.methods import get_method
from vlalign.models import modeling_albef
from vlalign.models.modeling_albef_training import AlbefMomentumDistilledModel
from vlalign.models.weights_check import CHECKSUMS_NAME

IMAGE_SIZE = 32
CAPTIONS = ["a red circle above a blue square", "two green triangles on a white background"]


def build(name: str, seed: int = 0):
    """A micro pretraining model of method `name`."""
    method = get_method(name)
    torch.manual_seed(seed)
    tokenizer = method.build_tokenizer(CAPTIONS)
    return method.pretraining_class(method.tiny_config(tokenizer, IMAGE_SIZE, **method.test_overrides))


def save_with_old_keys(model, folder: Path) -> Path:
    """`model` saved as earlier versions saved it: the online model's keys under `albef.`."""
    model.save_pretrained(folder)
    weights = folder / "model.safetensors"
    state = load_file(weights)
    assert any(key.startswith(f"{model.base_model_prefix}.") for key in state)
    old = {re.sub(rf"^{model.base_model_prefix}\.", "albef.", key): value for key, value in state.items()}
    save_file(old, weights, metadata={"format": "pt"})
    (folder / CHECKSUMS_NAME).unlink()  # earlier versions wrote no checksums
    return folder


def assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_deprecated_training_base_name_warns_and_is_the_new_class():
    with pytest.warns(FutureWarning, match="AlbefMomentumDistilledModel"):
        old = modeling_albef.AlbefMomentumMixin
    assert old is AlbefMomentumDistilledModel
    with pytest.warns(FutureWarning, match="AlbefMomentumDistilledModel"):
        from vlalign.models.modeling_albef import AlbefMomentumMixin  # noqa: F401
    with pytest.raises(AttributeError, match="NoSuchName"):
        modeling_albef.NoSuchName  # noqa: B018


@pytest.mark.parametrize("name", ["simla", "codis"])
def test_the_old_online_model_attribute_warns_and_is_the_online_model(name):
    model = build(name)
    with pytest.warns(FutureWarning, match=rf"`\.{name}` \(or `\.base_model`\)"):
        online = model.albef
    assert online is model.base_model is getattr(model, name)
    assert not any(key.startswith("albef.") for key in model.state_dict())


def test_albef_keeps_its_online_model_attribute_without_warning():
    model = build("albef")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model.albef is model.base_model


@pytest.mark.parametrize("name", ["simla", "codis"])
def test_a_folder_with_the_old_keys_loads_with_identical_weights(name, tmp_path):
    method = get_method(name)
    model = build(name)
    folder = save_with_old_keys(model, tmp_path / "old")

    loaded, info = method.pretraining_class.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert_same_weights(loaded.state_dict(), model.state_dict())
    assert_same_weights(method.model_class.from_pretrained(folder).state_dict(), model.base_model.state_dict())
    retrieval = method.retrieval_model_class.from_pretrained(folder).state_dict()
    online = {key: value for key, value in model.state_dict().items() if key in retrieval}
    assert any(key.startswith(f"{name}.vision_model.") for key in online)
    assert_same_weights({key: retrieval[key] for key in online}, online)

    # saved again, the folder has the current names (what Trainer's resume reads back with `load_state_dict`)
    loaded.save_pretrained(tmp_path / "again")
    assert set(load_file(tmp_path / "again" / "model.safetensors")) == set(model.state_dict())


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["vlalign"] = None  # make `import vlalign` fail in this process
    import torch
    from transformers import AutoModelForPreTraining

    folder, output_file = sys.argv[1:]
    model = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    torch.save(model.state_dict(), output_file)
    """
)


@pytest.mark.parametrize("name", ["simla", "codis"])
def test_a_folder_with_the_old_keys_loads_as_remote_code_without_vlalign(name, tmp_path):
    model = build(name)
    assert type(model.config)._auto_class is not None  # importing vlalign registered the family for remote code
    folder = save_with_old_keys(model, tmp_path / "old")
    script = tmp_path / "load.py"
    script.write_text(REMOTE_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "state.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(torch.load(tmp_path / "state.pt", weights_only=True), model.state_dict())


def test_simla_retrieval_model_leaves_the_given_config_alone():
    config = build("simla").config
    before = config.to_dict()
    model = vlalign.SimlaForImageTextRetrieval(config)
    assert config.to_dict() == before and config.use_pretraining_heads and config.vision_config.use_mask_token
    assert not model.config.use_pretraining_heads and not model.config.vision_config.use_mask_token
    assert model.base_model.vision_model.embeddings.mask_token is None and not hasattr(model.base_model, "mim_head")
