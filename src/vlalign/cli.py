"""The `vlalign` command line. Every verb takes any registered method (`vlalign.methods`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .files import normalize_permissions
from .methods import get_method, method_names
from .sources import load_saved_model
from .threads import ENV_VAR, configure_threads

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1 (step counts, batch sizes, k, thread counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {value}")
    return value


def _check_output_folder(path: str, flag: str) -> None:
    if Path(path).exists() and not Path(path).is_dir():
        raise ValueError(f"{flag} {path} is an existing file, not a folder; pass a folder path (new or existing).")


def _check_output_file(path: str, flag: str) -> None:
    for parent in Path(path).parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{flag} {path}: {parent} is a file, not a folder; pass a path inside a folder.")
    if Path(path).is_dir():
        raise ValueError(f"{flag} {path} is a folder; pass a file path for the JSON.")


def _convert(args: argparse.Namespace) -> int:
    _check_output_folder(args.output, "--output")
    get_method(args.method).converter(
        checkpoint=args.checkpoint,
        config_files=args.config,
        output_dir=args.output,
        tokenizer=args.tokenizer,
        task=args.task,
        image_size=args.image_size,
    )
    print(f"Converted {args.checkpoint} → {args.output}")
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from .quickstart import QuickstartSettings, run_quickstart

    _check_output_folder(args.output_dir, "--output-dir")
    settings = QuickstartSettings(method=args.method, seed=args.seed, max_steps=args.max_steps)
    run_quickstart(args.output_dir, settings, num_threads=args.num_threads)
    return 0


def _load_dataset_dir(folder: str, split: str):
    """A `datasets` folder written by `save_to_disk`: the dataset, or `split` of a DatasetDict."""
    from datasets import load_from_disk

    if not Path(folder).is_dir():
        raise FileNotFoundError(f"--dataset-dir {folder} is not a folder; pass a folder written by save_to_disk.")
    try:
        dataset = load_from_disk(folder)
    except (IndexError, KeyError) as error:  # what `datasets` raises for an empty or partly written folder
        raise ValueError(
            f"--dataset-dir {folder} cannot be read ({type(error).__name__}: {error}); an empty dataset gives this too. "
            "Write it with `Dataset.save_to_disk` and check that it has rows."
        ) from None
    if not hasattr(dataset, "keys"):
        return dataset
    if split not in dataset:
        raise ValueError(f"--dataset-dir {folder} has no split {split!r}; pass --split with one of {list(dataset)}.")
    return dataset[split]


def _evaluation_dataset(args: argparse.Namespace):
    from .data.loaders import load_karpathy_json
    from .data.synthetic import make_synthetic_dataset

    if args.karpathy_json:
        if not args.image_root:
            raise ValueError("--karpathy-json needs --image-root, the folder its image paths are relative to.")
        return load_karpathy_json(args.karpathy_json, args.image_root, split_layout="eval", on_error=args.on_error)
    if args.dataset_dir:
        return _load_dataset_dir(args.dataset_dir, args.split)
    return make_synthetic_dataset(num_train=0, num_validation=0, num_test=args.synthetic_size, seed=args.seed)["test"]


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_retrieval

    if args.output:
        _check_output_file(args.output, "--output")
    model, processor = load_saved_model(args.model)
    dataset = _evaluation_dataset(args)
    if len(dataset) == 0:
        raise ValueError("The evaluation dataset is empty (0 images); pass a dataset with images and captions.")
    metrics = evaluate_retrieval(
        model, processor, dataset, k_test=args.k_test, itc_only=args.itc_only, batch_size=args.batch_size
    )
    text = json.dumps(metrics, indent=1)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
        print(f"Wrote {args.output}")
    print(text)
    return 0


def _push(args: argparse.Namespace) -> int:
    from .hub.push import load_results, measure_results, push_model

    if args.eval_dataset:
        model, processor = load_saved_model(args.model)
        dataset, name = _push_dataset(args)
        results = measure_results(
            model, processor, dataset, dataset_name=args.dataset_name or name, dataset_split=args.split
        )
    else:
        results = load_results(args.model)
    commit = push_model(args.model, args.repo_id, results=results, token=args.token, private=args.private)
    print(json.dumps({k: v for k, v in results.items() if k in ("retrieval", "zero_shot")}, indent=1))
    print(f"Pushed {args.repo_id}: {commit}")
    return 0


def _push_dataset(args: argparse.Namespace):
    """(dataset, name) of `push --eval-dataset`: the built-in synthetic test split or a `datasets` folder."""
    if args.eval_dataset != "synthetic":
        return _load_dataset_dir(args.eval_dataset, args.split), Path(args.eval_dataset).name
    from .data.synthetic import make_synthetic_dataset
    from .quickstart import DATASET_NAME

    test = make_synthetic_dataset(num_train=0, num_validation=0, num_test=args.synthetic_size, seed=args.seed)["test"]
    return test, DATASET_NAME


def _image_files(folder: str, flag: str = "--images") -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{flag} {folder} is not a folder of images.")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{flag} {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
    return files


def _image_folder_dataset(folder: str):
    """A dataset of a folder's images (searched recursively): an `image` column and each file's `path`."""
    from datasets import Dataset, Features, Image, Value

    paths = [str(path.resolve()) for path in _image_files(folder, "--image-folder")]
    features = Features({"image": Image(), "path": Value("string")})
    return Dataset.from_dict({"image": paths, "path": paths}, features=features)


def _index(args: argparse.Namespace) -> int:
    from .evaluation import embed_gallery

    _check_output_folder(args.output, "--output")
    model, processor = load_saved_model(args.model)
    if args.image_folder:
        dataset, column = _image_folder_dataset(args.image_folder), "image"
    else:
        dataset, column = _load_dataset_dir(args.dataset_dir, args.split), args.column
    gallery = embed_gallery(
        model, processor, dataset, column=column, index_type=args.index_type, search_params=args.search_params,
        batch_size=args.batch_size,
    )  # fmt: skip
    gallery.save(args.output)
    normalize_permissions(args.output)
    print(f"Indexed {len(gallery)} {gallery.modality}s ({args.index_type}) → {args.output}")
    return 0


def _retrieve(args: argparse.Namespace) -> int:
    from transformers import pipeline

    from .pipelines.retrieval import TASK

    _check_text(args.query, "--query")
    model, processor = load_saved_model(args.model)
    retriever = pipeline(TASK, model=model, processor=processor)
    rerank = args.rerank and model.supports_itm_rerank
    if args.rerank and not rerank:
        print(f"note: {type(model).__name__} has no ITM head; ranking by embedding cosine only.", file=sys.stderr)
    if args.gallery:
        results = _search_stored_gallery(retriever, args, rerank)
    else:
        files = _image_files(args.images)
        ranked = retriever(args.query, candidate_images=[str(f) for f in files], top_k=args.top_k, rerank=rerank)
        results = [{**hit, "path": str(files[hit["image_index"]])} for hit in ranked]
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for hit in results:
            item = hit.get("path", hit.get("text", hit.get("image_index")))
            print(f"{hit['rank']:>3}  {hit['score']:8.4f}  {item}")
    return 0


def _check_text(text: str, flag: str) -> None:
    """Refuse text that is not valid Unicode (lone surrogates: undecodable bytes in the command line)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{flag} holds characters that are not valid UTF-8 text ({error.object[error.start : error.end]!a} at "
            f"position {error.start}); check the terminal's encoding (e.g. LANG=C.UTF-8) or the query's bytes."
        ) from None


def _search_stored_gallery(retriever, args: argparse.Namespace, rerank: bool) -> list[dict]:
    """Search a gallery written by `vlalign index` (an image gallery for a caption, a caption gallery for an image
    file); image hits carry their file `path` where the gallery has one (galleries of an --image-folder)."""
    from .evaluation import load_gallery

    gallery = load_gallery(args.gallery)
    ranked = retriever(args.query, candidate_gallery=gallery, top_k=args.top_k, rerank=rerank)
    if gallery.modality != "image" or "path" not in gallery.dataset.column_names:
        return ranked
    paths = gallery.dataset.select_columns(["path"])[[hit["image_index"] for hit in ranked]]["path"]
    return [{**hit, "path": path} for hit, path in zip(ranked, paths, strict=True)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlalign", description="Vision-language alignment pretraining.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--num-threads",
        type=_positive_int,
        help=f"torch CPU threads (default: ${ENV_VAR}, else $OMP_NUM_THREADS, else the CPUs not busy elsewhere)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    methods = method_names()

    convert = commands.add_parser(
        "convert", parents=[common], help="convert an official checkpoint into a Hugging Face folder"
    )
    convert.add_argument("--method", required=True, choices=methods)
    convert.add_argument("--checkpoint", required=True, help="the official .pth file")
    convert.add_argument(
        "--config", action="append", required=True, help="the official config files, e.g. YAML and BERT json (repeat)"
    )
    convert.add_argument("--tokenizer", help="folder with vocabulary / tokenizer files, or a Hub id")
    convert.add_argument("--output", required=True, help="output folder")
    convert.add_argument("--task", default="auto", choices=["auto", "pretraining", "retrieval"])
    convert.add_argument("--image-size", type=_positive_int, help="target resolution (default: the config's)")
    convert.set_defaults(handler=_convert)

    quickstart = commands.add_parser(
        "quickstart",
        parents=[common],
        help="train, evaluate, save, reload and query a tiny model on the built-in synthetic data",
    )
    quickstart.add_argument("--method", default="albef", choices=methods)
    quickstart.add_argument("--output-dir", default="quickstart_output")
    quickstart.add_argument(
        "--max-steps", type=_positive_int, help="optimizer steps (default: the method's tuned recipe)"
    )
    quickstart.add_argument("--seed", type=int, default=0)
    quickstart.set_defaults(handler=_quickstart)

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
    evaluate.add_argument("--synthetic-size", type=_positive_int, default=100, help="test images of the built-in data")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the built-in data")
    evaluate.add_argument("--on-error", default="raise", choices=["raise", "skip"], help="corrupt images")
    evaluate.add_argument("--k-test", type=_positive_int, help="ITM re-rank candidates (default: the config's)")
    evaluate.add_argument("--itc-only", action="store_true", help="rank by embedding cosine only (no ITM re-rank)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=64)
    evaluate.add_argument("--output", help="write the metrics JSON here too")
    evaluate.set_defaults(handler=_evaluate)

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
    retrieve.add_argument("--top-k", type=_positive_int, default=5)
    retrieve.add_argument("--rerank", action="store_true", help="re-rank with the ITM head where the model has one")
    retrieve.add_argument("--json", action="store_true", help="print the ranked list as JSON")
    retrieve.set_defaults(handler=_retrieve)

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
    index.add_argument("--batch-size", type=_positive_int, default=64, help="items per encoder forward")
    index.set_defaults(handler=_index)

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
    push.add_argument("--synthetic-size", type=_positive_int, default=100, help="test images of the built-in data")
    push.add_argument("--seed", type=int, default=0, help="seed of the built-in data")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--token", help="a Hub token with write access (default: $HF_TOKEN, else the stored login)")
    push.set_defaults(handler=_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a verb. Expected failures (bad arguments, files or folders; `ValueError`/`OSError` and their subclasses,
    which the loaders and converters raise with the problem and the fix) print one line and exit with 1; anything
    else is a bug and keeps its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        configure_threads(args.num_threads)
        return args.handler(args)
    except (ValueError, OSError) as error:
        print(f"{parser.prog} {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
