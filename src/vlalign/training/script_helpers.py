"""Settings the example scripts (`examples/pretrain.py`, `examples/finetune_retrieval.py`,
`examples/evaluate_retrieval.py`) share: recipe files and flags over per-method defaults, the argument checks the CLI
makes too (`argument_checks`), config overrides from the command line, the data-checking flags, whether batches need
the teacher's second image view, and how a bad argument ends a script (one line, exit status 2, as argparse)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from ..auto import MODEL_FAMILIES
from .argument_checks import ArgumentError, bad_value_of, check_arguments, check_image_size, one_line

logger = logging.getLogger(__name__)


def on_error_field() -> Any:
    """The `--on_error` flag of a script's arguments dataclass: what loading does with a bad sample."""
    return dataclasses.field(
        default="raise",
        metadata={
            "help": "Unreadable images / empty captions: 'raise' or 'skip' (drop them, counted and reported).",
            "choices": ["raise", "skip"],
        },
    )


def check_images_field() -> Any:
    """The `--check_images` flag of a script's arguments dataclass: how far `load_karpathy_json` checks images."""
    return dataclasses.field(
        default="header",
        metadata={
            "help": "How far images are checked when a json is loaded (each problem counted and reported): 'header' "
            "(open and read the size, ~0.1 ms per image), 'decode' (a full decode, ~1 ms per COCO image) or 'none'.",
            "choices": ["header", "decode", "none"],
        },
    )


#: a recipe file given as the first argument: `python script.py examples/configs/albef/pretrain.yaml [--flag ...]`
RECIPE_SUFFIXES = (".yaml", ".yml", ".json")


def read_recipe(parser: HfArgumentParser, path: str) -> dict[str, Any]:
    """The arguments of a YAML / JSON recipe file (`examples/configs/`), each checked to be a flag of the script."""
    with open(path, encoding="utf-8") as file:
        values = (json.load(file) if path.endswith(".json") else yaml.safe_load(file)) or {}
    known = {f.name for dtype in parser.dataclass_types for f in dataclasses.fields(dtype) if f.init}
    if unknown := sorted(set(values) - known):
        raise ArgumentError(f"{path}: {unknown} are no arguments of this script (see --help)")
    return values


def parse_script_args(
    dataclass_types: Sequence[type], method_defaults: Mapping[str, Mapping[str, Any]], argv: list[str] | None = None
) -> tuple:
    """Parse a script's arguments with defaults in rising priority: the method's settings (`method_defaults`), a
    recipe file (an optional first argument), the flags.

    `python script.py recipe.yaml --learning_rate 3e-5` reads the recipe's values as defaults (its `method` picks the
    method's defaults below them unless `--method` is given), then the command line overrides any of them.
    """
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser(dataclass_types)
    recipe_file = argv[0] if argv and argv[0].endswith(RECIPE_SUFFIXES) else None
    recipe = read_recipe(parser, recipe_file) if recipe_file else {}
    flags = argv[1:] if recipe_file else argv
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--method", choices=sorted(MODEL_FAMILIES))
    method = first.parse_known_args(flags)[0].method or recipe.get("method", "albef")
    if method not in MODEL_FAMILIES:
        raise ArgumentError(f"{recipe_file}: method {method!r} is none of {sorted(MODEL_FAMILIES)}")
    if method not in method_defaults:
        raise ArgumentError(f"--method {method}: this script serves {', '.join(sorted(method_defaults))}.")
    parser.set_defaults(**{**method_defaults[method], **recipe})
    return parse_checked(parser, flags)


def parse_checked(parser: HfArgumentParser, flags: list[str]) -> tuple:
    """`parser`'s dataclasses from `flags`, with the shared `check_arguments` run on all of them; a value the
    dataclasses' own checks refuse (their `__post_init__`, e.g. transformers' `TrainingArguments`) is an
    `ArgumentError` as well."""
    try:
        parsed = parser.parse_args_into_dataclasses(args=flags)
    except ArgumentError:
        raise
    except ValueError as error:
        raise ArgumentError(one_line(error)) from None
    check_arguments({name: value for arguments in parsed for name, value in vars(arguments).items()})
    return parsed


def run_script(main: Callable[[], None]) -> None:
    """Run an example script's `main`; an `ArgumentError` ends it with one line on stderr and exit status 2, as
    argparse ends on a bad flag (no traceback: the message names the flag and the fix)."""
    try:
        main()
    except ArgumentError as error:
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def apply_config_overrides(config: Any, overrides: str | None) -> Any:
    """`config` with the 'name=value,...' settings of `--config_overrides`, rebuilt so that the config's own checks
    (value types and ranges, settings that depend on each other) run again; an unknown name or a refused value is an
    `ArgumentError`."""
    if not overrides:
        return config
    with bad_value_of("--config_overrides", repr(overrides)):
        config.update_from_string(overrides)
        config = type(config).from_dict(config.to_dict())
    logger.info("Config overrides: %s", overrides)
    return config


def configure_logging(training_args: Any, script_logger: logging.Logger) -> None:
    """The fine-tuning scripts' logging: records on stdout, the script's logger at INFO on the process that logs (else
    at the process's level), `datasets` and `transformers` at the process's level."""
    import datasets
    import transformers

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    log_level = training_args.get_process_log_level()
    script_logger.setLevel(logging.INFO if training_args.should_log else log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)


def fit_image_size(
    model: Any, processor: Any, method: Any, image_size: int, script_logger: logging.Logger = logger
) -> Any:
    """The processor for fine-tuning `model` at `image_size`: at another size than the model's, the size is checked
    (`--image_size`), the model's position embeddings are interpolated to it (said on `script_logger`) and the
    method's processor is rebuilt for it with the same tokenizer; else `processor` as it is."""
    model_size = model.config.vision_config.image_size
    if image_size == model_size:
        return processor
    check_image_size(image_size, model.config.vision_config)
    script_logger.info("Interpolating position embeddings from %d px to %d px", model_size, image_size)
    model.set_image_size(image_size)
    return method.build_processor(processor.tokenizer, image_size)


def train_and_finish(trainer: Any, finish: Callable[[], None]) -> None:
    """Train (resuming from `--resume_from_checkpoint`; 'true' or 'last': the last checkpoint in `output_dir`), log and
    save the training metrics and state, run `finish` on the main process, then end the process group (a clean
    shutdown under torchrun / accelerate)."""
    resume = trainer.args.resume_from_checkpoint
    if resume is not None and resume.lower() in ("true", "last"):
        resume = True
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        finish()
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.state.destroy_process_group()


def wants_teacher_view(config: Any, augment: bool) -> bool:
    """Whether batches need `pixel_values_teacher`, a second augmented view of each image for the momentum image
    encoder (CODIS with `teacher_image_view="augmented"`, TCL's recipe); that view needs the augmentation on."""
    if getattr(config, "teacher_image_view", "same") != "augmented":
        return False
    if not augment:
        raise ArgumentError(
            "teacher_image_view='augmented' feeds the momentum image encoder a second augmented view of each image, "
            "so it needs the train-time augmentation: pass --augment true (it is off by default on synthetic data)."
        )
    return True


__all__ = [
    "RECIPE_SUFFIXES",
    "apply_config_overrides",
    "configure_logging",
    "fit_image_size",
    "parse_checked",
    "parse_script_args",
    "read_recipe",
    "run_script",
    "train_and_finish",
    "wants_teacher_view",
]
