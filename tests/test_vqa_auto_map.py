"""A saved VQA folder's `auto_map` names only classes whose files the folder carries, under the method's own config:
`AutoConfig`, `AutoModel` and `AutoModelForVisualQuestionAnswering` load it with `trust_remote_code=True` in a process
where vlalign cannot be imported (before, an ALBEF VQA folder named `modeling_albef.AlbefModel`, a file it does not
carry, and a SIMLA one ALBEF's classes)."""

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
from vlalign.models import CodisForQuestionAnswering, SimlaForQuestionAnswering

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
    from transformers import AutoConfig, AutoModel, AutoModelForVisualQuestionAnswering

    folder, output_file = sys.argv[1:]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    vqa = AutoModelForVisualQuestionAnswering.from_pretrained(folder, trust_remote_code=True).eval()
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(2, 3, 32, 32, generator=generator)
    input_ids = torch.randint(5, 245, (2, 7), generator=generator)
    input_ids[:, 0] = 2
    with torch.no_grad():
        states = [m(pixel_values=pixel_values, input_ids=input_ids).question_states for m in (base, vqa)]
    torch.save(
        {
            "classes": [type(config).__name__, type(base).__name__, type(vqa).__name__, type(vqa).__module__],
            "states": states,
            "pixel_values": pixel_values,
            "input_ids": input_ids,
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


MODELS = {
    "albef": lambda: vlalign.AlbefForQuestionAnswering(tiny_albef_config()).eval(),
    "simla": lambda: tiny(SimlaForQuestionAnswering, vlalign.SimlaConfig, fusion_layer=0),
    "codis": lambda: tiny(CodisForQuestionAnswering, vlalign.CodisConfig),
}
EXPECTED = {
    "albef": ("AlbefConfig", "configuration_albef", "modeling_albef_vqa.AlbefForQuestionAnswering"),
    "simla": ("SimlaConfig", "configuration_simla", "modeling_simla.SimlaForQuestionAnswering"),
    "codis": ("CodisConfig", "configuration_codis", "modeling_codis.CodisForQuestionAnswering"),
}


@pytest.mark.parametrize("method", list(MODELS))
def test_saved_vqa_folder_loads_as_remote_code_without_vlalign(method, tmp_path):
    torch.manual_seed(0)
    model = MODELS[method]()
    folder = tmp_path / "folder"
    model.save_pretrained(folder)
    config_class, config_module, vqa_class = EXPECTED[method]
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": f"{config_module}.{config_class}",
        "AutoModel": vqa_class,
        "AutoModelForVisualQuestionAnswering": vqa_class,
    }
    for entry in auto_map.values():  # every file the map names is in the folder
        assert (folder / f"{entry.split('.')[0]}.py").is_file(), entry

    script = tmp_path / "load.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "out.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    name = vqa_class.split(".")[1]
    assert loaded["classes"][:3] == [config_class, name, name]
    assert loaded["classes"][3].startswith("transformers_modules.")
    with torch.no_grad():
        expected = model(pixel_values=loaded["pixel_values"], input_ids=loaded["input_ids"]).question_states
    for states in loaded["states"]:
        torch.testing.assert_close(states, expected, atol=0, rtol=0)
