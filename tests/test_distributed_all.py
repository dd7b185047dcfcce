"""Every registered method under two gloo processes on CPU (torchrun, 4 samples each) trains like one process holding
the same global batch of 8: over 4 AdamW steps at lr 1e-3 with ITC over the global batch (`itc_global_negatives`;
FDT's loss always gathers), each compared loss term agrees within 1e-5 at every step, the final state dict (weights,
momentum encoders, queues, codebooks, FDT's logit scale and token codebook) within 1e-5, the queue pointers exactly,
and CODIS's codebook assignments (argmax of the image and text transport plans, every sample, every step) exactly.

What is compared, and why the rest legitimately differs (the optimizer steps on the compared terms only; the others
are still computed, with weight 0, see `distributed_all_worker.TRAINED_LOSSES`):

| method | compared                          | computed per process, not compared                    |
|--------|-----------------------------------|-------------------------------------------------------|
| ALBEF  | loss_itc                          | loss_itm, loss_mlm                                    |
| SIMLA  | loss_itc, loss_mim                | loss_itm, loss_mlm, loss_psl                          |
| CODIS  | loss_align, loss_code, loss_ot    | loss_itm, loss_mlm                                    |
| FDT    | loss_itc (its only loss)          | -                                                     |

* ITM (ALBEF, SIMLA, CODIS): the official code samples each process's hard negatives from its local batch, with that
  process's RNG, so a 4-row batch draws other negatives than an 8-row one.
* MLM: the masks come from each process's RNG (every process has the Trainer seed), so rank 1's masks are not the
  ones the single process draws for rows 4-7.
* SIMLA's PSL: the keyword targets are votes over caption positions, [PAD] included (as officially), and the
  collator pads each process's batch to its own longest caption, so the targets depend on the split (at identical
  weights the first step's loss_psl already differs by ~5e-5).

AdamW runs with eps 1e-6 instead of 1e-8: Adam divides each gradient element by its own magnitude, so an element whose
gradient is pure rounding noise (a key bias, which softmax ignores) would move by up to ±lr in a direction the
rounding of a 4-row versus an 8-row batch decides; with eps 1e-6 such noise stays noise. (With SGD FDT's losses agree
within 2e-6; with eps 1e-8 its second step's loss is 2e-4 off through these elements.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_all_worker import MAX_STEPS, TRAINED_LOSSES

from vlalign.methods import get_method, method_names

WORKER = Path(__file__).parent / "distributed_all_worker.py"


def run(output: Path, processes: int, per_device_batch: int, method: str) -> dict:
    output.mkdir(parents=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = launcher if processes > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [*command, str(WORKER), str(output), str(per_device_batch), method],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(output / "result.pt", weights_only=True)


def test_every_method_has_its_compared_losses():
    for name in method_names():
        assert set(TRAINED_LOSSES[name]) <= set(get_method(name).loss_names), name


@pytest.mark.parametrize("method", method_names())
def test_two_processes_train_like_one_process_with_the_same_global_batch(tmp_path, method):
    single = run(tmp_path / "single", 1, 8, method)
    double = run(tmp_path / "double", 2, 4, method)
    assert (single["world_size"], double["world_size"]) == (1, 2)
    assert single["losses"].keys() == double["losses"].keys()
    for name, losses in single["losses"].items():
        assert losses.shape == (MAX_STEPS,) and torch.isfinite(double["losses"][name]).all(), name
        if name in TRAINED_LOSSES[method]:
            torch.testing.assert_close(double["losses"][name], losses, atol=1e-5, rtol=0, msg=name)
    assert single["state"].keys() == double["state"].keys()
    for name, value in single["state"].items():
        if value.is_floating_point():
            torch.testing.assert_close(double["state"][name], value, atol=1e-5, rtol=0, msg=name)
        else:  # queue pointers
            assert torch.equal(double["state"][name], value), name
    if "queue_ptr" in single["state"]:  # 4 steps × 8 samples into a queue of 24: wrapped, every column rewritten
        assert int(single["state"]["queue_ptr"]) == MAX_STEPS * 8 % 24
    assert single["assignments"].keys() == double["assignments"].keys()
    assert bool(single["assignments"]) == (method == "codis")
    for name, assignments in single["assignments"].items():
        assert assignments.shape == (MAX_STEPS, 8)
        assert torch.equal(double["assignments"][name], assignments), name
