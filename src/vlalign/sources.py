"""Where a `--model`/`--tokenizer` argument comes from: a local folder, the local Hub cache, or the Hub — decided in
seconds. Without this, `from_pretrained("org/name")` with no network retries for minutes and some classes (tokenizers)
then quietly build an empty object instead of failing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import constants, model_info, snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

#: seconds the Hub gets to answer the reachability probe
PROBE_TIMEOUT = 5.0


class SourceError(ValueError):
    """A model or tokenizer argument that names nothing loadable (no folder, not cached, Hub unreachable)."""


def resolve_pretrained(name: str | Path, flag: str) -> str:
    """A local folder for `name` (as given, or its cached Hub snapshot), or the Hub id itself once the Hub answered.

    Args:
        name: a folder or a Hub repo id ("org/name").
        flag: how the user passed it (e.g. "--model"), for the error message.

    Raises:
        SourceError: `name` is neither a folder nor a repo id, or is a repo id that is not cached while the Hub is
            unreachable (or `HF_HUB_OFFLINE` is set), or does not exist on the Hub.
    """
    path = Path(name)
    if path.is_dir():
        return str(path)
    if path.exists() or path.is_absolute() or str(name).startswith((".", "~")) or str(name).count("/") > 1:
        raise SourceError(f"{flag} {name} is not a folder; pass a folder written by save_pretrained, or a Hub id.")
    fix = f"download it where the Hub is reachable and pass the local folder ({flag} path/to/folder)"
    try:
        cached = snapshot_download(str(name), local_files_only=True)
    except HFValidationError as error:
        raise SourceError(f"{flag} {name} is neither a folder nor a valid Hub repo id ({error}).") from None
    except (LocalEntryNotFoundError, OSError):
        cached = None
    if constants.HF_HUB_OFFLINE:
        if cached is None:
            raise SourceError(
                f"{flag} {name}: not a local folder and not in the Hub cache, and HF_HUB_OFFLINE is set; {fix}."
            )
        return cached
    try:
        model_info(str(name), timeout=PROBE_TIMEOUT)
    except RepositoryNotFoundError:
        raise SourceError(f"{flag} {name}: no such repository on the Hub (or it is private); check the id.") from None
    except Exception as error:  # connection, DNS, timeout, proxy: the Hub client raises transport-specific types
        if cached is not None:
            return cached
        raise SourceError(
            f"{flag} {name}: not a local folder and the Hub is unreachable ({type(error).__name__}: {error}); {fix}."
        ) from None
    return str(name)


def check_vocabulary(tokenizer: Any, source: str) -> None:
    """Refuse a tokenizer with no word in its vocabulary (only special tokens): what transformers builds, without an
    error, from a folder that lacks its vocab file. Every word would become [UNK]."""
    words = set(tokenizer.get_vocab()) - set(tokenizer.all_special_tokens)
    if not words:
        raise SourceError(
            f"The tokenizer of {source} has no vocabulary (only its {len(tokenizer)} special tokens): its vocab file "
            "(vocab.txt / tokenizer.json) is missing or empty. Restore it, or pass a folder that has it."
        )


def check_safetensors(folder: str | Path) -> None:
    """Open the header of every `.safetensors` file of a folder; a truncated or corrupt one is named."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            raise SourceError(
                f"{file} is truncated or corrupt ({error}); download or copy it again, or re-save the model."
            ) from None


def load_saved_model(name: str | Path, flag: str = "--model") -> tuple[Any, Any]:
    """The downstream model (`AutoModel`, in eval mode) and processor of a saved vlalign folder or Hub repo, after
    checking that it is one: a vlalign model type, readable weights, a tokenizer with a vocabulary."""
    from transformers import AutoModel, AutoProcessor, PreTrainedConfig

    from .auto import MODEL_FAMILIES

    source = resolve_pretrained(name, flag)
    if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        raise SourceError(f"{flag} {name} has no config.json; pass a folder written by save_pretrained.")
    model_type = PreTrainedConfig.get_config_dict(source)[0].get("model_type")
    if model_type not in MODEL_FAMILIES:
        raise SourceError(
            f"{flag} {name} holds a {model_type!r} model, not a vlalign one ({', '.join(sorted(MODEL_FAMILIES))}); pass a "
            "folder written by a vlalign model's save_pretrained or by `vlalign convert`."
        )
    if Path(source).is_dir():
        check_safetensors(source)
    model = AutoModel.from_pretrained(source).eval()
    processor = AutoProcessor.from_pretrained(source)
    check_vocabulary(processor.tokenizer, f"{flag} {name}")
    return model, processor


__all__ = [
    "PROBE_TIMEOUT",
    "SourceError",
    "check_safetensors",
    "check_vocabulary",
    "load_saved_model",
    "resolve_pretrained",
]
