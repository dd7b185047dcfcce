"""The `vlalign` command line."""

from __future__ import annotations

import argparse
import sys

from .convert import CONVERTERS, CheckpointError


def _convert(args: argparse.Namespace) -> int:
    converter = CONVERTERS[args.method]
    converter(
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

    settings = QuickstartSettings(seed=args.seed)
    if args.max_steps is not None:
        settings.max_steps = args.max_steps
    run_quickstart(args.output_dir, settings)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlalign", description="Vision-language alignment pretraining.")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert an official checkpoint into a Hugging Face folder")
    convert.add_argument("--method", required=True, help=f"one of: {', '.join(sorted(CONVERTERS))}")
    convert.add_argument("--checkpoint", required=True, help="the official .pth file")
    convert.add_argument(
        "--config", action="append", required=True, help="official YAML and BERT json configs (repeat the flag)"
    )
    convert.add_argument("--tokenizer", help="folder with vocab.txt / tokenizer files, or a Hub id")
    convert.add_argument("--output", required=True, help="output folder")
    convert.add_argument("--task", default="auto", choices=["auto", "pretraining", "retrieval"])
    convert.add_argument("--image-size", type=int, help="target resolution (default: the YAML's image_res)")
    convert.set_defaults(handler=_convert)

    quickstart = commands.add_parser(
        "quickstart", help="train, evaluate, save, reload and query a tiny model on the built-in synthetic data"
    )
    quickstart.add_argument("--method", default="albef", choices=["albef"])
    quickstart.add_argument("--output-dir", default="quickstart_output")
    quickstart.add_argument("--max-steps", type=int, help="optimizer steps (default: the tuned recipe)")
    quickstart.add_argument("--seed", type=int, default=0)
    quickstart.set_defaults(handler=_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "convert" and args.method not in CONVERTERS:
        print(
            f"vlalign convert: unknown --method {args.method!r}; choose one of {sorted(CONVERTERS)}.", file=sys.stderr
        )
        return 2
    try:
        return args.handler(args)
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"vlalign {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
