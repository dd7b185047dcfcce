"""Wrong or damaged weights are refused before a model is built from them.

`from_pretrained` of every vlalign model first reads the folder's `config.json` and refuses, in one line, a folder
holding another method's model (naming what it holds and what to call instead), then checks each safetensors file it
is about to load: a file whose header does not describe a complete file (truncated, random bytes, corrupt header) and
a file whose content differs from the sha256 that `save_pretrained` recorded beside it (`weights_checksums.json`:
flipped bytes) are refused with the file named. A folder without that record (older saves, converted checkpoints, Hub
repositories without it) loads as before.

Hub ids resolve through transformers' own file resolution (`cached_file`) at the revision resolved once, as
`from_pretrained` itself does, so an offline cache keeps working and no request is added beyond fetching the small
checksum file with the others.

This file is shipped with saved models (remote code): it imports only the standard library, safetensors and
transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

from safetensors import SafetensorError, safe_open
from transformers import PreTrainedConfig
from transformers.modeling_utils import _add_variant
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

try:
    from transformers.utils.hub import resolve_revision
except ImportError:  # transformers before resolve_revision: every file resolves the revision again, as it did there

    def resolve_revision(path_or_repo_id, revision=None, **kwargs):
        return revision


#: the record of each weights file's sha256 and size, written by `save_pretrained` beside the weights
CHECKSUMS_NAME = "weights_checksums.json"
CHECKSUM_ALGORITHM = "sha256"
#: `from_pretrained` arguments that say where files come from (passed on to transformers' resolution)
_DOWNLOAD_ARGUMENTS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")
_WEIGHTS_FILE = re.compile(r"model([-.].*)?\.safetensors(\.index(\..+)?\.json)?")
_FIX = (
    "re-save the model, re-download it (from_pretrained(..., force_download=True)) or convert the original checkpoint "
    "again"
)


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file, read in 8 MiB blocks (the hash the Hub records for large files, too)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 23):
            digest.update(block)
    return digest.hexdigest()


def write_weights_checksums(folder: str | os.PathLike) -> None:
    """Record the sha256 and size of every weights file in `folder` (`model*.safetensors` and their index, variants
    and shards included) in `weights_checksums.json`, written to a temporary name and renamed into place."""
    names = sorted(name for name in os.listdir(folder) if _WEIGHTS_FILE.fullmatch(name))
    if not names:
        return
    record = {
        "algorithm": CHECKSUM_ALGORITHM,
        "files": {
            name: {
                "sha256": file_sha256(os.path.join(folder, name)),
                "size": os.path.getsize(os.path.join(folder, name)),
            }
            for name in names
        },
    }
    path = os.path.join(folder, CHECKSUMS_NAME)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def _resolve(path_or_repo_id: str, name: str, download: dict[str, Any]) -> str | None:
    """The local path of `name` in a folder or Hub repository (cache or download), None where there is none."""
    return cached_file(
        path_or_repo_id,
        name,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **download,
    )


def _weights_files(path_or_repo_id: str, download: dict[str, Any], variant: str | None) -> dict[str, str]:
    """The safetensors files `from_pretrained` loads, as {name: local path}: the single file, else the index and
    its shards (resolved the way transformers looks for them); empty where there are none."""
    single = _add_variant(SAFE_WEIGHTS_NAME, variant)
    if (local := _resolve(path_or_repo_id, single, download)) is not None:
        return {single: local}
    index_name = _add_variant(SAFE_WEIGHTS_INDEX_NAME, variant)
    if (index := _resolve(path_or_repo_id, index_name, download)) is None:
        return {}
    try:
        with open(index, encoding="utf-8") as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise OSError(f"{index} is not a valid safetensors index ({error!r}): {_FIX}.") from error
    resolved = {name: _resolve(path_or_repo_id, name, download) for name in shards}
    return {index_name: index, **{name: local for name, local in resolved.items() if local is not None}}


def _recorded_checksums(
    path_or_repo_id: str, download: dict[str, Any]
) -> tuple[str, dict[str, tuple[str, int]]] | None:
    """(path of `weights_checksums.json`, its {file name: (sha256, size)}), or None where the folder has none."""
    if (record_path := _resolve(path_or_repo_id, CHECKSUMS_NAME, download)) is None:
        return None
    try:
        with open(record_path, encoding="utf-8") as handle:
            record = json.load(handle)
        if record["algorithm"] != CHECKSUM_ALGORITHM:
            raise ValueError(f"algorithm {record['algorithm']!r}, expected {CHECKSUM_ALGORITHM!r}")
        return record_path, {name: (entry["sha256"], entry["size"]) for name, entry in record["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise OSError(
            f"{record_path} is not a valid weights checksum record ({error!r}): re-save the model, or delete the file "
            "to load the weights unverified."
        ) from error


def check_weights_files(path_or_repo_id: str, download: dict[str, Any], variant: str | None = None) -> None:
    """Raise an `OSError` naming the file and the fix when a safetensors file `from_pretrained` will load is not a
    complete safetensors file, or differs from the size and sha256 `weights_checksums.json` records for it."""
    files = _weights_files(path_or_repo_id, download, variant)
    for local in files.values():
        if local.endswith(".safetensors"):
            try:
                with safe_open(local, framework="pt"):
                    pass
            except SafetensorError as error:
                raise OSError(
                    f"{local} is not a complete safetensors file ({error}): it was truncated or damaged after it "
                    f"was written; {_FIX}."
                ) from error
    if (recorded := _recorded_checksums(path_or_repo_id, download)) is None:
        return
    record_path, checksums = recorded
    for name, local in files.items():
        if name not in checksums:
            continue
        (sha256, saved_size), size = checksums[name], os.path.getsize(local)
        if size != saved_size or file_sha256(local) != sha256:
            found = f"{size} bytes, saved {saved_size}" if size != saved_size else "other bytes of the same size"
            raise OSError(
                f"{local} does not match the sha256 that {record_path} recorded when it was saved ({found}): the "
                f"file was damaged or changed after saving; {_FIX} (if you replaced it on purpose, delete "
                f"{CHECKSUMS_NAME})."
            )


def _folder_config(path_or_repo_id: str, download: dict[str, Any], required: bool) -> dict[str, Any] | None:
    """The folder's `config.json` as a dict; None where it has none and `required` is False (an explicit config)."""
    try:
        return PreTrainedConfig.get_config_dict(path_or_repo_id, **download)[0]
    except OSError:
        if required:
            raise
        return None


class WeightsCheckMixin:
    """`from_pretrained` that refuses wrong or damaged weights before building the model, and `save_pretrained` that
    records the checksums which make damage detectable (see the module docstring).

    A folder loads by design when its `model_type` is the class's own or one of `also_loads_model_types` (another
    family whose weights carry over: its online model's keys `<model_type>.` are renamed to this family's
    `base_model_prefix`), and it has every value of `required_config_values`; anything else is refused with one
    line naming what the folder holds and what to call.
    """

    #: model types of other families whose saved folders this family's classes load by design (the weights carry over)
    also_loads_model_types: tuple[str, ...] = ()
    #: config values this class cannot be built without (a folder saved with other values is refused before building)
    required_config_values: dict[str, Any] = {}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' `from_pretrained`, after the folder's model and weights files are checked (see the class
        docstring); the revision of a Hub id is resolved once here and passed on, so every file comes from the same
        commit and transformers asks the Hub no second time."""
        path = pretrained_model_name_or_path
        if path is None or os.path.isfile(path) or kwargs.get("gguf_file") or kwargs.get("state_dict") is not None:
            return super().from_pretrained(path, *args, **kwargs)
        path = str(path)
        kwargs["revision"] = resolve_revision(
            path,
            kwargs.get("revision", "main"),
            token=kwargs.get("token"),
            local_files_only=kwargs.get("local_files_only", False),
            cache_dir=kwargs.get("cache_dir"),
        )
        download = {name: kwargs[name] for name in _DOWNLOAD_ARGUMENTS if name in kwargs}
        folder_config = _folder_config(path, download, required=kwargs.get("config") is None)
        if folder_config is not None:
            cls._check_folder_model(path, folder_config, kwargs)
            model_type = folder_config.get("model_type")
            if model_type in cls.also_loads_model_types:
                renaming = {rf"^{re.escape(model_type)}\.": f"{cls.base_model_prefix}."}
                kwargs["key_mapping"] = {**renaming, **(kwargs.get("key_mapping") or {})}
        if kwargs.get("use_safetensors") is not False:
            check_weights_files(path, download, kwargs.get("variant"))
        return super().from_pretrained(path, *args, **kwargs)

    @classmethod
    def _check_folder_model(cls, path: str, folder_config: dict[str, Any], kwargs: dict[str, Any]) -> None:
        """Raise a one-line `ValueError` when the folder holds a model this class does not load by design. Towers
        (classes of a sub-config, `base_config_key`) are building blocks shared across families and load as in
        transformers (their own folders, and their part of a whole-model folder): only whole models are checked."""
        if cls.config_class.base_config_key:
            return
        model_type = folder_config.get("model_type")
        own_type = cls.config_class.model_type
        loadable = (own_type, *cls.also_loads_model_types)
        config = kwargs.get("config")
        values = folder_config | kwargs if not isinstance(config, PreTrainedConfig) else config.to_dict()
        missing = {name: value for name, value in cls.required_config_values.items() if values.get(name) != value}
        if model_type is None or (model_type in loadable and not missing):
            return
        architectures = folder_config.get("architectures") or []
        holds = f"a model of type {model_type!r} (architectures {architectures})"
        if model_type in loadable:  # the Auto class of this class's role would pick this class again
            needs = ", ".join(f"{name}={value!r}" for name, value in missing.items())
            reason, auto_class = f"saved without {needs}, which {cls.__name__} needs", "AutoModel"
        else:
            reason = f"but {cls.__name__} loads {' or '.join(repr(t) for t in loadable)} folders"
            auto_class = getattr(cls, "_auto_class", None) or "AutoModel"
        calls = [f"{name}.from_pretrained(...)" for name in architectures[:1]] + [f"{auto_class}.from_pretrained(...)"]
        raise ValueError(f"{path} holds {holds}, {reason}: load it with {' or '.join(calls)}.")

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """transformers' `save_pretrained` in the current key layout, then `weights_checksums.json` beside the
        weights (on the main process; with `push_to_hub=True` it is written before the upload, by
        `_upload_modified_files`). transformers would write renamed keys back as they were loaded
        (`save_original_format`): an ALBEF model loaded from a CODIS folder would save `codis.` keys, and `Trainer`
        resumes with `load_state_dict`, which reads only the current names."""
        kwargs.setdefault("save_original_format", False)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True) and not kwargs.get("push_to_hub") and os.path.isdir(save_directory):
            write_weights_checksums(save_directory)

    def _upload_modified_files(self, working_dir, *args, **kwargs):
        """transformers' upload of a saved folder (`push_to_hub`), with the checksums of the weights just written."""
        write_weights_checksums(working_dir)
        return super()._upload_modified_files(working_dir, *args, **kwargs)


__all__ = ["CHECKSUMS_NAME", "WeightsCheckMixin", "check_weights_files", "file_sha256", "write_weights_checksums"]
