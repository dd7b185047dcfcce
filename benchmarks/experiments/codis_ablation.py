"""CODIS ablation on the built-in synthetic data: ALBEF vs CODIS vs CODIS without the OT loss vs CODIS with the
alternative code-alignment loss, each pretrained from scratch with the quick start's recipe (same step budget, seed,
data, learning rate and tiny model sizes), then evaluated zero-shot on the synthetic test split (ITC top-k with ITM
re-ranking, R@1/5/10 both ways).

    python benchmarks/experiments/codis_ablation.py [--max-steps N] [--seeds 0 1]
        [--output benchmarks/experiments/results/codis_ablation.json]

Prints a markdown table and writes it with the raw numbers as JSON. The synthetic data is a smoke test for the
objectives, not a benchmark of real-image retrieval: differences of a few points between variants are within the
seed-to-seed spread, which `--seeds` measures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from vlalign.methods import get_method
from vlalign.quickstart import QuickstartSettings, chance_recall_at_1, pretrain_synthetic

#: (row label, method, CODIS config overrides)
VARIANTS = (
    ("ALBEF", "albef", {}),
    ("CODIS", "codis", {}),
    ("CODIS without the OT loss", "codis", {"ot_loss_weight": 0.0}),
    ("CODIS, assignment-contrast code loss", "codis", {"code_loss_type": "assignment_contrast"}),
)
METRICS = ("txt_r1", "img_r1", "txt_r5", "img_r5", "txt_r10", "img_r10")
#: this folder's results/, as a path from the working directory (the repository root in the README's commands)
RESULTS = Path(os.path.relpath(Path(__file__).parent / "results"))


def run_variant(method: str, overrides: dict, max_steps: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as output_dir:
        settings = QuickstartSettings(method=method, max_steps=max_steps, seed=seed, config_overrides=overrides)
        run = pretrain_synthetic(output_dir, settings)
    result = {name: float(run.metrics[name]) for name in METRICS}
    result["train_seconds"] = round(run.train_seconds, 1)
    result["chance_r1"] = chance_recall_at_1(run.dataset["test"])
    return result


def markdown_table(rows: list[dict], max_steps: int, seeds: list[int]) -> str:
    spread = len(seeds) > 1
    header = "| variant | text R@1 | image R@1 | text R@5 | image R@5 | text R@10 | image R@10 |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = []
        for name in METRICS:
            values = [run[name] for run in row["runs"]]
            mean = statistics.fmean(values)
            cells.append(f"{mean:.1f} ± {statistics.stdev(values):.1f}" if spread else f"{mean:.1f}")
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    chance = rows[0]["runs"][0]["chance_r1"]
    lines.append("")
    lines.append(
        f"{max_steps} steps, seed{'s' if spread else ''} {', '.join(map(str, seeds))}"
        + (" (mean ± std)" if spread else "")
        + f"; zero-shot on the synthetic test split, chance R@1 {chance['txt_r1']:.1f} % (text) / "
        f"{chance['img_r1']:.1f} % (image)."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-steps", type=int, default=get_method("codis").quickstart.max_steps)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--output", type=Path, default=RESULTS / "codis_ablation.json")
    args = parser.parse_args()

    rows = []
    for label, method, overrides in VARIANTS:
        runs = []
        for seed in args.seeds:
            start = time.perf_counter()
            runs.append(run_variant(method, overrides, args.max_steps, seed))
            print(f"{label}, seed {seed}: {runs[-1]['txt_r1']:.1f} / {runs[-1]['img_r1']:.1f} R@1 "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
        rows.append({"label": label, "method": method, "overrides": overrides, "runs": runs})

    table = markdown_table(rows, args.max_steps, args.seeds)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps({"max_steps": args.max_steps, "seeds": args.seeds, "rows": rows, "table": table}, indent=1)
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
