"""Retrieval evaluation over two gloo processes on CPU (torchrun) returns what one process returns: the same ITC
similarities, the same re-rank scores at every query's top-k (the ITM re-rank is sharded unevenly over the processes
and gathered) and the same recalls. Checked for a fusion model with ITM (ALBEF) and a dual encoder (FDT)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).parent / "eval_ddp_worker.py"
RECALLS = ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean")


def evaluate(output: Path, processes: int, method: str) -> dict:
    output.mkdir(parents=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [*(launcher if processes > 1 else [sys.executable]), str(WORKER), str(output), method],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(output / "result.pt", weights_only=True)


@pytest.mark.parametrize("method", ["albef", "fdt"])
def test_two_processes_evaluate_like_one(tmp_path, method):
    single = evaluate(tmp_path / "single", 1, method)
    double = evaluate(tmp_path / "double", 2, method)
    assert (single["world_size"], double["world_size"]) == (1, 2)
    assert single["num_itm_pairs"] == double["num_itm_pairs"]
    if method == "albef":
        assert single["num_itm_pairs"] % 2 == 1  # uneven shards: the second process scores one pair fewer
    else:
        assert single["num_itm_pairs"] == 0  # a dual encoder ranks by ITC only
    torch.testing.assert_close(double["similarities"], single["similarities"], atol=1e-6, rtol=0)
    for name in ("score_matrix_i2t", "score_matrix_t2i"):
        torch.testing.assert_close(double[name], single[name], atol=1e-5, rtol=0)
    assert {key: double[key] for key in RECALLS} == {key: single[key] for key in RECALLS}
    assert (single["num_images"], single["num_texts"]) == (6, 12)
