"""Gallery search at scale: gallery size (1k, 10k, 100k items) vs FAISS index build time and query time, for the exact
index (`IndexFlatIP`) and the approximate ones (`ivf`: inverted lists, `hnsw`: graph) that `vlalign index` builds, with
the approximate indexes' recall@1/10 against exact search; plus the measured per-item embedding time of a micro model
(the part of `vlalign index` that runs the model).

    python benchmarks/performance/gallery_search.py [--sizes 1000 10000 100000] [--dim 256]
        [--output benchmarks/performance/results/gallery_search.json]

The index part uses random unit vectors of a real model's embedding size (ALBEF/SIMLA/CODIS: 256), built with
`vlalign.evaluation.gallery.build_faiss_index` and searched through `datasets`' `search_batch`, exactly as galleries
are. Queries are gallery items plus noise (cosine ≈ 0.9 to their source), as a caption lies near its image. Random
vectors are the hard case for approximate search: beyond the first, the neighbours are nearly equidistant, so
recall@10 here is a lower bound of what clustered real embeddings give. Prints a markdown table and writes JSON and a
log-log PNG of build and query time against gallery size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import datasets
import faiss
import matplotlib
import numpy as np
import pyarrow as pa
import torch
from datasets.table import InMemoryTable

from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.evaluation.gallery import EMBEDDINGS_COLUMN, INDEX_TYPES, build_faiss_index, embed_gallery
from vlalign.methods import get_method
from vlalign.recipes import dataset_captions

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NUM_QUERIES = 100
K = 10
#: this folder's results/, as a path from the working directory (the repository root in the README's commands)
RESULTS = Path(os.path.relpath(Path(__file__).parent / "results"))


def unit_vectors(generator: np.random.Generator, count: int, dim: int) -> np.ndarray:
    vectors = generator.standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def recall(approximate: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean fraction of each query's exact top-k that the approximate top-k holds."""
    return float(np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approximate, exact, strict=True)]))


def best_of(run, repeats: int = 3) -> float:
    """Fastest of `repeats` wall-clock timings of `run()` (the machine is shared: the minimum is the least noisy)."""
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        timings.append(time.perf_counter() - start)
    return min(timings)


def measure_index(vectors: np.ndarray, queries: np.ndarray, index_type: str) -> tuple[dict, np.ndarray]:
    """Build (train + add) and query timings of one index over `vectors`, and its top-K rows per query."""
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
    gallery = datasets.Dataset(InMemoryTable(pa.table({EMBEDDINGS_COLUMN: column})))
    start = time.perf_counter()
    gallery.add_faiss_index(EMBEDDINGS_COLUMN, custom_index=build_faiss_index(vectors, index_type), batch_size=10_000)
    build = time.perf_counter() - start
    single = best_of(lambda: [gallery.search(EMBEDDINGS_COLUMN, query, k=K) for query in queries]) / len(queries)
    batched = best_of(lambda: gallery.search_batch(EMBEDDINGS_COLUMN, queries, k=K)) / len(queries)
    rows = np.stack(gallery.search_batch(EMBEDDINGS_COLUMN, queries, k=K).total_indices)
    result = {"build_s": build, "query_ms": 1e3 * single, "batch_query_ms": 1e3 * batched}
    return result, rows


def embedding_seconds_per_item(method_name: str, count: int = 256, batch_size: int = 64) -> dict:
    """Per-item time of `embed_gallery` (encode + index) for images and captions with the method's micro model."""
    method = get_method(method_name)
    dataset = make_synthetic_dataset(num_train=0, num_validation=0, num_test=count // 2, seed=0)
    processor = method.build_processor(method.build_tokenizer(dataset_captions(dataset)), 64)
    torch.manual_seed(0)
    model = method.model_class(method.tiny_config(processor.tokenizer, 64)).eval()
    pairs = datasets.Dataset.from_dict({"caption": dataset_captions(dataset)})
    timings = {}
    for modality, (items, column) in {"image": (dataset["test"], "image"), "text": (pairs, "caption")}.items():
        start = time.perf_counter()
        embed_gallery(model, processor, items, column=column, batch_size=batch_size, show_progress=False)
        timings[f"{modality}_ms_per_item"] = 1e3 * (time.perf_counter() - start) / len(items)
    return timings


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| items | index | build (s) | query (ms, one at a time) | query (ms each, batch of 100) | recall@1 | recall@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['size']:,} | {row['index']} | {row['build_s']:.3f} | {row['query_ms']:.3f} | "
            f"{row['batch_query_ms']:.3f} | {row['recall_at_1']:.3f} | {row['recall_at_10']:.3f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for index_type in INDEX_TYPES:
        points = [row for row in rows if row["index"] == index_type]
        sizes = [row["size"] for row in points]
        axes[0].plot(sizes, [row["build_s"] for row in points], marker="o", label=index_type)
        axes[1].plot(sizes, [row["query_ms"] for row in points], marker="o", label=f"{index_type}, one query")
        axes[1].plot(sizes, [row["batch_query_ms"] for row in points], marker="x", linestyle="--",
                     label=f"{index_type}, batch of {NUM_QUERIES}")  # fmt: skip
    for axis, label in zip(axes, ("index build (s)", "query time (ms per query)"), strict=True):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("gallery items")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"FAISS gallery search, top-{K}, {rows[0]['dim']}-d, {faiss.omp_get_max_threads()} thread(s)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--dim", type=int, default=256, help="embedding size (ALBEF/SIMLA/CODIS base: 256)")
    parser.add_argument("--method", default="albef", help="the micro model whose embedding time is measured")
    parser.add_argument("--output", type=Path, default=RESULTS / "gallery_search.json")
    args = parser.parse_args()

    generator = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        vectors = unit_vectors(generator, size, args.dim)
        sources = generator.choice(size, NUM_QUERIES, replace=False)
        noise = 0.5 * generator.standard_normal((NUM_QUERIES, args.dim)).astype(np.float32) / np.sqrt(args.dim)
        queries = vectors[sources] + noise
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        exact_rows = None
        for index_type in INDEX_TYPES:  # exact first: the reference of the approximate recalls
            result, found = measure_index(vectors, queries, index_type)
            exact_rows = found if exact_rows is None else exact_rows
            result.update(size=size, dim=args.dim, index=index_type, recall_at_1=recall(found, exact_rows, 1),
                          recall_at_10=recall(found, exact_rows, K))  # fmt: skip
            rows.append(result)
            print(f"{size:>7,} {index_type:>5}: build {result['build_s']:.2f} s, query {result['query_ms']:.3f} ms, "
                  f"recall@10 {result['recall_at_10']:.3f}", flush=True)  # fmt: skip

    embedding = embedding_seconds_per_item(args.method)
    table = markdown_table(rows)
    note = (
        f"{args.method} micro model (64 px), embed_gallery: {embedding['image_ms_per_item']:.2f} ms per image, "
        f"{embedding['text_ms_per_item']:.2f} ms per caption; FAISS {faiss.__version__}, "
        f"{faiss.omp_get_max_threads()} thread(s)."
    )
    print(table + "\n\n" + note)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "rows": rows,
                "embedding": {"method": args.method, **embedding},
                "num_queries": NUM_QUERIES,
                "k": K,
                "index_types": INDEX_TYPES,
                "faiss": faiss.__version__,
                "threads": faiss.omp_get_max_threads(),
                "machine": platform.processor() or platform.machine(),
                "table": table,
                "note": note,
            },
            indent=1,
        )
        + "\n"
    )
    plot(rows, args.output.with_suffix(".png"))
    print(f"Wrote {args.output} and {args.output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
