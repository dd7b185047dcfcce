"""Pretraining step, side by side with the official code: the official model (imported from a local checkout of the
method's repository, never vendored: github.com/salesforce/ALBEF, codezakh/SIMLA, yuxiaochen1103/FDT) and vlalign's,
holding the same weights (converted from the official model's initial state with `vlalign.convert.<method>`) and
stepping on the same batch with the same AdamW, interleaved step block by step block in one run, fp32 and under bf16
autocast, with each process's peak memory (whole process, and above the loaded model: the training step's own memory;
peaks are cumulative, so bf16's include fp32's).

    python benchmarks/against_official/vs_official.py \\
        --official-src ~/src/ALBEF --official-python ~/venvs/albef/bin/python \\
        [--method albef] [--sizes small base] [--batch-size 8] [--steps 2] [--rounds 3] [--threads 2] \\
        [--curve-steps 200]

`--official-python` is a Python whose site-packages have what the official code was written for (transformers
4.x with `transformers.file_utils`, e.g. 4.30.2, and timm 0.4.12) plus torch; the same torch as vlalign's makes the
comparison about the code, not the kernels. Each implementation runs in its own worker process
(`<method>_step_worker.py`, protocol in `step_protocol.py`), idle while the other runs. Both first compute the ITC
loss with dropout off, which must agree (same weights, inputs and queues; no random choice); masking, ITM negatives
and dropout then draw from each code's own RNG.
With `--curve-steps N`, fresh workers of `--curve-size` (default tiny) train N bf16 steps each and their losses are
overlaid in a second PNG. Prints a markdown table, writes JSON and the PNGs (default:
`benchmarks/against_official/results/vs_official[_<method>].json`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: imports name their folder
from against_official.worker_client import Worker  # noqa: E402
from common.albef_sizes import SIZES  # noqa: E402
from common.plotting import paired_bars  # noqa: E402

METHODS = ("albef", "simla", "fdt")
NAMES = {"albef": "ALBEF", "simla": "SIMLA", "fdt": "FDT"}
#: this folder's results/, as a path from the working directory (the repository root in the README's commands)
RESULTS = Path(os.path.relpath(Path(__file__).parent / "results"))


def step_worker(
    python: str, impl: str, spec: Path, args: argparse.Namespace, gradient_checkpointing: bool = False
) -> Worker:
    arguments = ["--gradient-checkpointing"] if gradient_checkpointing else []
    if impl == "vlalign" and args.vlalign_attention:
        arguments += ["--attn-implementation", args.vlalign_attention]
    arguments += [
        "--impl",
        impl,
        "--spec",
        str(spec),
        "--threads",
        str(args.threads),
        "--official-src",
        args.official_src,
    ]
    name = f"{impl} (gradient checkpointing)" if gradient_checkpointing else impl
    return Worker(python, Path(__file__).with_name(f"{args.method}_step_worker.py"), name, arguments)


def step_module(method: str):
    """The method's worker module (`<method>_step_worker.py`), imported in this process for its `write_spec`."""
    return importlib.import_module(f"against_official.{method}_step_worker")


def write_spec(directory: Path, size: str, args: argparse.Namespace) -> Path:
    """The method worker's spec (configs, one batch) for this size, written by the driver."""
    return step_module(args.method).write_spec(directory, size, args.batch_size)


def benchmark(size: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        spec = write_spec(Path(directory), size, args)
        official = step_worker(args.official_python, "official", spec, args)
        ours = step_worker(sys.executable, "vlalign", spec, args)
        workers = {"official": official, "vlalign": ours}
        if args.gradient_checkpointing:
            workers["vlalign_checkpointed"] = step_worker(sys.executable, "vlalign", spec, args, True)
        first_itc = {name: worker.ask(cmd="itc")["loss_itc"] for name, worker in workers.items()}
        for worker in workers.values():  # warm-up: allocations, oneDNN kernel choices
            worker.ask(cmd="steps", n=1, bf16=False)
        result = {"size": size, "batch_size": args.batch_size, "parameters": official.ready["parameters"]}
        for precision in ("fp32", "bf16"):
            best = {name: float("inf") for name in workers}
            for _ in range(args.rounds):
                for name, worker in workers.items():
                    reply = worker.ask(cmd="steps", n=args.steps, bf16=precision == "bf16")
                    best[name] = min(best[name], reply["seconds_per_step"])
            result[precision] = {
                "seconds_per_step": best,
                "speedup": best["official"] / best["vlalign"],
                "peak_rss_mib": {name: worker.ask(cmd="rss")["peak_rss_mib"] for name, worker in workers.items()},
                "loaded_rss_mib": {name: worker.ready["rss_mib"] for name, worker in workers.items()},
            }
        result["first_step_loss_itc"] = first_itc
        for worker in workers.values():
            worker.close()
    return result


def loss_curves(size: str, args: argparse.Namespace) -> dict[str, list[float]]:
    """The training loss of each implementation over `--curve-steps` bf16 steps from the same weights, fresh workers."""
    with tempfile.TemporaryDirectory() as directory:
        spec = write_spec(Path(directory), size, args)
        workers = {
            "official": step_worker(args.official_python, "official", spec, args),
            "vlalign": step_worker(sys.executable, "vlalign", spec, args),
        }
        curves = {
            name: worker.ask(cmd="steps", n=args.curve_steps, bf16=True)["loss"] for name, worker in workers.items()
        }
        for worker in workers.values():
            worker.close()
    return curves


def plot_curves(method: str, size: str, curves: dict[str, list[float]], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for name, losses in curves.items():
        label = f"official {NAMES[method]}" if name == "official" else name
        axis.plot(range(1, len(losses) + 1), losses, label=label, alpha=0.8)
    axis.set_xlabel("step")
    axis.set_ylabel("total training loss")
    axis.set_title(f"{NAMES[method]} {size}, bf16 autocast, same weights and batch")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot(method: str, rows: list[dict], path: Path) -> None:
    labels = [f"{row['size']}\n{precision}" for row in rows for precision in ("fp32", "bf16")]
    series = {
        label: [row[precision]["seconds_per_step"][name] for row in rows for precision in ("fp32", "bf16")]
        for name, label in (("official", f"official {NAMES[method]}"), ("vlalign", "vlalign"))
    }
    title = f"{NAMES[method]} pretraining step, same weights and batch"
    paired_bars(path, labels, series, "seconds per training step", title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-src", required=True, help="a local checkout of the method's official repository")
    parser.add_argument("--method", default="albef", choices=METHODS)
    parser.add_argument("--official-python", required=True, help="a Python with the official code's dependencies")
    parser.add_argument("--sizes", nargs="+", default=["small", "base"], choices=list(SIZES))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=3, help="timed blocks per implementation (best counts)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--curve-steps", type=int, default=0, help="also overlay this many bf16 training losses of both (0: skip)"
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="also run vlalign with gradient checkpointing (a third worker): its step time and memory",
    )
    parser.add_argument(
        "--vlalign-attention", help="vlalign's attention implementation (default: sdpa; eager is faster on CPU bf16)"
    )
    parser.add_argument("--curve-size", default="tiny", choices=list(SIZES), help="model size of the loss curves")
    parser.add_argument("--output", help=f"default: {RESULTS}/vs_official.json (ALBEF), vs_official_<method>.json")
    args = parser.parse_args()
    suffix = "" if args.method == "albef" else f"_{args.method}"
    args.output = args.output or str(RESULTS / f"vs_official{suffix}.json")
    image_size = step_module(args.method).IMAGE_SIZE

    rows = [benchmark(size, args) for size in args.sizes]
    curves = loss_curves(args.curve_size, args) if args.curve_steps else None
    print(
        f"{NAMES[args.method]}: torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, "
        f"{image_size}-px images"
    )
    print(
        "| size | precision | official s/step | vlalign s/step | speedup | peak RSS official / vlalign (MiB) "
        "| training memory above the loaded model, official / vlalign (MiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        for precision in ("fp32", "bf16"):
            seconds, peak, loaded = (
                row[precision][key] for key in ("seconds_per_step", "peak_rss_mib", "loaded_rss_mib")
            )
            extra = {name: peak[name] - loaded[name] for name in peak}
            print(
                f"| {row['size']} | {precision} | {seconds['official']:.2f} | {seconds['vlalign']:.2f} | "
                f"{row[precision]['speedup']:.2f}x | {peak['official']:.0f} / {peak['vlalign']:.0f} "
                f"({peak['vlalign'] / peak['official']:.2f}x) | {extra['official']:.0f} / {extra['vlalign']:.0f} "
                f"({extra['vlalign'] / extra['official']:.2f}x) |"
            )
            if "vlalign_checkpointed" in seconds:
                print(
                    f"| {row['size']} | {precision}, vlalign with gradient checkpointing | | "
                    f"{seconds['vlalign_checkpointed']:.2f} | "
                    f"{seconds['official'] / seconds['vlalign_checkpointed']:.2f}x | "
                    f"{peak['vlalign_checkpointed']:.0f} | {extra['vlalign_checkpointed']:.0f} "
                    f"({extra['vlalign_checkpointed'] / extra['official']:.2f}x) |"
                )
        itc = row["first_step_loss_itc"]
        print(f"| {row['size']} | ITC loss, initial weights | {itc['official']:.6f} | {itc['vlalign']:.6f} | | | |")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    meta = {"method": args.method, "torch": torch.__version__, "threads": args.threads, "image_size": image_size}
    output.write_text(json.dumps({"meta": meta, "args": vars(args), "rows": rows, "loss_curves": curves}, indent=1))
    plot(args.method, rows, output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png')}")
    if curves:
        curve_path = output.with_name(f"{output.stem}_loss_curves.png")
        plot_curves(args.method, args.curve_size, curves, curve_path)
        last = {name: sum(losses[-20:]) / len(losses[-20:]) for name, losses in curves.items()}
        print(
            f"loss curves ({args.curve_size}, {args.curve_steps} bf16 steps): mean of the last 20 official "
            f"{last['official']:.4f}, vlalign {last['vlalign']:.4f}; wrote {curve_path}"
        )


if __name__ == "__main__":
    main()
