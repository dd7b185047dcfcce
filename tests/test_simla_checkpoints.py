"""Safe loading of the official SIMLA checkpoints and conversion of the DALL-E dVAE encoder (SIMLA's MIM tokenizer).

Neither omegaconf nor OpenAI's `dall_e` package is installed (nor needed by vlalign): the tests define classes with the
same global names and pickled state in throw-away modules registered in `sys.modules`, save real files with
`torch.save`, then load them with those modules removed again.
"""

from __future__ import annotations

import copy
import pickle
import pickletools
import sys
import types
import typing
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from vlalign.convert.albef import CheckpointError
from vlalign.convert.restricted_unpickle import (
    OMEGACONF_INERT_GLOBALS,
    OMEGACONF_STAND_INS,
    PickledObject,
    load_official_checkpoint,
    load_restricted,
    omegaconf_to_container,
)

SIMLA_ORIGINAL = Path(__file__).parent / "fixtures" / "simla" / "original"


def _register(monkeypatch: pytest.MonkeyPatch, module_name: str, *classes: type) -> None:
    """Expose `classes` as `module_name.<ClassName>` so pickle stores them under that global name."""
    parts = module_name.split(".")
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    module = sys.modules[module_name]
    for cls in classes:
        cls.__module__ = module_name
        monkeypatch.setattr(module, cls.__qualname__, cls, raising=False)


def _pickled_globals(path: Path) -> set[str]:
    """GLOBAL opcodes of a torch zip checkpoint, read with pickletools (nothing is unpickled)."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(name for name in archive.namelist() if name.endswith("data.pkl")))
    return {arg.replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


# --------------------------------------------------------------------------------------------------------------------
# OmegaConf-shaped config (what Hydra's DictConfig pickles: containers holding `_content`, value nodes holding
# `_val`, both with dataclass metadata whose `resolver_cache` is a defaultdict and whose types are typing.Any / dict)


@dataclass
class Metadata:
    ref_type: typing.Any
    object_type: typing.Any
    optional: bool
    key: typing.Any
    flags: dict | None = None
    flags_root: bool = False
    resolver_cache: dict = field(default_factory=lambda: defaultdict(dict))


@dataclass
class ContainerMetadata(Metadata):
    key_type: typing.Any = None
    element_type: typing.Any = None


class _Node:
    def __init__(self, parent: _Node | None, metadata: Metadata) -> None:
        self._metadata = metadata
        self._parent = parent
        self._flags_cache = None

    def __getstate__(self) -> dict:
        state = copy.copy(self.__dict__)
        state.pop("_flags_cache")
        return state


class DictConfig(_Node):
    pass


class ListConfig(_Node):
    pass


class AnyNode(_Node):
    pass


class StringNode(_Node):
    pass


class IntegerNode(_Node):
    pass


class FloatNode(_Node):
    pass


class BooleanNode(_Node):
    pass


def _to_omegaconf(value: typing.Any, parent: _Node | None = None, key: typing.Any = None) -> _Node:
    """Build the DictConfig/ListConfig/value-node tree OmegaConf would hold for a plain value."""
    if isinstance(value, dict):
        node = DictConfig(
            parent, ContainerMetadata(typing.Any, dict, True, key, {"struct": True} if parent is None else {})
        )
        node._content = {k: _to_omegaconf(v, node, k) for k, v in value.items()}
        return node
    if isinstance(value, list):
        node = ListConfig(parent, ContainerMetadata(typing.Any, list, True, key, {}))
        node._content = [_to_omegaconf(v, node, i) for i, v in enumerate(value)]
        return node
    node_class = {bool: BooleanNode, int: IntegerNode, float: FloatNode, str: StringNode}.get(type(value), AnyNode)
    node = node_class(parent, Metadata(typing.Any, None, True, key, {}))
    node._val = value
    return node


@pytest.fixture
def omegaconf_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, "omegaconf.base", Metadata, ContainerMetadata)
    _register(monkeypatch, "omegaconf.dictconfig", DictConfig)
    _register(monkeypatch, "omegaconf.listconfig", ListConfig)
    _register(monkeypatch, "omegaconf.nodes", AnyNode, StringNode, IntegerNode, FloatNode, BooleanNode)


def _save_with_omegaconf_config(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict]:
    """Re-save the fixture checkpoint with its config as an OmegaConf DictConfig, as the released pretrain file has."""
    original = torch.load(SIMLA_ORIGINAL / "checkpoint.pth", map_location="cpu", weights_only=True)
    config = dict(original["config"], interpolated="${image_res}", tags=["a", 1, 2.5, None, True])
    torch.save(dict(original, config=_to_omegaconf(config)), path)
    return original, config


def test_fixture_checkpoint_loads():
    state_dict, config = load_official_checkpoint(SIMLA_ORIGINAL / "checkpoint.pth")
    assert len(state_dict) == 732
    assert sum(t.numel() for t in state_dict.values()) == 455194
    assert state_dict["text_encoder.bert.embeddings.word_embeddings.weight"].shape == (201, 32)
    assert state_dict["mim_head.weight"].shape == (64, 32)
    assert config["image_res"] == 32 and config["mim_vocab_size"] == 64
    assert config["optimizer"] == {"opt": "adamW", "lr": 0.0001, "weight_decay": 0.02}


def test_omegaconf_config_is_read_as_plain_dict(tmp_path, monkeypatch, omegaconf_classes):
    path = tmp_path / "pretrain.pth"
    original, expected_config = _save_with_omegaconf_config(path, monkeypatch)
    monkeypatch.undo()  # omegaconf disappears again: loading must not need it
    assert "omegaconf" not in sys.modules

    pickled = _pickled_globals(path)
    assert {"omegaconf.dictconfig.DictConfig", "omegaconf.nodes.AnyNode", "collections.defaultdict"} <= pickled
    with pytest.raises(pickle.UnpicklingError, match="omegaconf"):
        torch.load(path, weights_only=True)  # what the plain safe load does with such a file

    state_dict, config = load_official_checkpoint(path)
    assert config == expected_config
    assert type(config) is dict and type(config["optimizer"]) is dict and type(config["tags"]) is list
    assert state_dict.keys() == original["model"].keys()
    for key, tensor in original["model"].items():
        torch.testing.assert_close(state_dict[key], tensor, rtol=0, atol=0)


class _Payload:
    """Pickles as a call to os.system (stored as `posix.system` on Linux) that would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


class _Gadget:
    pass


def test_other_globals_are_refused_without_running(tmp_path, monkeypatch, omegaconf_classes):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "config": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"the global posix\.system"):
        load_official_checkpoint(path)
    assert not marker.exists()

    # a global next to the allow-listed OmegaConf ones (same package) is refused as well, by name
    _register(monkeypatch, "omegaconf.gadgets", _Gadget)
    torch.save({"model": {"w": torch.zeros(1)}, "config": _to_omegaconf({"a": 1}), "extra": _Gadget()}, path)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"the global omegaconf\.gadgets\._Gadget"):
        load_official_checkpoint(path)


def test_allow_list_is_exact(tmp_path, monkeypatch, omegaconf_classes):
    path = tmp_path / "config_only.pth"
    torch.save(_to_omegaconf({"a": {"b": [1, 2]}}), path)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"the global omegaconf\.base\.ContainerMetadata"):
        load_restricted(path, ["omegaconf.dictconfig.DictConfig"])
    loaded = load_restricted(path, OMEGACONF_STAND_INS, OMEGACONF_INERT_GLOBALS)
    assert isinstance(loaded, PickledObject) and loaded.global_name == "omegaconf.dictconfig.DictConfig"
    assert type(loaded).__module__ == "vlalign.convert.restricted_unpickle"  # a stand-in, not a resolved class
    assert loaded.attributes["_metadata"].attributes["flags"] == {"struct": True}
    assert omegaconf_to_container(loaded) == {"a": {"b": [1, 2]}}
