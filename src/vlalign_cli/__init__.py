"""The `vlalign` command's arguments, parsed before anything heavy is imported.

`import vlalign` registers every model with transformers' Auto classes, which imports torch and transformers (5–20 s
on a busy 2-core machine). A mistyped flag, a missing argument or `--help` should not wait for that, so the console
script starts here, outside the `vlalign` package: this module needs the standard library only, and imports the verbs
(`vlalign.cli`) once the arguments are valid. `METHOD_NAMES` and `NUM_THREADS_ENV_VAR` mirror
`vlalign.methods.method_names()` and `vlalign.threads.ENV_VAR` (tests/test_cli_round2.py checks that they agree).
"""

from __future__ import annotations

import argparse

#: the registered methods (`vlalign.methods`), the choices of every `--method`
METHOD_NAMES = ("albef", "codis", "fdt", "simla")
#: environment variable that sets vlalign's thread count (`vlalign.threads.ENV_VAR`)
NUM_THREADS_ENV_VAR = "VLALIGN_NUM_THREADS"
#: how far the verbs that read images check them first (as `vlalign.data.loaders` does)
CHECK_IMAGES = ("header", "decode", "none")


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1 (step counts, batch sizes, k, thread counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {value}")
    return value


def _add_image_checks(verb: argparse.ArgumentParser) -> None:
    """`--check-images` and `--on-error` of a verb that reads image files."""
    verb.add_argument(
        "--check-images",
        default="header",
        choices=CHECK_IMAGES,
        help="how far every image is checked before the model runs: 'header' (open it and read its size, ~0.1 ms an "
        "image), 'decode' (a full decode: catches truncated files) or 'none'",
    )
    verb.add_argument(
        "--on-error",
        default="raise",
        choices=["raise", "skip"],
        help="unreadable images: stop with the list ('raise') or leave them out, counted and reported ('skip')",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlalign", description="Vision-language alignment pretraining.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--num-threads",
        type=positive_int,
        help=f"torch CPU threads (default: ${NUM_THREADS_ENV_VAR}, else $OMP_NUM_THREADS, else the CPUs not busy "
        "elsewhere)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser(
        "convert", parents=[common], help="convert an official checkpoint into a Hugging Face folder"
    )
    convert.add_argument("--method", required=True, choices=METHOD_NAMES)
    convert.add_argument("--checkpoint", required=True, help="the official .pth file")
    convert.add_argument(
        "--config", action="append", required=True, help="the official config files, e.g. YAML and BERT json (repeat)"
    )
    convert.add_argument("--tokenizer", help="folder with vocabulary / tokenizer files, or a Hub id")
    convert.add_argument("--output", required=True, help="output folder")
    convert.add_argument(
        "--task", default="auto", choices=["auto", "pretraining", "retrieval", "vqa", "ve", "nlvr2", "text-assignment"]
    )
    convert.add_argument("--image-size", type=positive_int, help="target resolution (default: the config's)")

    quickstart = commands.add_parser(
        "quickstart",
        parents=[common],
        help="train, evaluate, save, reload and query a tiny model on the built-in synthetic data",
    )
    quickstart.add_argument("--method", default="albef", choices=METHOD_NAMES)
    quickstart.add_argument(
        "--task",
        default="retrieval",
        choices=["retrieval", "vqa", "ve", "nlvr2"],
        help="'retrieval': pretrain and evaluate retrieval; 'vqa', 've', 'nlvr2': fine-tune the pretrained model for "
        "visual question answering, visual entailment or visual reasoning (albef, codis, simla)",
    )
    quickstart.add_argument(
        "--from",
        dest="pretrained",
        help="--task vqa|ve|nlvr2: the model folder of a quick-start pretraining run of the method (default: "
        "quickstart_output/model beside the output folder; without one, the pretraining runs first)",
    )
    quickstart.add_argument(
        "--output-dir",
        help="output folder (default: quickstart_output, or quickstart_<task>_output with --task vqa|ve|nlvr2)",
    )
    quickstart.add_argument(
        "--max-steps", type=positive_int, help="optimizer steps (default: the method's tuned recipe)"
    )
    quickstart.add_argument("--seed", type=int, default=0)

    evaluate = commands.add_parser(
        "evaluate",
        parents=[common],
        help="image-text retrieval recalls (R@1/5/10) of a saved model on a dataset, as JSON",
    )
    evaluate.add_argument("--model", required=True, help="a saved model folder (any method)")
    source = evaluate.add_mutually_exclusive_group()
    source.add_argument("--karpathy-json", help="an evaluation annotation file (Karpathy split, captions per image)")
    source.add_argument("--dataset-dir", help="a `datasets` folder (save_to_disk) with `image` and `captions`")
    evaluate.add_argument("--image-root", help="folder the --karpathy-json image paths are relative to")
    evaluate.add_argument("--split", default="test", help="split of a --dataset-dir DatasetDict")
    evaluate.add_argument("--synthetic-size", type=positive_int, default=100, help="test images of the built-in data")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the built-in data")
    _add_image_checks(evaluate)
    evaluate.add_argument("--k-test", type=positive_int, help="ITM re-rank candidates (default: the config's)")
    evaluate.add_argument("--itc-only", action="store_true", help="rank by embedding cosine only (no ITM re-rank)")
    evaluate.add_argument("--batch-size", type=positive_int, default=64)
    evaluate.add_argument("--output", help="write the metrics JSON here too")

    retrieve = commands.add_parser(
        "retrieve",
        parents=[common],
        help="rank a folder of images, or search a stored gallery, for a query with a saved model",
    )
    retrieve.add_argument("--model", required=True, help="a saved model folder (any method)")
    candidates = retrieve.add_mutually_exclusive_group(required=True)
    candidates.add_argument("--images", help="folder of images (searched recursively)")
    candidates.add_argument("--gallery", help="a gallery folder written by `vlalign index` (FAISS search)")
    retrieve.add_argument(
        "--query", required=True, help="the text query (for a gallery of captions: an image file or URL)"
    )
    retrieve.add_argument("--top-k", type=positive_int, default=5)
    retrieve.add_argument("--rerank", action="store_true", help="re-rank with the ITM head where the model has one")
    retrieve.add_argument("--json", action="store_true", help="print the ranked list as JSON")
    _add_image_checks(retrieve)

    index = commands.add_parser(
        "index",
        parents=[common],
        help="embed a gallery of images or captions with a saved model and index it with FAISS",
    )
    index.add_argument("--model", required=True, help="a saved model folder (any method)")
    gallery_source = index.add_mutually_exclusive_group(required=True)
    gallery_source.add_argument("--dataset-dir", help="a `datasets` folder (save_to_disk), one item per row")
    gallery_source.add_argument("--image-folder", help="a folder of images (searched recursively)")
    index.add_argument("--split", default="test", help="split of a --dataset-dir DatasetDict")
    index.add_argument(
        "--column", default="image", help="the --dataset-dir column to embed: images, or one caption per row"
    )
    index.add_argument("--output", required=True, help="the gallery folder to write")
    index.add_argument(
        "--index-type",
        default="exact",
        choices=["exact", "ivf", "hnsw"],
        help="exact inner-product search, or approximate: inverted lists (ivf) or a graph (hnsw)",
    )
    index.add_argument("--search-params", help='approximate-index search parameters, e.g. "nprobe=64" (FAISS syntax)')
    index.add_argument("--batch-size", type=positive_int, default=64, help="items per encoder forward")
    _add_image_checks(index)

    push = commands.add_parser(
        "push",
        parents=[common],
        help="publish a saved model to the Hub with its results in the model card (model-index)",
    )
    push.add_argument("--model", required=True, help="a saved model folder (any method)")
    push.add_argument("--repo-id", required=True, help='the Hub repository, "namespace/name"')
    push.add_argument(
        "--eval-dataset",
        help='evaluate on "synthetic" (the built-in test split) or a `datasets` folder (save_to_disk) with `image` and '
        "`captions` and/or a ClassLabel `label` (default: the eval_results.json saved in --model)",
    )
    push.add_argument("--dataset-name", help="the evaluation dataset's name in the card (default: the folder's name)")
    push.add_argument("--split", default="test", help="split of an --eval-dataset DatasetDict")
    push.add_argument("--synthetic-size", type=positive_int, default=100, help="test images of the built-in data")
    push.add_argument("--seed", type=int, default=0, help="seed of the built-in data")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--token", help="a Hub token with write access (default: $HF_TOKEN, else the stored login)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The console script: parse (usage errors exit with 2 here, before torch is imported), then run the verb."""
    args = build_parser().parse_args(argv)
    from vlalign.cli import run

    return run(args)


__all__ = ["CHECK_IMAGES", "METHOD_NAMES", "NUM_THREADS_ENV_VAR", "build_parser", "main", "positive_int"]
