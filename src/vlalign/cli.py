"""The `vlalign` command line's verbs. Every verb takes any registered method (`vlalign.methods`); the arguments are
parsed by `vlalign_cli` (the console script), which imports this module only once they are valid."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from huggingface_hub.errors import StrictDataclassError

from vlalign_cli import build_parser

from .files import atomic_folder, normalize_permissions
from .methods import get_method
from .sources import load_saved_model
from .threads import configure_threads

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


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
    converter = get_method(args.method).converter
    with atomic_folder(args.output, keep_existing=True) as staging:  # all or nothing (a full disk leaves no half)
        converter(
            checkpoint=args.checkpoint,
            config_files=args.config,
            output_dir=staging,
            tokenizer=args.tokenizer,
            task=args.task,
            image_size=args.image_size,
        )
    print(f"Converted {args.checkpoint} → {args.output}")
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    if args.task == "vqa":
        return _quickstart_vqa(args)
    if args.task in ("ve", "nlvr2"):
        return _quickstart_reasoning(args)
    from .quickstart import QuickstartSettings, run_quickstart

    if args.pretrained is not None:
        raise ValueError(
            "--from starts fine-tuning from a pretrained model; pass --task vqa, --task ve or --task nlvr2 with it."
        )
    output_dir = args.output_dir or "quickstart_output"
    _check_output_folder(output_dir, "--output-dir")
    settings = QuickstartSettings(method=args.method, seed=args.seed, max_steps=args.max_steps)
    run_quickstart(output_dir, settings, num_threads=args.num_threads)
    return 0


def _quickstart_vqa(args: argparse.Namespace) -> int:
    from .quickstart_vqa import VqaQuickstartSettings, run_vqa_quickstart

    output_dir = args.output_dir or "quickstart_vqa_output"
    _check_output_folder(output_dir, "--output-dir")
    settings = VqaQuickstartSettings(
        method=args.method, pretrained=args.pretrained, seed=args.seed, max_steps=args.max_steps
    )
    run_vqa_quickstart(output_dir, settings, num_threads=args.num_threads)
    return 0


def _quickstart_reasoning(args: argparse.Namespace) -> int:
    from .quickstart_reasoning import ReasoningQuickstartSettings, run_reasoning_quickstart

    output_dir = args.output_dir or f"quickstart_{args.task}_output"
    _check_output_folder(output_dir, "--output-dir")
    settings = ReasoningQuickstartSettings(
        task=args.task, method=args.method, pretrained=args.pretrained, seed=args.seed, max_steps=args.max_steps
    )
    run_reasoning_quickstart(output_dir, settings, num_threads=args.num_threads)
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
        return load_karpathy_json(
            args.karpathy_json, args.image_root, "eval", on_error=args.on_error, check_images=args.check_images
        )
    if args.dataset_dir:
        dataset = _load_dataset_dir(args.dataset_dir, args.split)
        return _checked_dataset(dataset, "image", f"--dataset-dir {args.dataset_dir}", args)
    return make_synthetic_dataset(num_train=0, num_validation=0, num_test=args.synthetic_size, seed=args.seed)["test"]


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_retrieval

    if args.output:
        _check_output_file(args.output, "--output")
    dataset = _evaluation_dataset(args)  # its images checked before the model loads
    if len(dataset) == 0:
        raise ValueError("The evaluation dataset is empty (0 images); pass a dataset with images and captions.")
    model, processor = load_saved_model(args.model)
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
    from .hub.access import check_write_access
    from .hub.push import load_results, measure_results, push_model

    check_write_access(args.repo_id, token=args.token)  # before minutes of evaluation
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


def _image_files(folder: str, flag: str, args: argparse.Namespace) -> list[Path]:
    """The image files of a folder (searched recursively) that pass `--check-images`."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{flag} {folder} is not a folder of images.")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{flag} {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
    kept = _readable_images([str(f) for f in files], [str(f) for f in files], f"{flag} {folder}", args)
    return [files[i] for i in kept]


def _checked_dataset(dataset, column: str, source: str, args: argparse.Namespace):
    """`dataset` without the rows whose `column` image fails `--check-images` (a column of images; others as is)."""
    from datasets import Image

    if not isinstance(dataset.features.get(column), Image):
        return dataset
    encoded = dataset.cast_column(column, Image(decode=False))[column]
    images = [None if e is None else e["bytes"] if e["bytes"] is not None else e["path"] for e in encoded]
    refs = [f"row {row}: {e['path']}" if e and e["path"] else f"row {row}" for row, e in enumerate(encoded)]
    kept = _readable_images(images, refs, source, args)
    return dataset if len(kept) == len(dataset) else dataset.select(kept)


def _readable_images(images: list, refs: list[str], source: str, args: argparse.Namespace) -> list[int]:
    """Positions of the `images` (paths or encoded bytes) that pass the loaders' check at `--check-images` (each
    opened once). With `--on-error raise` any other stops the verb with the list; with `skip` they are left out,
    counted in a warning (the loaders' behaviour, `vlalign.data.loaders`)."""
    from .data.loaders import DataValidationError, LoadReport, _check_images

    problems = _check_images(images, args.check_images, None)
    kept = [i for i, problem in enumerate(problems) if problem is None]
    if len(kept) == len(images):
        return kept
    bad = tuple((ref, problem) for ref, problem in zip(refs, problems, strict=True) if problem is not None)
    report = LoadReport(source, "eval", len(images), len(kept), bad, image_check=args.check_images)
    if args.on_error == "raise" or not kept:
        raise DataValidationError(
            f"{source}: {len(bad)} of {len(images)} images are unreadable ({report.describe_problems()}). Repair or "
            "remove them, or pass --on-error skip to leave them out (counted and reported).",
            report,
        )
    warnings.warn(f"{source}: skipped {len(bad)} of {len(images)} images: {report.describe_problems()}", stacklevel=2)
    return kept


def _image_folder_dataset(folder: str, args: argparse.Namespace):
    """A dataset of a folder's images (searched recursively): an `image` column and each file's `path`."""
    from datasets import Dataset, Features, Image, Value

    paths = [str(path.resolve()) for path in _image_files(folder, "--image-folder", args)]
    features = Features({"image": Image(), "path": Value("string")})
    return Dataset.from_dict({"image": paths, "path": paths}, features=features)


def _index(args: argparse.Namespace) -> int:
    from .evaluation import embed_gallery

    _check_output_folder(args.output, "--output")
    if args.image_folder:
        dataset, column = _image_folder_dataset(args.image_folder, args), "image"
    else:
        dataset, column = _load_dataset_dir(args.dataset_dir, args.split), args.column
        dataset = _checked_dataset(dataset, column, f"--dataset-dir {args.dataset_dir}", args)
    model, processor = load_saved_model(args.model)
    gallery = embed_gallery(
        model, processor, dataset, column=column, index_type=args.index_type, search_params=args.search_params,
        batch_size=args.batch_size,
    )  # fmt: skip
    with atomic_folder(args.output, keep_existing=True) as staging:  # all or nothing (a full disk leaves no half)
        gallery.save(staging)
        normalize_permissions(staging)
    print(f"Indexed {len(gallery)} {gallery.modality}s ({args.index_type}) → {args.output}")
    return 0


def _retrieve(args: argparse.Namespace) -> int:
    from transformers import pipeline

    from .pipelines.retrieval import TASK

    _check_text(args.query, "--query")
    files = None if args.gallery else _image_files(args.images, "--images", args)
    model, processor = load_saved_model(args.model)
    retriever = pipeline(TASK, model=model, processor=processor)
    rerank = args.rerank and model.supports_itm_rerank
    if args.rerank and not rerank:
        print(f"note: {type(model).__name__} has no ITM head; ranking by embedding cosine only.", file=sys.stderr)
    if args.gallery:
        results = _search_stored_gallery(retriever, args, rerank)
    else:
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


HANDLERS = {
    "convert": _convert,
    "quickstart": _quickstart,
    "evaluate": _evaluate,
    "retrieve": _retrieve,
    "index": _index,
    "push": _push,
}


def run(args: argparse.Namespace) -> int:
    """Run the verb of parsed arguments (`vlalign_cli.build_parser`). Expected failures (bad arguments, files or
    folders; `ValueError`/`OSError` and their subclasses, which the loaders and converters raise with the problem and
    the fix, and a config validator's refusal) print one line and exit with 1; anything else is a bug and keeps its traceback. Warnings (images skipped
    with `--on-error skip`, a query of unknown words) print as one line each too."""

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"vlalign {args.command}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show_warning  # one line each, like the errors (no file and line of the library)
        try:
            configure_threads(args.num_threads)
            return HANDLERS[args.command](args)
        except (ValueError, OSError, StrictDataclassError) as error:
            if isinstance(error, StrictDataclassError):  # a config's validator refused a value: its own message
                error = error.__cause__ or error
            print(f"vlalign {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
            return 1


def main(argv: list[str] | None = None) -> int:
    """`vlalign ARGS` in this process (the console script, `vlalign_cli.main`, parses before importing vlalign)."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
