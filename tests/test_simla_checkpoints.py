"""Safe loading of the official SIMLA checkpoints and conversion of the DALL-E dVAE encoder (SIMLA's MIM tokenizer).

Neither omegaconf nor OpenAI's `dall_e` package is installed (nor needed by vlalign): the tests define classes with the
same global names and pickled state in throw-away modules registered in `sys.modules`, save real files with
`torch.save`, then load them with those modules removed again.
"""

from __future__ import annotations

import copy
import math
import pickle
import pickletools
import sys
import types
import typing
import zipfile
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import FlavaImageCodebook

from vlalign.convert.albef import CheckpointError
from vlalign.convert.dvae import convert_dalle_encoder, convert_dalle_state_dict, read_dalle_encoder
from vlalign.convert.restricted_unpickle import (
    OMEGACONF_INERT_GLOBALS,
    OMEGACONF_STAND_INS,
    PickledObject,
    load_official_checkpoint,
    load_restricted,
    omegaconf_to_container,
)

SIMLA_ORIGINAL = Path(__file__).parent / "fixtures" / "simla" / "original"
SIMLA_RETRIEVAL = Path(__file__).parent / "fixtures" / "simla" / "retrieval"


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


def _save_with_omegaconf_config(path: Path, zip_format: bool = True) -> tuple[dict, dict]:
    """Re-save the fixture checkpoint with its config as an OmegaConf DictConfig, as the released pretrain file has."""
    original = torch.load(SIMLA_ORIGINAL / "checkpoint.pth", map_location="cpu", weights_only=True)
    config = dict(original["config"], interpolated="${image_res}", tags=["a", 1, 2.5, None, True])
    torch.save(dict(original, config=_to_omegaconf(config)), path, _use_new_zipfile_serialization=zip_format)
    return original, config


def test_fixture_checkpoints_load():
    state_dict, config = load_official_checkpoint(SIMLA_ORIGINAL / "checkpoint.pth")
    assert len(state_dict) == 732
    assert sum(t.numel() for t in state_dict.values()) == 455194
    assert state_dict["text_encoder.bert.embeddings.word_embeddings.weight"].shape == (201, 32)
    assert state_dict["mim_head.weight"].shape == (64, 32)
    assert config["image_res"] == 32 and config["mim_vocab_size"] == 64
    assert config["optimizer"] == {"opt": "adamW", "lr": 0.0001, "weight_decay": 0.02}

    state_dict, config = load_official_checkpoint(SIMLA_RETRIEVAL / "checkpoint_retrieval_layout.pth")
    assert (
        len(state_dict) == 709
        and "idx_queue" in state_dict
        and "text_encoder.embeddings.word_embeddings.weight" in state_dict
    )
    assert config["image_res"] == 48 and config["k_test"] == 3 and config["vit_mask_token"] is False


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_omegaconf_config_is_read_as_plain_dict(tmp_path, monkeypatch, omegaconf_classes, zip_format):
    path = tmp_path / "pretrain.pth"
    original, expected_config = _save_with_omegaconf_config(path, zip_format)
    monkeypatch.undo()  # omegaconf disappears again: loading must not need it
    assert "omegaconf" not in sys.modules

    if zip_format:
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


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_other_globals_are_refused_without_running(tmp_path, monkeypatch, omegaconf_classes, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save(
        {"model": {"w": torch.zeros(1)}, "config": _Payload(marker)}, path, _use_new_zipfile_serialization=zip_format
    )
    with pytest.raises(CheckpointError, match=r"the global posix\.system"):
        load_official_checkpoint(path)
    assert not marker.exists()

    # a global next to the allow-listed OmegaConf ones (same package) is refused as well, by name
    _register(monkeypatch, "omegaconf.gadgets", _Gadget)
    checkpoint = {"model": {"w": torch.zeros(1)}, "config": _to_omegaconf({"a": 1}), "extra": _Gadget()}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=zip_format)
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


# --------------------------------------------------------------------------------------------------------------------
# DALL-E dVAE encoder: a tiny module with the pickled layout of OpenAI's `dall_e.encoder.Encoder` (convolutions with
# parameters `w`/`b`, residual blocks with `id_path` and a `res_path` of relu/conv pairs, four groups, output conv)


class Conv2d(nn.Module):
    def __init__(self, n_in: int, n_out: int, kw: int, use_float16: bool = True) -> None:
        super().__init__()
        self.n_in, self.n_out, self.kw, self.use_float16 = n_in, n_out, kw, use_float16
        self.device, self.requires_grad = torch.device("cpu"), False
        self.w = nn.Parameter(torch.randn(n_out, n_in, kw, kw) / math.sqrt(n_in * kw**2), requires_grad=False)
        self.b = nn.Parameter(0.1 * torch.randn(n_out), requires_grad=False)


class EncoderBlock(nn.Module):
    def __init__(self, n_in: int, n_out: int, n_layers: int) -> None:
        super().__init__()
        self.n_in, self.n_out, self.n_layers = n_in, n_out, n_layers
        self.n_hid, self.post_gain = n_out // 4, 1 / n_layers**2
        self.id_path = Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = [n_in, self.n_hid, self.n_hid, self.n_hid, n_out]
        layers = OrderedDict()
        for j, kw in enumerate([3, 3, 3, 1], start=1):
            layers[f"relu_{j}"] = nn.ReLU()
            layers[f"conv_{j}"] = Conv2d(widths[j - 1], widths[j], kw)
        self.res_path = nn.Sequential(layers)


class Encoder(nn.Module):
    def __init__(self, n_hid: int, n_blk_per_group: int, vocab_size: int, input_channels: int = 3) -> None:
        super().__init__()
        self.group_count, self.n_hid, self.n_blk_per_group = 4, n_hid, n_blk_per_group
        self.input_channels, self.vocab_size, self.use_mixed_precision = input_channels, vocab_size, True
        self.device, self.requires_grad = torch.device("cpu"), False
        n_layers = self.group_count * n_blk_per_group
        blocks = OrderedDict(input=Conv2d(input_channels, n_hid, 7))
        widths = [n_hid, n_hid, 2 * n_hid, 4 * n_hid, 8 * n_hid]
        for g in range(1, 5):
            group = OrderedDict(
                (f"block_{i + 1}", EncoderBlock(widths[g - 1] if i == 0 else widths[g], widths[g], n_layers))
                for i in range(n_blk_per_group)
            )
            if g < 4:
                group["pool"] = nn.MaxPool2d(kernel_size=2)
            blocks[f"group_{g}"] = nn.Sequential(group)
        blocks["output"] = nn.Sequential(
            OrderedDict(relu=nn.ReLU(), conv=Conv2d(8 * n_hid, vocab_size, 1, use_float16=False))
        )
        self.blocks = nn.Sequential(blocks)


def reference_dvae_encoder(state_dict: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """The DALL-E encoder forward written out: 7×7 input conv; per group, blocks x ↦ id(x) + res(x)/L² with
    res = (ReLU, conv3, ReLU, conv3, ReLU, conv3, ReLU, conv1) and id a 1×1 conv where widths change, then a 2×2
    max-pool (not after the last group); ReLU and a 1×1 conv to the codebook logits. Convs pad to keep the size."""

    def conv(x: torch.Tensor, name: str) -> torch.Tensor:
        weight = state_dict[f"{name}.w"]
        return F.conv2d(x, weight, state_dict[f"{name}.b"], padding=(weight.shape[-1] - 1) // 2)

    n_blocks = len({key.split(".")[2] for key in state_dict if key.startswith("blocks.group_1.block_")})
    post_gain = 1 / (4 * n_blocks) ** 2
    hidden = conv(pixels, "blocks.input")
    for g in range(1, 5):
        for i in range(1, n_blocks + 1):
            block = f"blocks.group_{g}.block_{i}"
            identity = conv(hidden, f"{block}.id_path") if f"{block}.id_path.w" in state_dict else hidden
            residual = hidden
            for j in range(1, 5):
                residual = conv(F.relu(residual), f"{block}.res_path.conv_{j}")
            hidden = identity + post_gain * residual
        if g < 4:
            hidden = F.max_pool2d(hidden, 2)
    return conv(F.relu(hidden), "blocks.output.conv")


@pytest.fixture
def dall_e_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, "dall_e.utils", Conv2d)
    _register(monkeypatch, "dall_e.encoder", EncoderBlock, Encoder)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")
def test_dalle_encoder_converts_to_flava_codebook(tmp_path, monkeypatch, dall_e_classes, zip_format):
    torch.manual_seed(0)
    encoder = Encoder(n_hid=8, n_blk_per_group=2, vocab_size=16)
    path = tmp_path / "encoder.pkl"
    torch.save(encoder, path, _use_new_zipfile_serialization=zip_format)  # the file's format is not documented
    original = {key: value.clone() for key, value in encoder.state_dict().items()}
    monkeypatch.undo()
    assert "dall_e" not in sys.modules
    if zip_format:
        assert {"dall_e.encoder.Encoder", "dall_e.utils.Conv2d"} <= _pickled_globals(path)

    state_dict, hyperparameters = read_dalle_encoder(path)
    assert state_dict.keys() == original.keys()
    assert hyperparameters["n_hid"] == 8 and hyperparameters["vocab_size"] == 16

    model = convert_dalle_encoder(path, tmp_path / "codebook")
    assert (tmp_path / "codebook" / "model.safetensors").is_file()
    reloaded = FlavaImageCodebook.from_pretrained(tmp_path / "codebook")
    assert (reloaded.config.hidden_size, reloaded.config.num_blocks_per_group, reloaded.config.vocab_size) == (
        8,
        2,
        16,
    )
    converted = reloaded.state_dict()
    assert len(converted) == len(original)
    for key, tensor in convert_dalle_state_dict(original).items():
        torch.testing.assert_close(converted[key], tensor, rtol=0, atol=0)

    pixels = 0.8 * torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) + 0.1  # map_pixels range
    with torch.no_grad():
        expected = reference_dvae_encoder(original, pixels)
        logits = reloaded(pixels)
        torch.testing.assert_close(model(pixels), logits, rtol=0, atol=0)
    assert logits.shape == (3, 16, 4, 4)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    assert torch.equal(reloaded.get_codebook_indices(pixels), expected.argmax(dim=1))


def test_dalle_encoder_with_foreign_module_is_refused(tmp_path, monkeypatch, dall_e_classes):
    encoder = Encoder(n_hid=4, n_blk_per_group=1, vocab_size=8)
    encoder.blocks.input = nn.Conv2d(3, 4, 7, padding=3)  # torch's Conv2d is not part of the DALL-E layout
    torch.save(encoder, tmp_path / "encoder.pkl")
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"the global torch\.nn\.modules\.conv\.Conv2d"):
        convert_dalle_encoder(tmp_path / "encoder.pkl")
    with pytest.raises(CheckpointError, match="Unexpected parameter 'blocks.group_1.block_1.extra.w'"):
        convert_dalle_state_dict({"blocks.group_1.block_1.extra.w": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="not a pickled dall_e.encoder.Encoder"):
        read_dalle_encoder(SIMLA_ORIGINAL / "checkpoint.pth")


def test_unreadable_files_raise_checkpoint_error(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"model": {"w": torch.arange(6.0)}}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_official_checkpoint(path)[0]["w"], torch.arange(6.0))
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match="truncated"):
        load_official_checkpoint(path)
    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        load_official_checkpoint(path)
