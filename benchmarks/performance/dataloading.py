"""Can the input pipeline keep a model busy? Images per second of ALBEF's pretraining collator (official train
transform: random resized crop, flip, RandAugment(2, 7), normalisation; caption cleaning and tokenisation) through a
`torch.utils.data.DataLoader` with 0, 1, 2... worker processes, against the training step's own rate.

    python benchmarks/performance/dataloading.py [--images 256] [--source-size 480] [--batch-size 32]
        [--workers 0 1 2] [--step-json benchmarks/performance/results/train_step.json]

The images are the synthetic dataset's, rendered at `--source-size` px (COCO-like inputs: the crop and RandAugment
cost depends on the input size). With `--step-json`, the table adds how many images per second `train_step.py`'s
recorded steps consume, so the number of workers a run needs reads directly: workers ≥ step rate / per-worker rate.
On a GPU, Trainer's `dataloader_num_workers` and `dataloader_pin_memory` (vlalign's loaders pin only when CUDA is
present) are the knobs. Prints a markdown table and writes JSON (default:
`benchmarks/performance/results/dataloading.json`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vlalign.data.collator import AlignmentCollator
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.data.transforms import albef_train_transform
from vlalign.recipes.albef import albef_processor, build_tokenizer, dataset_captions

#: this folder's results/, as a path from the working directory (the repository root in the README's commands)
RESULTS = Path(os.path.relpath(Path(__file__).parent / "results"))


def images_per_second(dataset, collator, batch_size: int, workers: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collator, num_workers=workers, shuffle=False)
    start = time.perf_counter()
    count = sum(len(batch["pixel_values"]) for batch in loader)
    return count / (time.perf_counter() - start)


def step_rates(path: Path) -> dict[str, float]:
    """Images per second each recorded `train_step.py` row trains at."""
    rows = json.loads(path.read_text())["rows"]
    return {
        f"{row['size']} {precision}": row["batch_size"] / row["seconds_per_step"][precision]
        for row in rows
        for precision in ("fp32", "bf16")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--source-size", type=int, default=480, help="side of the source images in pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--step-json", default=str(RESULTS / "train_step.json"))
    parser.add_argument("--output", default=str(RESULTS / "dataloading.json"))
    args = parser.parse_args()

    dataset = make_synthetic_dataset(args.images, 0, 0, image_size=args.source_size, captions_per_image=5)
    processor = albef_processor(build_tokenizer(dataset_captions(dataset)), 256)
    collator = AlignmentCollator(
        processor, preset="pretrain", text_column="captions", image_transform=albef_train_transform("pretrain")
    )
    torch.set_num_threads(1)  # one thread per loader process, as DataLoader workers run
    rates = {
        workers: images_per_second(dataset["train"], collator, args.batch_size, workers) for workers in args.workers
    }
    print(f"ALBEF pretraining collator, {args.source_size}-px sources -> 256-px crops, batch {args.batch_size}")
    print("| loader workers | images/s |")
    print("|---|---|")
    for workers, rate in rates.items():
        label = "0 (in the training process)" if workers == 0 else str(workers)
        print(f"| {label} | {rate:.0f} |")
    steps = step_rates(Path(args.step_json)) if Path(args.step_json).exists() else {}
    if steps:
        per_worker = rates[0]
        print("\n| training step (train_step.py) | images/s consumed | loader processes needed |")
        print("|---|---|---|")
        for name, rate in steps.items():
            print(f"| {name} | {rate:.2f} | {max(1, math.ceil(rate / per_worker))} |")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    payload = {"args": vars(args), "images_per_second": rates, "step_images_per_second": steps}
    output.write_text(json.dumps(payload, indent=1))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
