"""Publish a vlalign checkpoint: one folder with everything downstream users need, pushed in one commit.

What goes in the folder (`save_for_hub`)::

    model.safetensors, config.json            weights and config (config.json carries the `auto_map`)
    weights_checksums.json                    sha256 of each weights file, verified by `from_pretrained`
    configuration_<m>.py, modeling_<m>.py, ... remote code: the model loads with `trust_remote_code=True`
    processor_config.json, processing_<m>.py  image processor + caption presets, and their code
    tokenizer.json, tokenizer_config.json, tokenization_<m>.py
    README.md                                  the model card (`build_model_card`) with the measured results

Which weights are published: by default the *inference* model, `<Method>Model` (`model.base_model` of a training
model; for ALBEF, `AlbefModel`: the online encoders, ITC projections and temperature and the ITM head). That is
what `AutoModel` and the zero-shot pipeline load; for ALBEF it is about half the size of the training model, whose
momentum encoders, feature queues and MLM head only matter to continue training (and would make `AutoModel` users
download weights it then drops). `include_training_state=True` publishes the training model as it
is instead, for resuming pretraining / fine-tuning from the Hub (`AutoModelForPreTraining`); `AutoModel` still loads
its online part.

Pushing (`push_folder_to_hub`) uploads the folder with `HfApi.upload_folder` rather than `model.push_to_hub`: one
commit holds weights, config, processor, remote code and card together, and transformers' own card writer never
replaces our README.

Pushing for real::

    huggingface-cli login            # or: hf auth login; or export HF_TOKEN=hf_... (a token with write access)

    from vlalign.hub import push_folder_to_hub, save_for_hub
    folder = save_for_hub(model, processor, "albef-coco", metrics=trainer.evaluate(test_set),
                          dataset_name="MS-COCO 5K (Karpathy test)",
                          training_args=trainer.args, model_id="your-name/albef-coco")
    push_folder_to_hub(folder, "your-name/albef-coco")        # creates the repo if needed, then one commit

The repo id is "<user or organisation>/<name>"; the token comes from `token=`, else `HF_TOKEN`, else the stored
login. `endpoint=` (or the `HF_ENDPOINT` environment variable) targets another Hub deployment or mirror.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, HfApi

from ..auto import model_family
from ..files import atomic_folder, normalize_permissions
from .card import build_model_card, save_model_card

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload model, processor and model card (vlalign)"
#: files every published folder must contain besides its method's code files (weights may be sharded instead of
#: `model.safetensors`)
REQUIRED_FILES = ("config.json", "processor_config.json", "tokenizer_config.json", "README.md")
_IGNORE_PATTERNS = ["*.pyc", "*__pycache__*"]


def published_model(model, include_training_state: bool = False):
    """The model whose weights get published: `model` itself with `include_training_state`, else its inference
    part (`model.base_model`, i.e. `model.albef` for the ALBEF training models; an `AlbefModel` is returned as is)."""
    if include_training_state:
        return model
    base = getattr(model, "base_model", model)
    if base is not model:
        logger.info("Publishing %s (the inference model) from %s.", type(base).__name__, type(model).__name__)
    return base


def save_for_hub(
    model,
    processor,
    folder: str | Path,
    *,
    metrics: Mapping[str, Any] | None,
    dataset_name: str,
    dataset_split: str = "test",
    training_args: Any = None,
    model_id: str | None = None,
    base_model: str | None = None,
    include_training_state: bool = False,
    exist_ok: bool = False,
    **card_kwargs: Any,
) -> Path:
    """Save model weights + config + remote code, the processor, and the model card into `folder`.

    Args:
        model: a vlalign model (`<Method>Model`, `<Method>ForPreTraining`, `<Method>ForImageTextRetrieval`).
        processor: its processor.
        folder: output folder; created. It must be empty unless `exist_ok=True` (stale files there would be
            uploaded along with the new ones).
        metrics: measured retrieval metrics (see `build_model_card`), or None.
        dataset_name, dataset_split, training_args, model_id, base_model: passed to `build_model_card`;
            `model_id` should be the repo id you will push to (the card's code examples use it).
        include_training_state: publish the whole training model (momentum encoders, queues, MLM head) instead of
            only the inference model (`model.albef`); see the module docstring.
        exist_ok: allow a non-empty `folder` (files of the same name are overwritten, others stay).
        card_kwargs: further `build_model_card` arguments (`dataset_id`, `training_data`, `license`, `tags`, ...).

    The folder is written completely or not at all ([`vlalign.files.atomic_folder`]): on a write error (disk full,
    read-only, no permission) a `FolderWriteError` names the folder, the reason and the fix, and `folder` keeps
    its previous contents.

    Returns:
        the folder's path.
    """
    if processor is None:
        raise ValueError("save_for_hub needs the model's processor: downstream users cannot preprocess without it.")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a directory.")
    if folder.is_dir() and any(folder.iterdir()) and not exist_ok:
        raise FileExistsError(f"{folder} is not empty; pass exist_ok=True to write into it anyway.")
    # written to a temporary sibling and renamed when complete: a failed write (disk full) leaves `folder` as it was
    with atomic_folder(folder, keep_existing=exist_ok) as staging:
        target = published_model(model, include_training_state)
        # `model.albef` shares its config object with the training model, and save_pretrained writes `architectures`
        # and `auto_map` into it: restore them so publishing leaves the training model untouched.
        config = target.config
        saved_state = {name: getattr(config, name, None) for name in ("architectures", "auto_map")}
        try:
            target.save_pretrained(staging)
        finally:
            for name, value in saved_state.items():
                setattr(config, name, value)
        processor.save_pretrained(staging)

        card = build_model_card(
            target,
            metrics=metrics,
            dataset_name=dataset_name,
            dataset_split=dataset_split,
            training_args=training_args,
            model_id=model_id,
            base_model=base_model,
            tokenizer=getattr(processor, "tokenizer", None),
            **card_kwargs,
        )
        save_model_card(card, staging)
        normalize_permissions(staging)
        _check_folder(staging)
    return folder


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    endpoint: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    commit_description: str | None = None,
    delete_stale_files: bool = False,
) -> CommitInfo:
    """Create `repo_id` if needed (`exist_ok=True`) and upload `folder` to it in one commit.

    Args:
        folder: a folder written by `save_for_hub`.
        repo_id: "namespace/name" (a bare name goes to the token owner's namespace).
        token: Hub token with write access; default: `HF_TOKEN`, then the login stored by `huggingface-cli login`.
        private: visibility of a newly created repo (an existing repo keeps its visibility).
        endpoint: Hub URL; default: `HF_ENDPOINT`, else https://huggingface.co.
        commit_message, commit_description: of the upload commit.
        delete_stale_files: also delete remote files that are not in `folder` (e.g. shards of an older, larger
            upload) so that the repo mirrors the folder; `.gitattributes` is always kept.

    Returns:
        the `CommitInfo` of the upload (a `str`: the commit URL; `.oid` is the commit sha). Uploading unchanged
        files creates no new commit; the current head is returned then.
    """
    folder = Path(folder)
    _check_folder(folder)
    api = HfApi(endpoint=endpoint, token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return api.upload_folder(
        repo_id=repo_url.repo_id,
        folder_path=folder,
        repo_type="model",
        commit_message=commit_message,
        commit_description=commit_description,
        ignore_patterns=_IGNORE_PATTERNS,
        delete_patterns="*" if delete_stale_files else None,
    )


def required_files(folder: Path) -> tuple[str, ...]:
    """The files a publishable folder needs: the common ones and its method's remote code (from `config.json`); the
    modeling file is the one `auto_map` names for the saved class (`modeling_albef_vqa.py` for a VQA model)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        return REQUIRED_FILES
    config = json.loads(config_file.read_text(encoding="utf-8"))
    code = model_family(config.get("model_type")).remote_code_files
    architecture = (config.get("architectures") or [None])[0]
    modeling = {
        f"{reference.split('--')[-1].rsplit('.', 1)[0]}.py"
        for reference in (config.get("auto_map") or {}).values()
        if reference.endswith(f".{architecture}")
    }
    if modeling:
        code = (*(name for name in code if not name.startswith("modeling_")), *sorted(modeling))
    return (*REQUIRED_FILES, *code)


def _check_folder(folder: Path) -> None:
    """Fail before uploading a folder that downstream users could not load."""
    missing = [name for name in required_files(folder) if not (folder / name).is_file()]
    has_weights = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    if not has_weights:
        missing.insert(0, "model.safetensors")
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {missing}. Write it with vlalign.hub.save_for_hub (with vlalign imported, so that the "
            "model classes are registered for remote code and their files are saved)."
        )


__all__ = [
    "DEFAULT_COMMIT_MESSAGE",
    "REQUIRED_FILES",
    "published_model",
    "push_folder_to_hub",
    "required_files",
    "save_for_hub",
]
