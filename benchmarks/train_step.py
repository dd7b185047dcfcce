"""Training-step speed against the machine's limit: one ALBEF pretraining step (forward with every objective, backward,
AdamW, the momentum/queue duties) in fp32 and under bf16 autocast, its FLOPs (`torch.utils.flop_counter`), the FLOP/s
it reaches, and the matmul FLOP/s this machine reaches at the model's own GEMM shapes in each precision.

    python benchmarks/train_step.py [--sizes small base] [--batch-size 8] [--steps 3] [--rounds 2]
                                    [--output benchmarks/results/train_step.json]

Random weights and random inputs of the real shapes (nothing downloaded). The precisions run interleaved in one
process, best of `--rounds`. "Fraction of the limit" is the step's FLOP/s over the GEMM rate of the same precision:
how much of the step is spent off the matmul units (attention kernels, layer norms, casts, optimizer, Python).
Prints a markdown table, writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path

import torch
from albef_sizes import SIZES, TEXT_TOKENS, VOCAB_SIZE, albef_config
from plotting import paired_bars
from torch.utils.flop_counter import FlopCounterMode

from vlalign.models import AlbefConfig, AlbefForPreTraining

IMAGE_SIZE = 256  # ALBEF's pretraining resolution (257 tokens)


def build_model(size: str) -> AlbefForPreTraining:
    torch.manual_seed(0)
    return AlbefForPreTraining(albef_config(size, IMAGE_SIZE, queue_size=1024)).train()


def random_batch(config: AlbefConfig, batch_size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    size = config.vision_config.image_size
    input_ids = torch.randint(5, VOCAB_SIZE, (batch_size, TEXT_TOKENS), generator=generator)
    input_ids[:, 0] = config.text_config.cls_token_id or 101
    return {
        "pixel_values": torch.randn(batch_size, 3, size, size, generator=generator),
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
    }


class Step:
    """One optimizer step of `model` on `batch`, fp32 or under bf16 autocast."""

    def __init__(self, model: AlbefForPreTraining, batch: dict, bf16: bool):
        self.model, self.batch, self.bf16 = model, batch, bf16
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        self.count = 0

    def forward_backward(self) -> None:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with autocast:
            loss = self.model(**self.batch).loss
        loss.backward()

    def __call__(self) -> None:
        self.forward_backward()
        self.model.before_optimizer_step(self.count)
        self.optimizer.step()
        self.model.after_optimizer_step(self.count)
        self.optimizer.zero_grad(set_to_none=True)
        self.count += 1


def gemm_rate(shapes: list[tuple[int, int, int]], dtype: torch.dtype, repeats: int = 5) -> float:
    """Best FLOP/s of `torch.mm` over the given (m, k, n) shapes, weighted by their FLOPs."""
    flops, seconds = 0.0, 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        torch.mm(a, b)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
        flops += 2 * m * k * n
        seconds += best
    return flops / seconds


def model_gemm_shapes(config: AlbefConfig, batch_size: int) -> list[tuple[int, int, int]]:
    """The linear layers' GEMMs of one forward: ViT tokens and text tokens through attention and MLP widths."""
    vision, text = config.vision_config, config.text_config
    image_rows = batch_size * (1 + (vision.image_size // vision.patch_size) ** 2)
    text_rows = batch_size * TEXT_TOKENS
    return [
        (image_rows, vision.hidden_size, vision.hidden_size),
        (image_rows, vision.hidden_size, vision.intermediate_size),
        (text_rows, text.hidden_size, text.hidden_size),
        (text_rows, text.hidden_size, text.intermediate_size),
    ]


def benchmark(size: str, batch_size: int, steps: int, rounds: int) -> dict:
    model = build_model(size)
    batch = random_batch(model.config, batch_size)
    runs = {"fp32": Step(model, batch, bf16=False), "bf16": Step(model, batch, bf16=True)}
    flops = {}
    for name, step in runs.items():
        step()  # warm-up (allocations, oneDNN kernel selection)
        with FlopCounterMode(display=False) as counter:
            step.forward_backward()
        step.optimizer.zero_grad(set_to_none=True)
        flops[name] = counter.get_total_flops()
    seconds = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, step in runs.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            seconds[name] = min(seconds[name], (time.perf_counter() - start) / steps)
    shapes = model_gemm_shapes(model.config, batch_size)
    limits = {"fp32": gemm_rate(shapes, torch.float32), "bf16": gemm_rate(shapes, torch.bfloat16)}
    achieved = {name: flops[name] / seconds[name] for name in runs}
    return {
        "size": size,
        "batch_size": batch_size,
        "seconds_per_step": seconds,
        "gflop_per_step": {name: f / 1e9 for name, f in flops.items()},
        "achieved_gflops": {name: a / 1e9 for name, a in achieved.items()},
        "gemm_gflops": {name: rate / 1e9 for name, rate in limits.items()},
        "fraction_of_limit": {name: achieved[name] / limits[name] for name in runs},
        "bf16_speedup": seconds["fp32"] / seconds["bf16"],
    }


def plot(rows: list[dict], path: Path) -> None:
    paired_bars(
        path,
        [f"{row['size']}, batch {row['batch_size']}" for row in rows],
        {name: [100 * row["fraction_of_limit"][name] for row in rows] for name in ("fp32", "bf16")},
        "% of the GEMM rate at the model's shapes",
        "ALBEF training step vs this machine's matmul limit",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["small", "base"], choices=list(SIZES))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/train_step.json")
    args = parser.parse_args()

    rows = [benchmark(size, args.batch_size, args.steps, args.rounds) for size in args.sizes]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print("| size | batch | precision | s/step | GFLOP/step | GFLOP/s | GEMM GFLOP/s | fraction of limit |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        for name in ("fp32", "bf16"):
            print(
                f"| {row['size']} | {row['batch_size']} | {name} | {row['seconds_per_step'][name]:.2f} | "
                f"{row['gflop_per_step'][name]:.0f} | {row['achieved_gflops'][name]:.1f} | "
                f"{row['gemm_gflops'][name]:.1f} | {100 * row['fraction_of_limit'][name]:.0f} % |"
            )
        print(f"| {row['size']} | | bf16 / fp32 step speedup {row['bf16_speedup']:.2f}x | | | | | |")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "args": vars(args)}
    output.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    plot(rows, output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
