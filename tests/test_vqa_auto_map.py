"""A saved VQA or text-assignment folder's `auto_map` names only classes whose files the folder carries, under the
method's own config: `AutoConfig`, `AutoModel` and the task's Auto class load it with `trust_remote_code=True` in a
process where vlalign cannot be imported (before, ALBEF's VQA and text-assignment folders named
`modeling_albef.AlbefModel`, a file they do not carry, and a SIMLA VQA folder ALBEF's classes). VE and NLVR2 folders
are checked by `tests/test_ve.py` and `tests/test_nlvr_evaluation.py`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import TINY_TEXT_CONFIG, tiny_albef_config

import vlalign
from vlalign.models import (
    AlbefForTextAssignment,
    CodisForQuestionAnswering,
    CodisForTextAssignment,
    SimlaForQuestionAnswering,
    SimlaForTextAssignment,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["vlalign"] = None  # make `import vlalign` fail in this process
    try:
        import vlalign  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("vlalign is importable; the test would prove nothing")
    import torch
    import transformers
    from transformers import AutoConfig, AutoModel
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    folder, task_auto_class, output_file = sys.argv[1:]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    if hasattr(transformers, task_auto_class):
        task = getattr(transformers, task_auto_class).from_pretrained(folder, trust_remote_code=True)
    else:  # an Auto class vlalign adds: the folder's auto_map entry, as vlalign's Auto class resolves it
        task = get_class_from_dynamic_module(config.auto_map[task_auto_class], folder).from_pretrained(folder)
    torch.save(
        {
            "classes": [type(config).__name__, type(base).__name__, type(task).__name__, type(task).__module__],
            "states": [{k: v for k, v in m.state_dict().items()} for m in (base, task)],
        },
        output_file,
    )
    """
)


def tiny(cls, config_class, **text):
    settings = tiny_albef_config().to_dict()
    settings["text_config"] = {**TINY_TEXT_CONFIG, **text}
    for key in ("model_type", "transformers_version", "architectures", "auto_map"):
        settings.pop(key, None)
    torch.manual_seed(0)
    return cls(config_class(**settings)).eval()


VQA, TA = "AutoModelForVisualQuestionAnswering", "AutoModelForTextAssignment"
#: (task Auto class, method) → (build the model, its config class and module, the class the folder names)
MODELS = {
    (VQA, "albef"): (lambda: vlalign.AlbefForQuestionAnswering(tiny_albef_config()), "modeling_albef_vqa.AlbefForQuestionAnswering"),
    (VQA, "simla"): (lambda: tiny(SimlaForQuestionAnswering, vlalign.SimlaConfig, fusion_layer=0), "modeling_simla.SimlaForQuestionAnswering"),
    (VQA, "codis"): (lambda: tiny(CodisForQuestionAnswering, vlalign.CodisConfig), "modeling_codis.CodisForQuestionAnswering"),
    (TA, "albef"): (lambda: AlbefForTextAssignment(tiny_albef_config()), "modeling_albef_nlvr.AlbefForTextAssignment"),
    (TA, "simla"): (lambda: tiny(SimlaForTextAssignment, vlalign.SimlaConfig, fusion_layer=0), "modeling_simla_nlvr.SimlaForTextAssignment"),
    (TA, "codis"): (lambda: tiny(CodisForTextAssignment, vlalign.CodisConfig), "modeling_codis_nlvr.CodisForTextAssignment"),
}  # fmt: skip


@pytest.mark.parametrize(("auto_class", "method"), list(MODELS), ids=[f"{a[17:]}-{m}" for a, m in MODELS])
def test_saved_task_folder_loads_as_remote_code_without_vlalign(auto_class, method, tmp_path):
    torch.manual_seed(0)
    build, task_class = MODELS[auto_class, method]
    model = build().eval()
    folder = tmp_path / "folder"
    model.save_pretrained(folder)
    config_class = type(model.config).__name__
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": f"configuration_{method}.{config_class}",
        "AutoModel": task_class,
        auto_class: task_class,
    }
    for entry in auto_map.values():  # every file the map names is in the folder
        assert (folder / f"{entry.split('.')[0]}.py").is_file(), entry

    script = tmp_path / "load.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, str(script), str(folder), auto_class, str(tmp_path / "out.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    name = task_class.split(".")[1]
    assert loaded["classes"][:3] == [config_class, name, name]
    assert loaded["classes"][3].startswith("transformers_modules.")
    expected = model.state_dict()
    for state in loaded["states"]:  # the saved weights, every one of them
        assert state.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(state[key], value), key
