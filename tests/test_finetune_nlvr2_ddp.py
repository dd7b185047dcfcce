"""`examples/finetune_nlvr2.py` under `torch.distributed.run`: two gloo processes train the same model as one process
with the same global batch (ALBEF NLVR2 fixture data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from test_examples import EXAMPLES
from test_finetune_nlvr2 import NLVR, SMALL, convert, weights


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    """2 gloo processes × 2 pairs train the same model as 1 process × 4 (every step sees the 4 pairs): the loss is a
    per-process mean and DDP averages, so the gradients and the EMA agree."""
    original = NLVR / "original"
    folder = convert("nlvr2", original / "checkpoint.pth", original / "NLVR.yaml", tmp_path / "in")
    entries = json.loads((NLVR / "data" / "nlvr_test.json").read_text())
    entries.append({**entries[0], "images": entries[0]["images"][::-1], "label": "False"})  # 4 pairs
    annotations = tmp_path / "train.json"
    annotations.write_text(json.dumps(entries))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    outputs = {}
    for processes, batch in ((1, 4), (2, 2)):
        out = outputs[processes] = tmp_path / f"p{processes}"
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command = [*(launcher if processes > 1 else [sys.executable]), str(EXAMPLES / "finetune_nlvr2.py")]
        args = ["--output_dir", str(out), "--model_name_or_path", str(folder), "--train_json", str(annotations),
                "--image_root", str(NLVR / "data"), *SMALL, "--per_device_train_batch_size", str(batch)]  # fmt: skip
        result = subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-4000:]
    single, double = weights(outputs[1]), weights(outputs[2])
    assert single.keys() == double.keys() and any(name.startswith("cls_head_m.") for name in single)
    for name in single:
        torch.testing.assert_close(double[name], single[name], atol=1e-5, rtol=0, msg=name)
