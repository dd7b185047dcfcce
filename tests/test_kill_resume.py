"""Kill and resume, for every registered method: a training process killed with SIGKILL at a random step after its
first checkpoint, then resumed with `resume_from_checkpoint=True`, ends with a state dict (weights, momentum encoders,
queues and pointers, codebooks) bitwise equal to an uninterrupted run's. Checkpoints are written atomically (a save
killed halfway leaves only a staging folder, which the resume ignores and removes), and a truncated, corrupt or
incomplete checkpoint is refused with an error naming the file and the previous checkpoint."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from kill_resume_worker import MARKER, MAX_STEPS, SAVE_STEPS, build_trainer
from transformers.trainer_utils import get_last_checkpoint

from vlalign.methods import method_names
from vlalign.training.trainer import STAGING_PREFIX, verify_checkpoint

WORKER = Path(__file__).parent / "kill_resume_worker.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def start(method: str, output: Path, *flags: str) -> subprocess.Popen:
    log = open(output.parent / f"{output.name}.stderr", "w")  # noqa: SIM115 (the child process owns it)
    return subprocess.Popen(
        [sys.executable, str(WORKER), method, str(output), *flags],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=ENV,
    )  # fmt: skip


def run_to_end(method: str, output: Path, *flags: str, processes: int = 1) -> dict[str, torch.Tensor]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    result = subprocess.run(
        [*(launcher if processes > 1 else [sys.executable]), str(WORKER), method, str(output), *flags],
        capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(output / "final_state.pt", weights_only=True)


def kill_at_marker(process: subprocess.Popen, marker: str, delay: float = 0.0) -> None:
    """Read the worker's stdout up to the line `marker` (answering every step handshake), then SIGKILL it after
    `delay` seconds."""
    for line in process.stdout:
        if line.startswith(f"{MARKER} step"):
            process.stdin.write("go\n")
            process.stdin.flush()
        if line.strip() == f"{MARKER} {marker}":
            time.sleep(delay)
            break
    else:
        pytest.fail(f"the worker ended before printing {marker!r}")
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL


def assert_bitwise_equal(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(got[name], expected[name])]
    assert not different, f"differ from the uninterrupted run: {different}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final state of an uninterrupted run, per method (computed once)."""
    runs: dict[str, dict[str, torch.Tensor]] = {}

    def get(method: str) -> dict[str, torch.Tensor]:
        if method not in runs:
            runs[method] = run_to_end(method, tmp_path_factory.mktemp(method) / "straight")
        return runs[method]

    return get


@pytest.mark.parametrize("method", method_names())
def test_killed_run_resumes_bitwise_equal(method, uninterrupted, tmp_path):
    expected = uninterrupted(method)
    rng = random.Random(f"kill-resume-{method}")
    # "step N" is printed before step N's checkpoint is saved: from N = SAVE_STEPS + 1 on, one is complete
    kill_after = rng.randint(SAVE_STEPS + 1, MAX_STEPS - 2)
    output = tmp_path / "run"
    kill_at_marker(start(method, output, "--handshake"), f"step {kill_after}", delay=rng.uniform(0.0, 0.05))
    assert not (output / "final_state.pt").exists()
    last = get_last_checkpoint(output)
    assert last is not None and SAVE_STEPS <= int(last.rsplit("-", 1)[1]) <= kill_after + 1
    assert_bitwise_equal(run_to_end(method, output, "--resume"), expected)
    assert not list(output.glob(f"{STAGING_PREFIX}*"))


def test_save_killed_halfway_leaves_no_checkpoint_and_resume_takes_the_previous_one(uninterrupted, tmp_path):
    expected = uninterrupted("albef")
    output = tmp_path / "run"
    kill_at_marker(start("albef", output, "--handshake", "--slow-save", "6"), "saving 6")
    staging = output / f"{STAGING_PREFIX}checkpoint-6"
    assert (staging / "checkpoint-6" / "model.safetensors").is_file()  # the save was under way ...
    assert not (staging / "checkpoint-6" / "trainer_state.json").exists()
    assert not (output / "checkpoint-6").exists()  # ... and left nothing that looks like a checkpoint
    assert get_last_checkpoint(output) == str(output / "checkpoint-3")
    assert_bitwise_equal(run_to_end("albef", output, "--resume"), expected)
    assert not staging.exists()  # removed by the resume
    assert sorted(p.name for p in output.iterdir() if p.is_dir()) == ["checkpoint-3", "checkpoint-6", "checkpoint-8"]


def test_two_processes_write_complete_checkpoints_and_resume_exactly(tmp_path):
    """Both processes write into the staging folder (each its RNG state), the main one renames it once both are
    done, and a 2-process resume from the first checkpoint ends bitwise equal to the uninterrupted 2-process run."""
    output = tmp_path / "run"
    expected = run_to_end("albef", output, processes=2)
    assert not list(output.glob(f"{STAGING_PREFIX}*"))
    for step in (3, 6, 8):
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (output / f"checkpoint-{step}").iterdir()}
        verify_checkpoint(str(output / f"checkpoint-{step}"))
    for name in ("checkpoint-6", "checkpoint-8"):
        shutil.rmtree(output / name)
    (output / "final_state.pt").unlink()
    assert_bitwise_equal(run_to_end("albef", output, "--resume", processes=2), expected)


@pytest.fixture(scope="module")
def checkpoints(uninterrupted, tmp_path_factory) -> Path:
    """An ALBEF output folder with complete checkpoints 3, 6 and 8."""
    uninterrupted("albef")
    folder = next(tmp_path_factory.getbasetemp().glob("albef*/straight"))
    assert {"checkpoint-3", "checkpoint-6"} <= {p.name for p in folder.iterdir()}
    return folder


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGES = {
    "model.safetensors": (truncate, "truncated or corrupt"),
    "optimizer.pt": (truncate, "truncated or corrupt"),
    "scheduler.pt": (Path.unlink, "is missing"),
    "rng_state.pth": (flip_a_byte, "CRC mismatch"),
    "trainer_state.json": (truncate, "not valid JSON"),
}


@pytest.mark.parametrize("name", list(DAMAGES))
def test_damaged_checkpoint_is_refused_naming_the_file_and_the_previous_checkpoint(checkpoints, tmp_path, name):
    output = tmp_path / "run"
    for step in (3, 6):
        shutil.copytree(checkpoints / f"checkpoint-{step}", output / f"checkpoint-{step}")
    verify_checkpoint(str(output / "checkpoint-6"))
    damage, problem = DAMAGES[name]
    damage(output / "checkpoint-6" / name)
    message = rf"checkpoint-6: {name} .*{problem}.*Resume from .*checkpoint-3, the previous checkpoint"
    with pytest.raises(ValueError, match=message):
        verify_checkpoint(str(output / "checkpoint-6"))
    if name == "optimizer.pt":  # the trainer checks before it loads anything
        with pytest.raises(ValueError, match=message):
            build_trainer("albef", str(output)).train(resume_from_checkpoint=True)


def test_flipped_bytes_in_the_weights_are_refused_by_their_recorded_checksum(checkpoints, tmp_path):
    """A flip inside the weights' data region leaves a valid safetensors file; the sha256 record catches it."""
    output = tmp_path / "run"
    for step in (3, 6):
        shutil.copytree(checkpoints / f"checkpoint-{step}", output / f"checkpoint-{step}")
    flip_a_byte(output / "checkpoint-6" / "model.safetensors")
    message = (
        r"checkpoint-6: the model weights differ from what was saved \(.*model.safetensors does not match the sha256"
    )
    with pytest.raises(ValueError, match=message + r".*Resume from .*checkpoint-3, the previous checkpoint"):
        verify_checkpoint(str(output / "checkpoint-6"))


def test_damaged_only_checkpoint_says_to_start_again(checkpoints, tmp_path):
    folder = tmp_path / "checkpoint-3"
    shutil.copytree(checkpoints / "checkpoint-3", folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="model.safetensors is missing.*start the training again"):
        verify_checkpoint(str(folder))
