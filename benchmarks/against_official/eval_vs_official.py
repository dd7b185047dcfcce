"""ALBEF retrieval evaluation, side by side with the official code: the official `Retrieval.py` `evaluation()` (imported
from a local checkout of github.com/salesforce/ALBEF, never vendored) and vlalign's `evaluate_retrieval`, on the same
model (the official retrieval model's initial weights, converted with `vlalign.convert.albef`), the same gallery and
the same k, each in its own worker process (`albef_eval_worker.py`), interleaved round by round: the official in fp32
(it fails under bf16 autocast), vlalign in fp32 and under bf16 autocast. The recalls and the re-rank scores are
compared: a query whose rank differs counts as a near-tie when its ground truth's official score is within 1e-6 of
another candidate's (bf16: within twice the largest bf16 score error).

    python benchmarks/against_official/eval_vs_official.py \\
        --official-src ~/src/ALBEF --official-python ~/venvs/albef/bin/python \\
        [--sizes small base] [--images 16] [--k 8] [--image-size 384] [--rounds 2] [--threads 2] \\
        [--scaling-size small --scaling-images 16 32 64 --scaling-k 4 8 16]

The gallery is the synthetic shapes test split (5 captions per image) rendered at `--image-size`; the weights are
random, so the recalls are near chance and the comparison is about the computation, not the model. `--scaling-*`
adds a grid of evaluation times (one round each, fp32) over gallery size and k. Prints markdown tables, writes JSON
and a PNG (default: `benchmarks/against_official/results/eval_vs_official.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import matplotlib
import torch
from safetensors.torch import load_file, save_file

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vlalign.data.synthetic import make_synthetic_dataset  # noqa: E402
from vlalign.evaluation.retrieval import flatten_captions  # noqa: E402
from vlalign.metrics.retrieval_recall.retrieval_recall import retrieval_ranks  # noqa: E402
from vlalign.recipes.albef import albef_processor, build_tokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: imports name their folder
from against_official.worker_client import Worker  # noqa: E402
from common.albef_sizes import SIZES, official_bert_config, official_vision  # noqa: E402

WORKER = Path(__file__).with_name("albef_eval_worker.py")
#: this folder's results/, as a path from the working directory (the repository root in the README's commands)
RESULTS = Path(os.path.relpath(Path(__file__).parent / "results"))
NEAR_TIE = 1e-6
#: the official `evaluation()` runs in fp32 only: under bf16 autocast it fails writing bf16 scores into its fp32
#: score matrix (an index_put dtype error), so vlalign's bf16 evaluation is compared with the official fp32 one
RUNS = {
    "official_fp32": ("official", "fp32"),
    "vlalign_fp32": ("vlalign", "fp32"),
    "vlalign_bf16": ("vlalign", "bf16"),
}
RECALLS = ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean")


def write_spec(directory: Path, size: str, num_images: int, image_size: int, batch_size: int) -> Path:
    """The gallery (dataset and processor for vlalign, pixel values and token ids for the official code) and configs."""
    gallery = make_synthetic_dataset(0, 0, num_images, image_size=image_size, captions_per_image=5, seed=0)["test"]
    texts, img2txt, txt2img = flatten_captions(gallery)
    processor = albef_processor(build_tokenizer(texts), image_size)
    processor.save_pretrained(directory / "processor")
    gallery.save_to_disk(str(directory / "dataset"))
    tokens = processor(text=texts, preset="eval")
    pixel_values = processor(images=gallery[:]["image"])["pixel_values"]
    inputs = {
        "pixel_values": pixel_values,
        "input_ids": tokens["input_ids"],
        "attention_mask": tokens["attention_mask"],
    }
    save_file({name: tensor.contiguous() for name, tensor in inputs.items()}, str(directory / "inputs.safetensors"))
    bert = official_bert_config(size, len(processor.tokenizer))
    (directory / "config_bert.json").write_text(json.dumps(bert))
    shape = SIZES[size]
    yaml = {  # configs/Retrieval_coco.yaml, with the ViT's size (which the official constructor hard-codes) added
        "image_res": image_size,
        "vision_width": shape.vision_width,
        "vision_depth": shape.vision_depth,
        "vision_heads": shape.vision_heads,
        "embed_dim": 256,
        "temp": 0.07,
        "queue_size": 65536,
        "momentum": 0.995,
        "distill": True,
    }
    spec = {
        "dir": str(directory),
        "yaml": yaml,
        "bert": bert,
        "vision": official_vision(size),
        "texts": texts,
        "img2txt": img2txt,
        "txt2img": txt2img,
        "batch_size": batch_size,
    }
    path = directory / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def start_workers(spec: Path, args: argparse.Namespace) -> dict[str, Worker]:
    common = ["--spec", str(spec), "--threads", str(args.threads), "--official-src", args.official_src]
    return {
        "official": Worker(args.official_python, WORKER, "official", ["--impl", "official", *common]),
        "vlalign": Worker(sys.executable, WORKER, "vlalign", ["--impl", "vlalign", *common]),
    }


def rank_agreement(
    official: torch.Tensor, ours: torch.Tensor, ground_truth: list[list[int]], tolerance: float
) -> dict:
    """Queries whose best ground-truth rank differs, and how many of them sit on an official near-tie: another
    candidate's official score within `tolerance` of the ground truth's."""
    official_ranks, our_ranks = retrieval_ranks(official, ground_truth), retrieval_ranks(ours, ground_truth)
    differing = (official_ranks != our_ranks).nonzero().flatten().tolist()
    near_ties = 0
    for query in differing:
        scores = official[query]
        truth = scores[ground_truth[query]].max()
        others = torch.ones_like(scores, dtype=torch.bool)
        others[ground_truth[query]] = False
        near_ties += bool(((scores[others] - truth).abs() <= tolerance).any())
    return {
        "queries": len(official_ranks),
        "rank_differs": len(differing),
        "near_ties": near_ties,
        "near_tie_tolerance": tolerance,
    }


def compare_scores(official: dict, ours: dict, spec: dict, exact: bool) -> dict:
    """Re-rank scores where both re-ranked (the official fill is -100, vlalign's is at most that) and rank agreement.
    Near-ties are within 1e-6 for an `exact` (fp32) run, else within twice the run's largest score difference."""
    result = {}
    for direction, ground_truth in (("i2t", spec["img2txt"]), ("t2i", [[image] for image in spec["txt2img"]])):
        reranked_official, reranked_ours = official[direction] != -100.0, ours[direction] > -100.0
        both = reranked_official & reranked_ours
        difference = float((official[direction] - ours[direction])[both].abs().max())
        tolerance = NEAR_TIE if exact else 2 * difference
        result[direction] = {
            "same_candidates": bool(torch.equal(reranked_official, reranked_ours)),
            "max_abs_score_difference": difference,
            **rank_agreement(official[direction], ours[direction], ground_truth, tolerance),
        }
    return result


def evaluate_side_by_side(size: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        spec_path = write_spec(directory, size, args.images, args.image_size, args.batch_size)
        spec = json.loads(spec_path.read_text())
        workers = start_workers(spec_path, args)
        row = {"size": size, "images": args.images, "texts": len(spec["texts"]), "k": args.k}
        best = {run: float("inf") for run in RUNS}
        for _ in range(args.rounds):
            for run, (name, precision) in RUNS.items():
                path = directory / f"{run}.safetensors"
                answer = workers[name].ask(cmd="evaluate", bf16=precision == "bf16", k=args.k, scores_path=str(path))
                best[run] = min(best[run], answer["seconds"])
                row.setdefault("recalls", {})[run] = answer["recalls"]
        scores = {run: load_file(str(directory / f"{run}.safetensors")) for run in RUNS}
        row["seconds"] = best
        for run in ("vlalign_fp32", "vlalign_bf16"):
            row[run] = {
                "speedup": best["official_fp32"] / best[run],
                "scores": compare_scores(scores["official_fp32"], scores[run], spec, exact=run == "vlalign_fp32"),
                "max_recall_difference": max(
                    abs(row["recalls"][run][key] - row["recalls"]["official_fp32"][key]) for key in RECALLS
                ),
            }
        for worker in workers.values():
            worker.close()
    return row


def scaling_grid(args: argparse.Namespace) -> list[dict]:
    """Evaluation time of both implementations over gallery size and k (fp32, one round each)."""
    cells = []
    for num_images in args.scaling_images:
        with tempfile.TemporaryDirectory() as directory:
            directory = Path(directory)
            spec = write_spec(directory, args.scaling_size, num_images, args.image_size, args.batch_size)
            workers = start_workers(spec, args)
            for k in args.scaling_k:
                seconds = {
                    name: worker.ask(cmd="evaluate", bf16=False, k=k, scores_path=str(directory / "s.safetensors"))[
                        "seconds"
                    ]
                    for name, worker in workers.items()
                }
                cells.append({"images": num_images, "k": k, "seconds": seconds})
            for worker in workers.values():
                worker.close()
    return cells


def plot(rows: list[dict], cells: list[dict], path: Path, scaling_size: str) -> None:
    figure, axes = plt.subplots(1, 2 if cells else 1, figsize=(11 if cells else 6, 4), squeeze=False)
    axis = axes[0, 0]
    labels = [row["size"] for row in rows]
    for offset, run in enumerate(RUNS):
        values = [row["seconds"][run] for row in rows]
        axis.bar(
            [i + (offset - 1) * 0.27 for i in range(len(labels))], values, width=0.27, label=run.replace("_", " ")
        )
    axis.set_xticks(range(len(labels)), labels)
    axis.set_ylabel("evaluation seconds")
    axis.set_title("ALBEF retrieval evaluation, same model, gallery and k")
    axis.legend()
    if cells:
        axis = axes[0, 1]
        for k in sorted({cell["k"] for cell in cells}):
            points = [cell for cell in cells if cell["k"] == k]
            for name, style in (("official", "--"), ("vlalign", "-")):
                axis.plot(
                    [cell["images"] for cell in points],
                    [cell["seconds"][name] for cell in points],
                    style,
                    marker="o",
                    label=f"{name}, k={k}",
                )
        axis.set_xlabel("gallery images (5 captions each)")
        axis.set_ylabel("evaluation seconds (fp32)")
        axis.set_title(f"scaling, {scaling_size}")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def print_tables(rows: list[dict], cells: list[dict], args: argparse.Namespace) -> None:
    print(f"torch {torch.__version__}, {args.threads} threads, {args.image_size}-px images, 5 captions per image")
    print("| size | gallery | k | official fp32 s | vlalign fp32 s | vlalign bf16 s | speedup fp32 / bf16 |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        seconds = row["seconds"]
        print(
            f"| {row['size']} | {row['images']} images, {row['texts']} texts | {row['k']} "
            f"| {seconds['official_fp32']:.1f} | {seconds['vlalign_fp32']:.1f} | {seconds['vlalign_bf16']:.1f} "
            f"| {row['vlalign_fp32']['speedup']:.2f}x / {row['vlalign_bf16']['speedup']:.2f}x |"
        )
    print("\n| size | run | recalls (" + ", ".join(RECALLS) + ") | max recall difference |")
    print("|---|---|---|---|")
    for row in rows:
        for run, recalls in row["recalls"].items():
            difference = row[run]["max_recall_difference"] if run in row else 0.0
            values = " / ".join(f"{recalls[key]:.2f}" for key in RECALLS)
            print(f"| {row['size']} | {run} | {values} | {difference:.2f} |")
    print(
        "\n| size | vs official fp32 | direction | same candidates | max score difference | rank differs | near-ties (within) |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        for run in ("vlalign_fp32", "vlalign_bf16"):
            for direction, agreement in row[run]["scores"].items():
                print(
                    f"| {row['size']} | {run} | {direction} | {agreement['same_candidates']} "
                    f"| {agreement['max_abs_score_difference']:.2e} "
                    f"| {agreement['rank_differs']} of {agreement['queries']} | {agreement['near_ties']} "
                    f"({agreement['near_tie_tolerance']:.0e}) |"
                )
    if cells:
        print(f"\nscaling ({args.scaling_size}, fp32): | images | k | official s | vlalign s | speedup |")
        for cell in cells:
            seconds = cell["seconds"]
            print(
                f"| {cell['images']} | {cell['k']} | {seconds['official']:.1f} | {seconds['vlalign']:.1f} "
                f"| {seconds['official'] / seconds['vlalign']:.2f}x |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-src", required=True, help="a local checkout of github.com/salesforce/ALBEF")
    parser.add_argument("--official-python", required=True, help="a Python with the official code's dependencies")
    parser.add_argument("--sizes", nargs="+", default=["small", "base"], choices=list(SIZES))
    parser.add_argument("--images", type=int, default=16, help="gallery images (5 captions each)")
    parser.add_argument("--k", type=int, default=8, help="k_test: candidates re-ranked per query")
    parser.add_argument("--image-size", type=int, default=384, help="Retrieval_coco.yaml's image_res")
    parser.add_argument("--batch-size", type=int, default=64, help="Retrieval_coco.yaml's batch_size_test")
    parser.add_argument("--rounds", type=int, default=2, help="evaluations per implementation and precision (best)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scaling-size", default="small", choices=list(SIZES))
    parser.add_argument("--scaling-images", type=int, nargs="*", default=[], help="gallery sizes of the scaling grid")
    parser.add_argument("--scaling-k", type=int, nargs="*", default=[4, 8, 16], help="k values of the scaling grid")
    parser.add_argument("--output", default=str(RESULTS / "eval_vs_official.json"))
    args = parser.parse_args()

    rows = [evaluate_side_by_side(size, args) for size in args.sizes]
    cells = scaling_grid(args) if args.scaling_images else []
    print_tables(rows, cells, args)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "near_tie": NEAR_TIE}
    output.write_text(json.dumps({"meta": meta, "args": vars(args), "rows": rows, "scaling": cells}, indent=1))
    plot(rows, cells, output.with_suffix(".png"), args.scaling_size)
    print(f"wrote {output} and {output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
