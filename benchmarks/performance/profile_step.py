"""Where an ALBEF training step's time goes, fp32 against bf16 autocast: `torch.profiler` self CPU time of one step,
grouped into matmuls (linear layers, the ITC/queue similarity), attention kernels, dtype casts, layer norms,
elementwise ops, the optimizer and the rest, plus the top operators. This is what bounds `train_step.py`'s "fraction
of the limit": only the matmul share runs at the GEMM rate.

    python benchmarks/performance/profile_step.py [--size base] [--batch-size 8] [--top 12]
        [--output benchmarks/performance/results/profile_step.json]

Same model, batch and step as `train_step.py` (random weights and inputs of the real shapes). Prints markdown
tables, writes JSON and a PNG (stacked shares per precision).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import matplotlib
import torch
from torch.profiler import ProfilerActivity, profile

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: imports name their folder
from common.albef_sizes import SIZES  # noqa: E402
from performance.train_step import Step, build_model, random_batch  # noqa: E402

#: this folder's results/, as a path from the working directory (the repository root in the README's commands)
RESULTS = Path(os.path.relpath(Path(__file__).parent / "results"))

#: operator-name fragments of each category, first match wins (self time only, so parents are never counted twice)
CATEGORIES = {
    "matmul": ("addmm", "aten::mm", "bmm", "matmul", "linear", "mkldnn_", "baddbmm"),
    "attention": ("scaled_dot_product", "flash_attention", "softmax"),
    "dtype casts": ("aten::to", "_to_copy", "aten::copy_"),
    "layer norm": ("layer_norm",),
    "optimizer": ("_foreach", "adam", "optimizer"),
    "elementwise": ("gelu", "add", "mul", "div", "sub", "dropout", "bernoulli", "where", "exp", "sum", "mean", "sqrt"),
}


def category(name: str) -> str:
    lowered = name.lower()
    for label, fragments in CATEGORIES.items():
        if any(fragment in lowered for fragment in fragments):
            return label
    return "other"


def profile_step(step: Step) -> tuple[dict[str, float], list[dict]]:
    """Self CPU seconds per category and the top operators of one training step."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step()
    events = [event for event in profiler.key_averages() if event.self_cpu_time_total > 0]
    shares: dict[str, float] = {}
    for event in events:
        label = category(event.key)
        shares[label] = shares.get(label, 0.0) + event.self_cpu_time_total / 1e6
    top = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)
    operators = [
        {
            "name": event.key,
            "seconds": event.self_cpu_time_total / 1e6,
            "calls": event.count,
            "category": category(event.key),
        }
        for event in top
    ]
    return shares, operators


def attention_step_seconds(model, batch: dict, implementations: list[str], repeats: int = 2) -> dict:
    """Best bf16 step time with each attention implementation (`set_attn_implementation`), same weights."""
    seconds = {}
    for implementation in implementations:
        model.set_attn_implementation(implementation)
        step = Step(model, batch, bf16=True)
        step()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - start)
        seconds[implementation] = best
    model.set_attn_implementation("sdpa")
    return seconds


def plot(size: str, results: dict, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6.5, 3.8))
    labels = list(CATEGORIES) + ["other"]
    precisions = list(results)
    bottoms = [0.0] * len(precisions)
    for label in labels:
        values = [results[name]["categories"].get(label, 0.0) for name in precisions]
        axis.bar(precisions, values, bottom=bottoms, label=label)
        bottoms = [bottom + value for bottom, value in zip(bottoms, values, strict=True)]
    axis.set_ylabel("self CPU seconds per step")
    axis.set_title(f"ALBEF {size} training step by operator class")
    axis.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="base", choices=list(SIZES))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--top", type=int, default=12, help="operators listed per precision")
    parser.add_argument(
        "--attention", nargs="*", default=["sdpa", "eager"], help="also time a bf16 step with each implementation"
    )
    parser.add_argument("--output", default=str(RESULTS / "profile_step.json"))
    args = parser.parse_args()

    model = build_model(args.size)
    batch = random_batch(model.config, args.batch_size)
    results = {}
    for name in ("fp32", "bf16"):
        step = Step(model, batch, bf16=name == "bf16")
        step()  # warm-up: allocations, oneDNN kernel selection
        categories, operators = profile_step(step)
        results[name] = {"categories": categories, "total_seconds": sum(categories.values()), "top": operators}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ALBEF {args.size}, batch {args.batch_size}")
    print("| class | fp32 s | fp32 share | bf16 s | bf16 share | bf16 / fp32 |")
    print("|---|---|---|---|---|---|")
    for label in [*CATEGORIES, "other"]:
        fp32, bf16 = (results[name]["categories"].get(label, 0.0) for name in ("fp32", "bf16"))
        ratio = f"{bf16 / fp32:.2f}x" if fp32 else "new"
        print(
            f"| {label} | {fp32:.2f} | {100 * fp32 / results['fp32']['total_seconds']:.0f} % | {bf16:.2f} "
            f"| {100 * bf16 / results['bf16']['total_seconds']:.0f} % | {ratio} |"
        )
    print(f"| total | {results['fp32']['total_seconds']:.2f} | | {results['bf16']['total_seconds']:.2f} | | |")
    for name in ("fp32", "bf16"):
        print(f"\n{name}: top operators by self CPU time")
        print("| operator | class | calls | seconds |")
        print("|---|---|---|---|")
        for operator in results[name]["top"][: args.top]:
            print(f"| {operator['name']} | {operator['category']} | {operator['calls']} | {operator['seconds']:.3f} |")
        results[name]["top"] = results[name]["top"][:40]
    attention = attention_step_seconds(model, batch, args.attention) if args.attention else {}
    if attention:
        print("\nbf16 step by attention implementation: " + ", ".join(f"{k} {v:.2f} s" for k, v in attention.items()))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "args": vars(args)}
    output.write_text(json.dumps({"meta": meta, "results": results, "bf16_step_by_attention": attention}, indent=1))
    plot(args.size, results, output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
