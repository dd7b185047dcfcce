"""A converted folder loads with `trust_remote_code=True` in a process where vlalign cannot be imported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch
from conftest import ALBEF_FIXTURES
from safetensors.torch import load_file
from transformers import AutoModelForPreTraining

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
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForPreTraining, AutoProcessor

    folder, inputs_file, output_file = sys.argv[1:]
    inputs = load_file(inputs_file)
    model = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    batch = processor(text=["A dog is playing with a red ball in the park."], preset="pretrain")
    with torch.no_grad():
        image_feat = base.get_image_features(inputs["pixel_values"]).pooler_output
        itm = model.albef.itm_logits(
            model.albef.text_model(inputs["input_ids"], inputs["attention_mask"]).last_hidden_state,
            inputs["attention_mask"],
            model.albef.vision_model(inputs["pixel_values"]).last_hidden_state,
        )
    torch.save(
        {
            "classes": [type(model).__module__, type(base).__name__, type(processor).__name__],
            "image_feat": image_feat,
            "itm": itm,
            "input_ids": batch["input_ids"],
        },
        output_file,
    )
    """
)


def test_trust_remote_code_without_vlalign(converted_pretrain_dir, tmp_path):
    script = tmp_path / "load.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            str(converted_pretrain_dir),
            str(ALBEF_FIXTURES / "inputs.safetensors"),
            str(tmp_path / "out.pt"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    module, base_class, processor_class = loaded["classes"]
    assert module.startswith("transformers_modules.") and base_class == "AlbefModel"
    assert processor_class == "AlbefProcessor"

    local = AutoModelForPreTraining.from_pretrained(converted_pretrain_dir).eval()
    inputs = load_file(ALBEF_FIXTURES / "inputs.safetensors")
    with torch.no_grad():
        expected_feat = local.albef.get_image_features(inputs["pixel_values"]).pooler_output
    torch.testing.assert_close(loaded["image_feat"], expected_feat, atol=0, rtol=0)
    expected = load_file(ALBEF_FIXTURES / "outputs.safetensors")
    torch.testing.assert_close(loaded["itm"], expected["itm_logits_pos"], atol=1e-5, rtol=0)
    assert loaded["input_ids"][0].tolist() == load_file(ALBEF_FIXTURES / "inputs.safetensors")["input_ids"][0].tolist()
