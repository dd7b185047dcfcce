"""The training-step worker protocol of `vs_official.py`, shared by the method workers (`<method>_step_worker.py`).

A worker holds one implementation, the official model (imported from `--official-src` in a Python with the official
code's dependencies) or vlalign's converted from the official model's initial weights, and answers JSON commands on
stdin with one `@@`-prefixed JSON line each: `{"cmd": "steps", "n": 3, "bf16": false}` (n AdamW steps on the spec's
batch: seconds per step and the losses), `{"cmd": "itc"}` (the ITC loss with dropout off, a deterministic function of
the weights), `{"cmd": "rss"}` (peak resident memory) and `{"cmd": "quit"}`.

A method worker defines `official_model(spec, src)` and `vlalign_model(spec)`, each returning `(model, loss)` where
`loss(batch) -> (total loss tensor, ITC loss float)`; a `loss.duties(before: bool)` attribute, when present, runs the
model's per-step duties around the optimizer step (momentum update, queues).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from against_official.worker_client import reply


def current_rss_mib() -> float:
    """This process's resident memory now (Linux `/proc/self/status`)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status (Linux only)")


def join_single_process_group(directory: str) -> None:
    """A one-process gloo group (file rendezvous in `directory`), so that the official codes' distributed gathers
    (ALBEF/SIMLA queues, FDT embeddings) run unmodified as gathers over one process."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{directory}/gloo_init", rank=0, world_size=1)


def training_duties(model) -> Callable[[bool], None]:
    """`loss.duties` for a vlalign model: its `before_optimizer_step` / `after_optimizer_step` with a step count, as
    `AlignmentTrainer` calls them."""
    step = {"count": 0}

    def duties(before: bool) -> None:
        (model.before_optimizer_step if before else model.after_optimizer_step)(step["count"])
        step["count"] += not before

    return duties


def run_steps(model, loss_fn, optimizer, batch: dict, n: int, bf16: bool) -> dict:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    duties = getattr(loss_fn, "duties", None)
    itc, losses = [], []
    start = time.perf_counter()
    for _ in range(n):
        with autocast:
            loss, loss_itc = loss_fn(batch)
        loss.backward()
        if duties:
            duties(before=True)
        optimizer.step()
        if duties:
            duties(before=False)
        optimizer.zero_grad(set_to_none=True)
        itc.append(loss_itc)
        losses.append(loss.item())
    return {"seconds_per_step": (time.perf_counter() - start) / n, "loss_itc": itc, "loss": losses}


def serve(official_model: Callable, vlalign_model: Callable) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", choices=["official", "vlalign"], required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--official-src")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="vlalign only: recompute activations")
    parser.add_argument("--attn-implementation", help="vlalign only: e.g. eager (default: the model's, sdpa)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = json.loads(Path(args.spec).read_text())
    from safetensors.torch import load_file

    model, loss_fn = official_model(spec, args.official_src) if args.impl == "official" else vlalign_model(spec)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if args.attn_implementation:
        model.set_attn_implementation(args.attn_implementation)
    model.train()
    batch = load_file(str(Path(spec["dir"]) / "batch.safetensors"))
    weight_decay = spec.get("weight_decay", 0.02)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=spec["lr"], weight_decay=weight_decay
    )
    reply(ready=True, parameters=sum(p.numel() for p in model.parameters()), rss_mib=current_rss_mib())
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        if command["cmd"] == "rss":
            reply(peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        elif command["cmd"] == "itc":
            model.eval()
            with torch.no_grad():
                reply(loss_itc=loss_fn(batch)[1])
            model.train()
        else:
            reply(**run_steps(model, loss_fn, optimizer, batch, command["n"], command["bf16"]))
