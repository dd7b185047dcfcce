"""ITM re-rank cost: per-pair fusion (every pair projects its image's 577 tokens into cross-attention keys and values
in every fusion layer, as the official `evaluation()` does) against vlalign's `rerank_pairs`, which scores the pairs
grouped by image and projects each image's keys and values once per batch for all its texts.

    python benchmarks/performance/rerank.py [--sizes small base] [--images 8] [--captions-per-image 5] [--k 8]
        [--batch-size 256] [--rounds 2] [--output benchmarks/performance/results/rerank.json]

Random weights and random encoder states of the real shapes (nothing is downloaded): the re-rank's cost depends on
shapes alone. The candidate pairs are each query's ITC top-k of a random similarity matrix, both directions, each pair
once (what `evaluate_retrieval` re-ranks). Both variants run interleaved in one process (best of `--rounds`); FLOPs
per pair come from `torch.utils.flop_counter` on one batch. Prints a markdown table, writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from vlalign.evaluation.retrieval import _top_k_pairs, rerank_pairs
from vlalign.models import AlbefModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: imports name their folder
from common.albef_sizes import SIZES, TEXT_TOKENS, albef_config
from common.plotting import paired_bars

#: image size of each size's re-rank: ALBEF's retrieval fine-tuning runs at 384 px (577 tokens)
IMAGE_SIZES = {"tiny": 224, "small": 224, "base": 384}
#: this folder's results/, as a path from the working directory (the repository root in the README's commands)
RESULTS = Path(os.path.relpath(Path(__file__).parent / "results"))


def build_model(size: str) -> AlbefModel:
    torch.manual_seed(0)
    return AlbefModel(albef_config(size, IMAGE_SIZES[size])).eval()


@torch.no_grad()
def per_pair_scores(model, pairs, text_hidden, text_masks, image_hidden, batch_size: int) -> torch.Tensor:
    """The official re-rank's computation: one fusion forward per pair, its image's states copied per pair."""
    scores = []
    for start in range(0, len(pairs), batch_size):
        images, texts = pairs[start : start + batch_size].unbind(dim=1)
        scores.append(model.itm_score(text_hidden[texts], text_masks[texts], image_hidden[images]))
    return torch.cat(scores)


def grouped_scores(model, pairs, text_hidden, text_masks, image_hidden, batch_size: int) -> torch.Tensor:
    similarities = torch.zeros(len(image_hidden), len(text_hidden))
    return rerank_pairs(
        model, pairs, text_hidden, text_masks, image_hidden, similarities, "itm_logit", batch_size, False
    )


def flops_per_pair(run, num_pairs: int) -> float:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() / num_pairs


def benchmark(size: str, num_images: int, captions_per_image: int, k: int, batch_size: int, rounds: int) -> dict:
    model = build_model(size)
    vision, text = model.config.vision_config, model.config.text_config
    num_texts = num_images * captions_per_image
    generator = torch.Generator().manual_seed(0)
    image_tokens = 1 + (vision.image_size // vision.patch_size) ** 2
    image_hidden = torch.randn(num_images, image_tokens, vision.hidden_size, generator=generator)
    text_hidden = torch.randn(num_texts, TEXT_TOKENS, text.hidden_size, generator=generator)
    lengths = torch.randint(8, TEXT_TOKENS + 1, (num_texts,), generator=generator)
    text_masks = (torch.arange(TEXT_TOKENS)[None] < lengths[:, None]).long()
    similarities = torch.randn(num_images, num_texts, generator=generator)
    pairs, _, _ = _top_k_pairs(similarities, min(k, num_texts), min(k, num_images))
    inputs = (model, pairs, text_hidden, text_masks, image_hidden, batch_size)
    variants = {"per_pair": per_pair_scores, "grouped": grouped_scores}
    one_batch = (model, pairs[:batch_size], text_hidden, text_masks, image_hidden, batch_size)
    flops = {name: flops_per_pair(lambda f=f: f(*one_batch), len(one_batch[1])) for name, f in variants.items()}
    seconds = {name: float("inf") for name in variants}
    scores = {}
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            scores[name] = run(*inputs)
            seconds[name] = min(seconds[name], time.perf_counter() - start)
    return {
        "size": size,
        "image_tokens": image_tokens,
        "num_images": num_images,
        "num_texts": num_texts,
        "k": k,
        "num_pairs": len(pairs),
        "batch_size": batch_size,
        "ms_per_pair": {name: 1000 * s / len(pairs) for name, s in seconds.items()},
        "gflop_per_pair": {name: f / 1e9 for name, f in flops.items()},
        "speedup": seconds["per_pair"] / seconds["grouped"],
        "flop_ratio": flops["per_pair"] / flops["grouped"],
        "max_abs_score_diff": float((scores["per_pair"] - scores["grouped"]).abs().max()),
    }


def plot(rows: list[dict], path: Path) -> None:
    paired_bars(
        path,
        [f"{row['size']}\nk={row['k']}" for row in rows],
        {name: [row["ms_per_pair"][name] for row in rows] for name in ("per_pair", "grouped")},
        "ms per re-ranked pair",
        "ITM re-rank on CPU: per-pair vs image keys/values shared",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["small", "base"], choices=list(SIZES))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--k", type=int, nargs="+", default=[8])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS / "rerank.json"))
    args = parser.parse_args()

    rows = [
        benchmark(size, args.images, args.captions_per_image, k, args.batch_size, args.rounds)
        for size in args.sizes
        for k in args.k
    ]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print("| size | image tokens | k | pairs | per-pair ms | grouped ms | speedup | GFLOP per pair (per-pair / grouped) "
          "| max abs score diff |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        ms, gflop = row["ms_per_pair"], row["gflop_per_pair"]
        print(
            f"| {row['size']} | {row['image_tokens']} | {row['k']} | {row['num_pairs']} | {ms['per_pair']:.2f} | "
            f"{ms['grouped']:.2f} | {row['speedup']:.2f}x | {gflop['per_pair']:.2f} / {gflop['grouped']:.2f} "
            f"({row['flop_ratio']:.1f}x) | {row['max_abs_score_diff']:.1e} |"
        )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "args": vars(args)}
    output.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    plot(rows, output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
