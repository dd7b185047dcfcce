"""The quick-start table: `vlalign quickstart --method M` for each method and seed, one run at a time, with its wall
time (the whole command, imports included), steps, R@1 both ways and zero-shot shape and colour accuracy, each beside
its chance level (from the run's `summary.json`).

    python benchmarks/experiments/quickstart_table.py [--methods albef simla codis fdt] [--seeds 0 1]
        [--num-threads 2] [--output benchmarks/experiments/results/quickstart_table.json]

Prints a markdown table and writes it with the raw numbers as JSON. The acceptance bar of the quick start is: at most
3 minutes on 2 idle cores, R@1 of at least 20 % both ways, zero-shot shape accuracy at least 2x chance. Wall times
are only comparable on idle cores; the accuracies at a fixed number of steps do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: this folder's results/, as a path from the working directory (the repository root in the README's commands)
RESULTS = Path(os.path.relpath(Path(__file__).parent / "results"))
VLALIGN = Path(sys.executable).with_name("vlalign")


def run_quickstart(method: str, seed: int, num_threads: int) -> dict:
    """One `vlalign quickstart` command in a temporary folder: its wall time and the figures of its summary."""
    with tempfile.TemporaryDirectory(prefix=f"quickstart-{method}-") as output_dir:
        command = [str(VLALIGN), "quickstart", "--method", method, "--seed", str(seed)]
        command += ["--output-dir", output_dir, "--num-threads", str(num_threads)]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        summary = json.loads((Path(output_dir) / "summary.json").read_text())
    chance = summary["chance"]
    return {
        "method": method,
        "seed": seed,
        "steps": summary["settings"]["max_steps"],
        "wall_seconds": round(seconds, 1),
        "train_seconds": summary["train_seconds"],
        "txt_r1": summary["metrics"]["txt_r1"],
        "img_r1": summary["metrics"]["img_r1"],
        "shape_top1": summary["zero_shot"]["top1_accuracy"],
        "color_top1": summary["zero_shot_color"]["top1_accuracy"],
        "chance": chance,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| method | seed | steps | wall time | R@1 t2i | R@1 i2t | zero-shot shape | zero-shot colour |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        chance = row["chance"]
        lines.append(
            f"| {row['method']} | {row['seed']} | {row['steps']} | {row['wall_seconds']:.0f} s "
            f"| {row['img_r1']:.1f} % (chance {chance['img_r1']:.1f}) | {row['txt_r1']:.1f} % "
            f"(chance {chance['txt_r1']:.1f}) | {row['shape_top1']:.1f} % (chance "
            f"{chance['zero_shot_top1_accuracy']:.1f}) | {row['color_top1']:.1f} % (chance "
            f"{chance['zero_shot_color_top1_accuracy']:.1f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["albef", "simla", "codis", "fdt"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--num-threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS / "quickstart_table.json")
    args = parser.parse_args()
    rows = []
    for method in args.methods:
        for seed in args.seeds:
            rows.append(run_quickstart(method, seed, args.num_threads))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"rows": rows, "table": table(rows)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
