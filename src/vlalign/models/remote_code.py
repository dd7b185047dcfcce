"""Saving a model folder that loads without vlalign: code files, `auto_map` and the retrieval pipeline.

This file is shipped with saved models (remote code): it imports only transformers and its siblings.
"""

from __future__ import annotations

from transformers.dynamic_module_utils import custom_object_save

from .pipeline_retrieval import REMOTE_PIPELINE, TASK


class RemoteCodeSaveMixin:
    """`save_pretrained` for a model family registered for remote code (importing vlalign registers every family).

    Whichever class of the family saves the folder, its `config.json` answers every Auto class of the family
    (`remote_code_auto_map`) and names the pipelines shipped beside the code (`remote_code_pipelines`, written as
    `custom_pipelines`: the retrieval pipeline, the VQA pipeline for VQA models), so
    `AutoModel`, `AutoModelForPreTraining`, the zero-shot classification pipeline and the retrieval pipeline all load
    it with `trust_remote_code=True`. The in-memory config is left as it was: in this process the pipeline task is
    registered, and a `custom_pipelines` entry would make `transformers.pipeline` ask for remote code.
    """

    #: Auto class -> "module.Class" of the family, written into `auto_map`
    remote_code_auto_map: dict[str, str] = {}
    #: pipeline task -> its `custom_pipelines` entry (the pipeline file shipped beside the code)
    remote_code_pipelines: dict[str, dict] = {TASK: REMOTE_PIPELINE}

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        config = self.config
        remote_code = type(config)._auto_class is not None
        if not remote_code:
            super().save_pretrained(save_directory, *args, **kwargs)
            return
        saved = {name: getattr(config, name, None) for name in ("auto_map", "custom_pipelines")}
        config.auto_map = {**self.remote_code_auto_map, **(saved["auto_map"] or {})}
        config.custom_pipelines = {task: dict(entry) for task, entry in self.remote_code_pipelines.items()}
        try:
            super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            if saved["custom_pipelines"] is None:
                del config.custom_pipelines
            else:
                config.custom_pipelines = saved["custom_pipelines"]
        if self._auto_class is None:
            custom_object_save(self, save_directory)


def task_auto_map(family_auto_map: dict[str, str], auto_class: str, task_class: str) -> dict[str, str]:
    """The `auto_map` of a saved downstream-task folder (VQA, visual entailment): the family's config, and the task
    class (`module.Class`) for its Auto class and for `AutoModel`. Such a folder carries the task class's file and the
    files it imports, not necessarily the family's other classes (ALBEF's `modeling_albef.py`), so it names only what
    it carries; `AutoModel` is also the Auto class a custom pipeline entry may load the model with."""
    return {"AutoConfig": family_auto_map["AutoConfig"], "AutoModel": task_class, auto_class: task_class}


__all__ = ["RemoteCodeSaveMixin", "task_auto_map"]
