"""NLVR2 and text-assignment folders beyond parity: CODIS's conversion (ALBEF's weights under CODIS's name), and the
converted folders loading as remote code where vlalign cannot be imported (ALBEF and SIMLA, both tasks)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from vlalign.auto import AutoModelForTextAssignment, AutoModelForVisualReasoning
from vlalign.models.modeling_codis_nlvr import CodisForTextAssignment, CodisForVisualReasoning

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
TASKS = {  # task → (checkpoint, YAML, Auto class, input names)
    "nlvr2": ("checkpoint.pth", "NLVR.yaml", AutoModelForVisualReasoning, ("pixel_values", "input_ids")),
    "text-assignment": (
        "checkpoint_ta.pth", "NLVR_pretrain.yaml", AutoModelForTextAssignment, ("ta_pixel_values", "ta_input_ids")
    ),
}  # fmt: skip


def convert(fixture: str, method: str, task: str, output: Path) -> Path:
    original = FIXTURES / fixture / "downstream" / "nlvr" / "original"
    checkpoint, yaml_name, _, _ = TASKS[task]
    run_cli(
        "convert", "--method", method, "--task", task, "--checkpoint", str(original / checkpoint),
        "--config", str(original / yaml_name), "--config", str(original / "config_bert.json"),
        "--tokenizer", str(original), "--output", str(output),
    )  # fmt: skip
    return output


def inputs_of(fixture: str, task: str) -> dict[str, torch.Tensor]:
    inputs = load_file(FIXTURES / fixture / "downstream" / "nlvr" / "inputs.safetensors")
    pixels, ids = TASKS[task][3]
    return {"pixel_values": inputs[pixels], "input_ids": inputs[ids]}


def reference_logits(folder: Path, task: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model = TASKS[task][2].from_pretrained(folder).eval()
    rows = torch.arange(len(inputs["input_ids"]))
    extra = {} if task == "nlvr2" else {"pairs": torch.stack([rows, rows.roll(-1)], 1), "labels": rows * 0}
    with torch.no_grad():
        return model(**inputs, **extra).logits


@pytest.mark.parametrize("task", list(TASKS))
def test_codis_converts_albef_checkpoints(task, tmp_path):
    codis = convert("albef", "codis", task, tmp_path / "codis")
    albef = convert("albef", "albef", task, tmp_path / "albef")
    model = TASKS[task][2].from_pretrained(codis)
    assert type(model) is {"nlvr2": CodisForVisualReasoning, "text-assignment": CodisForTextAssignment}[task]
    inputs = inputs_of("albef", task)
    assert torch.equal(reference_logits(codis, task, inputs), reference_logits(albef, task, inputs))


REMOTE = textwrap.dedent(
    """
    import sys
    sys.modules["vlalign"] = None  # make `import vlalign` fail in this process
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    folder, auto_class, inputs_file, output_file = sys.argv[1:]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    cls = get_class_from_dynamic_module(config.auto_map[auto_class], folder)
    model = cls.from_pretrained(folder).eval()
    inputs = torch.load(inputs_file, weights_only=True)
    with torch.no_grad():
        logits = model(**inputs).logits
    torch.save({"module": type(model).__module__, "logits": logits}, output_file)
    """
)


@pytest.mark.parametrize(("fixture", "task"), [("albef", "nlvr2"), ("simla", "text-assignment")])
def test_remote_code_without_vlalign(fixture, task, tmp_path):
    folder = convert(fixture, fixture, task, tmp_path / "folder")
    inputs = inputs_of(fixture, task)
    if task == "text-assignment":
        rows = torch.arange(len(inputs["input_ids"]))
        inputs |= {"pairs": torch.stack([rows, rows.roll(-1)], 1), "labels": rows * 0}
    torch.save(inputs, tmp_path / "inputs.pt")
    script = tmp_path / "load.py"
    script.write_text(REMOTE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    auto_class = TASKS[task][2].__name__
    result = subprocess.run(
        [sys.executable, str(script), str(folder), auto_class, str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    assert loaded["module"].startswith("transformers_modules.")
    torch.testing.assert_close(loaded["logits"], reference_logits(folder, task, inputs_of(fixture, task)))
