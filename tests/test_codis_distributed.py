"""CODIS under two gloo processes on CPU (torchrun) behaves like one process holding the same global batch: the
teacher transport plans are solved on the gathered global batch (each rank keeps its rows), and the alignment (ITC
with `itc_global_negatives`), code and OT losses and their gradients, averaged over the processes, are the
single-process ones. Checked for swapped prediction, assignment contrast, and joint Sinkhorn with queued rows and
teacher-plan OT."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from codis_ddp_worker import compute

from vlalign.models.sinkhorn import sinkhorn_log

WORKER = Path(__file__).parent / "codis_ddp_worker.py"
VARIANTS = ["swapped_prediction", "assignment_contrast", "joint_queue_teacher_ot"]
GLOBAL_BATCH = 8


def run_two_processes(output: Path) -> dict:
    output.mkdir(parents=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [*launcher, str(WORKER), str(output), str(GLOBAL_BATCH)], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(output / "result.pt", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, dict]:
    """(one process, two processes): the reference is computed here, in this process with no process group."""
    double = run_two_processes(tmp_path_factory.mktemp("codis_ddp") / "double")
    assert double["world_size"] == 2
    rng_state = torch.get_rng_state()
    try:
        single = compute(GLOBAL_BATCH)
    finally:
        torch.set_rng_state(rng_state)
    return single, double["variants"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_processes_match_one_process_with_the_same_global_batch(runs, variant):
    single, double = (r[variant] for r in runs)
    for name in ("transport_i2p", "transport_t2p"):
        assert single[name].shape == double[name].shape == (GLOBAL_BATCH, 12)
        torch.testing.assert_close(double[name], single[name], atol=1e-6, rtol=0)
    for name, value in single["losses"].items():
        torch.testing.assert_close(double["losses"][name], value, atol=1e-6, rtol=1e-6, msg=f"{variant}: {name}")
    assert single["grads"].keys() == double["grads"].keys()
    reached = {"codis.codebook.prototypes", "codis.vision_proj.weight", "codis.text_proj.weight"}
    assert reached <= single["grads"].keys()
    for name, grad in single["grads"].items():
        torch.testing.assert_close(double["grads"][name], grad, atol=1e-6, rtol=1e-5, msg=f"{variant}: {name}")


def test_plans_depend_on_the_whole_global_batch(runs):
    """What the comparison above guards: Sinkhorn on one rank's rows alone gives other plans than on the gathered
    batch, so a rank that skipped the gather would fail it."""
    single, _ = runs
    scores = single["swapped_prediction"]["teacher_scores_image"]
    config_epsilon, config_iterations = 0.05, 3  # CodisConfig defaults
    global_plan = sinkhorn_log(scores, config_epsilon, config_iterations)
    torch.testing.assert_close(single["swapped_prediction"]["transport_i2p"], global_plan, atol=1e-6, rtol=0)
    local_plan = sinkhorn_log(scores[: GLOBAL_BATCH // 2], config_epsilon, config_iterations)
    assert (local_plan - global_plan[: GLOBAL_BATCH // 2]).abs().max() > 1e-3
