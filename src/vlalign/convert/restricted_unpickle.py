"""Load PyTorch checkpoints that pickle objects beyond tensors, without running any of their code.

The released SIMLA pretraining checkpoint stores its Hydra config as an OmegaConf `DictConfig`, and OpenAI's DALL-E
dVAE files (SIMLA's MIM tokenizer) pickle whole `nn.Module` objects; `torch.load(weights_only=True)` refuses both.
Rather than falling back to `weights_only=False`, this module keeps torch's weights-only unpickler and allow-lists
exactly the globals such files need, each bound to an inert stand-in class (`PickledObject`) that only records the
pickled state: no method of the original class runs and no other global resolves. Anything else is refused with a
`CheckpointError` naming the global.
"""

from __future__ import annotations

import _compat_pickle
import pickle
import re
import typing
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import torch

from .albef import CheckpointError

__all__ = [
    "OMEGACONF_INERT_GLOBALS",
    "OMEGACONF_STAND_INS",
    "PickledObject",
    "load_official_checkpoint",
    "load_restricted",
    "omegaconf_to_container",
    "stand_in",
]


class PickledObject:
    """Inert stand-in for an instance of an allow-listed class: keeps the constructor arguments and pickled state.

    Subclasses made by `stand_in` carry the original global name; unpickling only calls `__new__` (records `args`)
    and `__setstate__` (records `state`), so nothing from the original class is imported or executed.
    """

    global_name: ClassVar[str] = ""

    def __new__(cls, *args: Any) -> PickledObject:
        instance = super().__new__(cls)
        instance.args = args
        instance.state = None
        return instance

    def __setstate__(self, state: Any) -> None:
        self.state = state

    @property
    def attributes(self) -> dict[str, Any]:
        """The pickled instance `__dict__` (plus slot state, if any); empty when the state is not a mapping."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2:
            return {**(state[0] or {}), **(state[1] or {})}
        return dict(state) if isinstance(state, Mapping) else {}

    def __repr__(self) -> str:
        return f"PickledObject({self.global_name})"


_STAND_INS: dict[str, type[PickledObject]] = {}


def stand_in(global_name: str) -> type[PickledObject]:
    """The (cached) `PickledObject` subclass registered under `global_name`, e.g. `"omegaconf.dictconfig.DictConfig"`."""
    if global_name not in _STAND_INS:
        name = global_name.rsplit(".", 1)[-1]
        _STAND_INS[global_name] = type(name, (PickledObject,), {"global_name": global_name})
    return _STAND_INS[global_name]


def _plain_dict(default_factory: Any = None) -> dict:
    """`collections.defaultdict` stand-in: the weights-only unpickler only fills plain dicts, and a stored cache's
    factory is irrelevant once loaded."""
    return {}


#: OmegaConf classes whose instances a pickled `DictConfig` holds (containers, value nodes, node metadata)
OMEGACONF_STAND_INS = (
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.Metadata",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode",
    "omegaconf.nodes.BytesNode",
)

#: type references in OmegaConf node metadata (`ref_type`, `object_type`, `key_type`, `element_type`) and the
#: metadata's `resolver_cache` defaultdict; all inert when resolved or called
OMEGACONF_INERT_GLOBALS: dict[str, Any] = {
    "typing.Any": typing.Any,
    "typing.Dict": typing.Dict,  # noqa: UP006 - the object OmegaConf pickles, not an annotation
    "typing.List": typing.List,  # noqa: UP006
    "builtins.dict": dict,
    "builtins.list": list,
    "builtins.str": str,
    "builtins.int": int,
    "builtins.float": float,
    "builtins.bool": bool,
    "builtins.bytes": bytes,
    "collections.defaultdict": _plain_dict,
}


#: what torch's legacy (pre-1.6, non-zip) format pickles around tensors; the zip format's weights-only unpickler
#: allows the same set by default
_LEGACY_TORCH_GLOBALS: dict[str, Any] = {
    "collections.OrderedDict": OrderedDict,
    "torch._utils._rebuild_tensor": torch._utils._rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "torch.device": torch.device,
    "builtins.set": set,
    **{
        f"torch.{kind}Storage": torch.serialization.StorageType(f"{kind}Storage")
        for kind in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
    },
}
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C


class _LegacyUnpickler(pickle.Unpickler):
    """Reads torch's legacy format: globals resolve only through `allowed`; persistent ids give storages (filled
    afterwards from the file) or, for pickled modules, their (stand-in) class, ignoring the saved source text."""

    def __init__(self, file: BinaryIO, allowed: Mapping[str, Any], storages: dict[str, Any]) -> None:
        super().__init__(file)
        self.allowed, self.storages = allowed, storages

    def find_class(self, module: str, name: str) -> Any:
        # protocol-2 pickles name builtins by their Python 2 modules (`__builtin__.set`)
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if f"{module}.{name}" in self.allowed:
            return self.allowed[f"{module}.{name}"]
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        kind = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":
            return pid[1]
        if kind != "storage" or len(pid) != 6 or pid[5] is not None:
            raise pickle.UnpicklingError(f"Unsupported persistent id {kind!r} in a legacy checkpoint.")
        _, storage_type, key, _location, numel, _ = pid
        if key not in self.storages:
            nbytes = numel * torch._utils._element_size(storage_type.dtype)
            self.storages[key] = torch.storage.TypedStorage(
                wrap_storage=torch.UntypedStorage(nbytes), dtype=storage_type.dtype, _internal=True
            )
        return self.storages[key]


def _load_legacy(path: Path, allowed: Mapping[str, Any]) -> Any:
    """torch's legacy layout: pickles of the magic number, format version, system info, the object and the storage
    keys, then per key an int64 element count and the raw little-endian bytes."""
    storages: dict[str, Any] = {}
    with path.open("rb") as file:
        if _LegacyUnpickler(file, {}, storages).load() != _LEGACY_MAGIC_NUMBER:
            raise ValueError("not a PyTorch checkpoint (neither a zip archive nor the legacy format)")
        _LegacyUnpickler(file, {}, storages).load()  # format version
        sys_info = _LegacyUnpickler(file, {}, storages).load()
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
            raise ValueError("big-endian legacy checkpoints are not supported")
        result = _LegacyUnpickler(file, {**_LEGACY_TORCH_GLOBALS, **allowed}, storages).load()
        for key in _LegacyUnpickler(file, {}, storages).load():
            storage = storages[key]._untyped_storage
            numel = int.from_bytes(file.read(8), "little")
            data = file.read(numel * torch._utils._element_size(storages[key].dtype))
            if len(data) != storage.nbytes():
                raise EOFError(f"storage {key} is truncated")
            storage.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8).untyped_storage())
    return result


def load_restricted(
    path: str | Path, stand_ins: Iterable[str] = (), inert_globals: Mapping[str, Any] | None = None
) -> Any:
    """`torch.load(path, weights_only=True)` that also resolves the globals in `stand_ins` (to `stand_in` classes)
    and in `inert_globals` (to the given objects), and nothing else.

    Zip checkpoints go through torch's weights-only unpickler; the legacy format (which torch refuses to read for
    pickled modules) through a stdlib unpickler with the same allow-list plus torch's tensor-rebuild globals.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    allowed = [(stand_in(name), name) for name in stand_ins]
    allowed += [(obj, name) for name, obj in (inert_globals or {}).items()]
    try:
        if not zipfile.is_zipfile(path):
            return _load_legacy(path, {name: obj for obj, name in allowed})
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL (\S+)", str(error))
        what = f"the global {refused.group(1)}" if refused else f"an object it cannot rebuild ({error})"
        allowed_names = sorted({name for _, name in allowed})
        raise CheckpointError(
            f"{path} pickles {what}, which vlalign refuses to load: no code from a checkpoint is run, and besides "
            f"tensors and plain containers only these globals are read (as inert stand-ins): {allowed_names}. "
            "Re-save the checkpoint with plain tensors and dicts."
        ) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {error})."
        ) from error


def omegaconf_to_container(node: Any) -> Any:
    """Turn stand-ins of OmegaConf `DictConfig`/`ListConfig`/value nodes into plain dicts, lists and scalars.

    Interpolations (`"${...}"`) and missing values (`"???"`) stay as the strings OmegaConf stores.
    """
    if isinstance(node, PickledObject) and node.global_name.startswith("omegaconf."):
        attributes = node.attributes
        node = attributes["_content"] if "_content" in attributes else attributes.get("_val")
    if isinstance(node, PickledObject):
        raise CheckpointError(f"Cannot read a {node.global_name} as a config value.")
    if isinstance(node, Mapping):
        return {key: omegaconf_to_container(value) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return [omegaconf_to_container(value) for value in node]
    return node


def load_official_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an official ALBEF-family container (`{'model', 'config', 'optimizer', ...}`, or a bare state dict).

    Returns the model's tensors and the config as a plain dict (`{}` when the file has none), whether the config was
    saved as a dict (fine-tuned SIMLA) or as an OmegaConf `DictConfig` (SIMLA pretraining).
    """
    checkpoint = load_restricted(path, OMEGACONF_STAND_INS, OMEGACONF_INERT_GLOBALS)
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not any(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors (neither at the top level nor under 'model').")
    config = omegaconf_to_container(checkpoint.get("config", {})) if "model" in checkpoint else {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} stores its config as {type(config).__name__}, expected a mapping.")
    return {key: value for key, value in state_dict.items() if isinstance(value, torch.Tensor)}, config
