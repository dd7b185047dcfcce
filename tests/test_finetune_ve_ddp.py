"""`examples/finetune_ve.py` under `torch.distributed.run`: two gloo processes train the same model as one process
with the same global batch (ALBEF SNLI-VE fixture data)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_examples import EXAMPLES
from test_finetune_ve import DATA, SMALL, VE, convert, weights


@pytest.fixture(scope="module")
def ve_folder(tmp_path_factory) -> Path:
    original = VE / "original"
    return convert("ve", original / "checkpoint.pth", [original / "VE.yaml"], tmp_path_factory.mktemp("ve") / "in")


def test_two_processes_equal_one_process_with_the_same_global_batch(ve_folder, tmp_path):
    """2 gloo processes × 2 pairs train the same model as 1 process × 4: the loss is a per-process mean and DDP
    averages, so the gradients and the EMA agree."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    outputs = {}
    for processes, batch in ((1, 4), (2, 2)):
        out = outputs[processes] = tmp_path / f"p{processes}"
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command = [*(launcher if processes > 1 else [sys.executable]), str(EXAMPLES / "finetune_ve.py")]
        args = ["--output_dir", str(out), "--model_name_or_path", str(ve_folder), *DATA, *SMALL]
        args += ["--per_device_train_batch_size", str(batch)]
        result = subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-4000:]
    single, double = weights(outputs[1]), weights(outputs[2])
    assert single.keys() == double.keys()
    for name in single:
        torch.testing.assert_close(double[name], single[name], atol=1e-5, rtol=0, msg=name)
