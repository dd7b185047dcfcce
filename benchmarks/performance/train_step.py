"""Training-step speed against the machine's limit: one ALBEF pretraining step (forward with every objective, backward,
AdamW, the momentum/queue duties) in fp32 and under bf16 autocast, its FLOPs (`torch.utils.flop_counter`), the FLOP/s
it reaches, and the matmul FLOP/s this machine reaches at the model's own GEMM shapes in each precision.

    python benchmarks/performance/train_step.py [--sizes small base] [--batch-size 8] [--steps 3] [--rounds 2]
        [--scaling-size small --scaling-batches 4 8 16 --scaling-image-sizes 224 384]
        [--output benchmarks/performance/results/train_step.json]

Random weights and random inputs of the real shapes (nothing downloaded). The precisions run interleaved in one
process, best of `--rounds`. "Fraction of the limit" is the step's FLOP/s over the GEMM rate of the same precision:
how much of the step is spent off the matmul units (attention kernels, layer norms, casts, optimizer, Python;
`profile_step.py` breaks it down). The counted FLOPs are checked against an analytic count from the shapes.
Prints a markdown table, writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from vlalign.models import AlbefConfig, AlbefForPreTraining

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: imports name their folder
from common.albef_sizes import SIZES, TEXT_TOKENS, VOCAB_SIZE, albef_config
from common.plotting import paired_bars

IMAGE_SIZE = 256  # ALBEF's pretraining resolution (257 tokens)
QUEUE_SIZE = 1024
#: this folder's results/, as a path from the working directory (the repository root in the README's commands)
RESULTS = Path(os.path.relpath(Path(__file__).parent / "results"))


def build_model(size: str, image_size: int = IMAGE_SIZE) -> AlbefForPreTraining:
    torch.manual_seed(0)
    return AlbefForPreTraining(albef_config(size, image_size, queue_size=QUEUE_SIZE)).train()


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
    """One optimizer step of `model` on `batch`, fp32 or under bf16 autocast; with `compiled`, the forward and backward
    run through `torch.compile(model)` (inductor)."""

    def __init__(self, model: AlbefForPreTraining, batch: dict, bf16: bool, compiled: bool = False):
        self.model, self.batch, self.bf16 = model, batch, bf16
        self.forward = torch.compile(model) if compiled else model
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        self.count = 0

    def forward_backward(self) -> None:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with autocast:
            loss = self.forward(**self.batch).loss
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


def analytic_flops(config: AlbefConfig, batch_size: int, queue_size: int) -> float:
    """FLOPs of one pretraining step from the shapes alone (matmuls and attention, 2 per multiply-add; a backward is
    twice its forward): the online ViT, text encoder, ITM fusion (the positives and 2 hard negatives per pair, each
    image's cross-attention keys and values projected once), MLM (masked text, fusion, vocabulary head) and ITC
    similarities with backward; their momentum copies without."""
    vision, text = config.vision_config, config.text_config
    image_tokens = 1 + (vision.image_size // vision.patch_size) ** 2
    d, e, length = vision.hidden_size, text.hidden_size, TEXT_TOKENS
    fusion_layers = text.num_hidden_layers - text.fusion_layer

    def encoder_layer(tokens: int, width: int, mlp: int) -> float:  # q, k, v, out; the MLP; QK^T and AV
        return 2 * tokens * (4 * width * width + 2 * width * mlp) + 4 * tokens * tokens * width

    patch_embedding = 2 * (image_tokens - 1) * 3 * vision.patch_size**2 * d
    vit = patch_embedding + vision.num_hidden_layers * encoder_layer(image_tokens, d, vision.intermediate_size)
    text_encoder = text.fusion_layer * encoder_layer(length, e, text.intermediate_size)
    # per text: the fusion layers with cross-attention queries, outputs and scores; per image: its keys and values
    fusion_text = fusion_layers * (
        encoder_layer(length, e, text.intermediate_size) + 2 * length * 2 * e * e + 4 * length * image_tokens * e
    )
    image_keys_values = fusion_layers * 2 * image_tokens * 2 * d * e
    mlm_head = 2 * length * (e * e + e * text.vocab_size)
    itc = 2 * 2 * batch_size * (batch_size + queue_size) * config.embed_dim  # image-to-text and text-to-image
    itm = 3 * fusion_text + image_keys_values
    mlm = text_encoder + fusion_text + image_keys_values + mlm_head
    online = vit + text_encoder + itm + mlm
    momentum = vit + text_encoder + mlm
    return batch_size * (3 * online + momentum) + 3 * itc + itc


def benchmark(size: str, batch_size: int, steps: int, rounds: int, compiled: bool) -> dict:
    model = build_model(size)
    batch = random_batch(model.config, batch_size)
    runs = {"fp32": Step(model, batch, bf16=False), "bf16": Step(model, batch, bf16=True)}
    if compiled:
        runs.update(
            fp32_compiled=Step(model, batch, bf16=False, compiled=True),
            bf16_compiled=Step(model, batch, bf16=True, compiled=True),
        )
    flops = {}
    for name, step in runs.items():
        step()  # warm-up (allocations, oneDNN kernel selection, compilation)
        with FlopCounterMode(display=False) as counter:
            Step(model, batch, bf16=step.bf16).forward_backward()  # eager: the counter does not see inside kernels
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
    rates = {"fp32": gemm_rate(shapes, torch.float32), "bf16": gemm_rate(shapes, torch.bfloat16)}
    limits = {name: rates[name.split("_")[0]] for name in runs}
    achieved = {name: flops[name] / seconds[name] for name in runs}
    return {
        "size": size,
        "batch_size": batch_size,
        "seconds_per_step": seconds,
        "gflop_per_step": {name: f / 1e9 for name, f in flops.items()},
        "analytic_gflop_per_step": analytic_flops(model.config, batch_size, QUEUE_SIZE) / 1e9,
        "achieved_gflops": {name: a / 1e9 for name, a in achieved.items()},
        "gemm_gflops": {name: rate / 1e9 for name, rate in limits.items()},
        "fraction_of_limit": {name: achieved[name] / limits[name] for name in runs},
        "bf16_speedup": seconds["fp32"] / seconds["bf16"],
    }


def scaling(size: str, batch_sizes: list[int], image_sizes: list[int], steps: int) -> list[dict]:
    """Seconds per step, fp32 and bf16, over batch size (at 256 px) and image size (at batch 8)."""
    cells = [(batch_size, IMAGE_SIZE) for batch_size in batch_sizes]
    cells += [(8, image_size) for image_size in image_sizes if (8, image_size) not in cells]
    results = []
    for batch_size, image_size in cells:
        model = build_model(size, image_size)
        batch = random_batch(model.config, batch_size)
        seconds = {}
        for name in ("fp32", "bf16"):
            step = Step(model, batch, bf16=name == "bf16")
            step()  # warm-up
            start = time.perf_counter()
            for _ in range(steps):
                step()
            seconds[name] = (time.perf_counter() - start) / steps
        results.append({"batch_size": batch_size, "image_size": image_size, "seconds_per_step": seconds})
    return results


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
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(model) (inductor) steps")
    parser.add_argument("--scaling-size", default="small", choices=list(SIZES))
    parser.add_argument(
        "--scaling-batches", type=int, nargs="*", default=[], help="batch sizes at 256 px, e.g. 4 8 16"
    )
    parser.add_argument("--scaling-image-sizes", type=int, nargs="*", default=[], help="image sizes at batch 8")
    parser.add_argument("--output", default=str(RESULTS / "train_step.json"))
    args = parser.parse_args()

    rows = [benchmark(size, args.batch_size, args.steps, args.rounds, args.compile) for size in args.sizes]
    cells = scaling(args.scaling_size, args.scaling_batches, args.scaling_image_sizes, args.steps)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print("| size | batch | precision | s/step | GFLOP/step | GFLOP/s | GEMM GFLOP/s | fraction of limit |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        for name in row["seconds_per_step"]:
            print(
                f"| {row['size']} | {row['batch_size']} | {name} | {row['seconds_per_step'][name]:.2f} | "
                f"{row['gflop_per_step'][name]:.0f} | {row['achieved_gflops'][name]:.1f} | "
                f"{row['gemm_gflops'][name]:.1f} | {100 * row['fraction_of_limit'][name]:.0f} % |"
            )
        print(f"| {row['size']} | | bf16 / fp32 step speedup {row['bf16_speedup']:.2f}x | | | | | |")
        analytic, counted = row["analytic_gflop_per_step"], row["gflop_per_step"]["fp32"]
        print(
            f"| {row['size']} | | analytic {analytic:.0f} GFLOP/step ({analytic / counted:.3f}x the counter's) | | | | | |"
        )
    if cells:
        print(
            f"\nscaling ({args.scaling_size}): | batch | image size | fp32 s/step | bf16 s/step | images/s fp32 / bf16 |"
        )
        for cell in cells:
            fp32, bf16 = (cell["seconds_per_step"][name] for name in ("fp32", "bf16"))
            batch_size = cell["batch_size"]
            print(
                f"| {batch_size} | {cell['image_size']} | {fp32:.2f} | {bf16:.2f} "
                f"| {batch_size / fp32:.2f} / {batch_size / bf16:.2f} |"
            )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "args": vars(args)}
    output.write_text(json.dumps({"meta": meta, "rows": rows, "scaling": cells}, indent=1))
    plot(rows, output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
