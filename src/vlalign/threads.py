"""torch's CPU thread count from the CPUs this process can actually use.

torch starts one thread per core of the machine, ignoring CPU affinity, cgroup quotas and other busy processes. When
its threads outnumber the CPUs the process really gets, every parallel region waits for a descheduled thread and
training slows down many-fold (measured on 2 cores: 40 quick-start steps took 5.6 s alone, 91 s next to one busy
process with the default 2 threads, 27.8 s with 1). `configure_threads` is called by the entry points (the `vlalign`
CLI, the quick start) only, never at import, so a library user's own setting stands.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

#: environment variable that sets vlalign's thread count
ENV_VAR = "VLALIGN_NUM_THREADS"
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
LOADAVG = Path("/proc/loadavg")


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota when one is set."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota != "max":
        cpus = min(cpus, max(1, math.floor(int(quota) / int(period))))
    return cpus


def idle_cpus(samples: int = 5, interval: float = 0.01) -> int | None:
    """CPUs of the machine not taken by other runnable processes right now (`/proc/loadavg`'s running count, minus
    this process, smallest over a few samples); None where the kernel does not report it."""
    busy = []
    for _ in range(samples):
        try:
            running = int(LOADAVG.read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        busy.append(running - 1)
        time.sleep(interval)
    return (os.cpu_count() or 1) - min(busy)


def default_num_threads() -> int:
    """The available CPUs, less those other processes keep busy, at least 1 and at most torch's current count."""
    idle = idle_cpus()
    cpus = available_cpus() if idle is None else min(available_cpus(), idle)
    return max(1, min(cpus, torch.get_num_threads()))


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op thread count and return it.

    Precedence: `num_threads` (`--num-threads`), then `VLALIGN_NUM_THREADS`, then an `OMP_NUM_THREADS` the user set
    (kept as torch read it), then `default_num_threads()`. The default never raises the count, so a lower
    `torch.set_num_threads` of the user stands.
    """
    if num_threads is None and os.environ.get(ENV_VAR):
        value = os.environ[ENV_VAR]
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{ENV_VAR}={value!r} must be a positive integer (a thread count).")
        num_threads = int(value)
    if num_threads is None:
        num_threads = torch.get_num_threads() if os.environ.get("OMP_NUM_THREADS") else default_num_threads()
    if num_threads < 1:
        raise ValueError(f"The thread count must be a positive integer, got {num_threads}.")
    torch.set_num_threads(num_threads)
    return num_threads


@contextmanager
def thread_limit(num_threads: int | None = None) -> Iterator[int]:
    """`configure_threads` for the duration of a block; torch's previous count is restored afterwards."""
    previous = torch.get_num_threads()
    try:
        yield configure_threads(num_threads)
    finally:
        torch.set_num_threads(previous)


__all__ = ["ENV_VAR", "available_cpus", "configure_threads", "default_num_threads", "idle_cpus", "thread_limit"]
