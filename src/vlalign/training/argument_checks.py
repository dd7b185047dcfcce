"""Checks of run arguments that every entry point shares (the example scripts and the `vlalign` CLI): values that
argparse's types accept but no run can use, refused before any data is read or model built, each with one line that
names the flag, the value and the fix.

`check_arguments(values)` takes the arguments by their Python names (a parsed dataclass's `vars`, an argparse
`Namespace`'s `vars`) and checks those it knows; `flag_name` spells them as the caller's command line does
(`--max_steps` in the scripts, `--max-steps` in the CLI). `check_image_size` and `check_not_empty` check what is known
only once a config or the data is at hand. All raise `ArgumentError`; entry points print its message and exit with
status 2, as argparse does for a bad flag.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from huggingface_hub.errors import StrictDataclassError

#: counts of at least 1 (batch sizes, re-rank candidates, ...)
POSITIVE_INTEGERS = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "batch_size",
    "rerank_batch_size",
    "k_test",
    "top_k",
    "num_train",
    "image_size",
    "synthetic_size",
    "train_num_samples",
    "warmup_stages",
)
#: counts that may be 0 (an optional evaluation split)
NON_NEGATIVE_INTEGERS = ("num_validation", "num_test")
#: rates that must be finite and above 0 (a zero learning rate trains nothing)
POSITIVE_RATES = ("learning_rate",)
#: values that must be finite and at least 0
NON_NEGATIVE_RATES = ("weight_decay", "warmup_lr", "min_lr")
#: `max_steps` values that mean "not given": train for `num_train_epochs` (transformers' default is -1)
UNSET_MAX_STEPS = (None, -1)


class ArgumentError(ValueError):
    """A value no run can use, in one line naming the flag, the value and the fix; entry points exit with status 2."""


def script_flag(name: str) -> str:
    """How the example scripts spell an argument: `--max_steps`."""
    return f"--{name}"


def cli_flag(name: str) -> str:
    """How the `vlalign` CLI spells an argument: `--max-steps`."""
    return "--" + name.replace("_", "-")


def check_arguments(values: Mapping[str, Any], flag_name: Callable[[str], str] = script_flag) -> None:
    """Check the arguments of `values` that this module knows (others are left to their own parsers):

    - counts: `POSITIVE_INTEGERS` at least 1, `NON_NEGATIVE_INTEGERS` at least 0;
    - the run's length: `max_steps` at least 1, or not given (None / -1), and then `num_train_epochs` finite and above
      0 (a run of 0 steps would save and evaluate an untrained model);
    - rates: `POSITIVE_RATES` finite and above 0, `NON_NEGATIVE_RATES` finite and at least 0.

    A value of None (an optional argument left out) is not checked. Raises `ArgumentError` on the first bad value.
    """
    for name, value in values.items():
        if value is None:
            continue
        if name in POSITIVE_INTEGERS and value < 1:
            raise ArgumentError(f"{flag_name(name)} {value}: must be 1 or more.")
        if name in NON_NEGATIVE_INTEGERS and value < 0:
            raise ArgumentError(f"{flag_name(name)} {value}: must be 0 or more.")
        if name in POSITIVE_RATES and not (math.isfinite(value) and value > 0):
            raise ArgumentError(f"{flag_name(name)} {value}: must be a finite number above 0.")
        if name in NON_NEGATIVE_RATES and not (math.isfinite(value) and value >= 0):
            raise ArgumentError(f"{flag_name(name)} {value}: must be a finite number, 0 or more.")
    _check_run_length(values, flag_name)


def _check_run_length(values: Mapping[str, Any], flag_name: Callable[[str], str]) -> None:
    if "max_steps" not in values:
        return
    max_steps = values["max_steps"]
    if max_steps not in UNSET_MAX_STEPS and max_steps < 1:
        raise ArgumentError(
            f"{flag_name('max_steps')} {max_steps}: pass the number of optimizer steps (1 or more), or leave it out to "
            "train for the given epochs."
        )
    epochs = values.get("num_train_epochs")
    if max_steps in UNSET_MAX_STEPS and epochs is not None and not (math.isfinite(epochs) and epochs > 0):
        raise ArgumentError(
            f"{flag_name('num_train_epochs')} {epochs} without {flag_name('max_steps')} trains no step: pass a number "
            f"of epochs above 0, or {flag_name('max_steps')} N."
        )


def check_image_size(image_size: int, vision_config: Any, flag: str = "--image_size") -> None:
    """Check `image_size` against a vision config's own rules (its patch size: a side the patch does not divide would
    crop every image) by building that config at the new size, before any model is resized to it."""
    with bad_value_of(flag, image_size):
        type(vision_config).from_dict({**vision_config.to_dict(), "image_size": image_size})


@contextmanager
def bad_value_of(flag: str, value: Any) -> Iterator[None]:
    """Whatever a config or parser refuses inside this block (a `ValueError`, `TypeError` or a strict config's
    validation error) is a bad `flag` value: re-raised as one `ArgumentError` line naming it."""
    try:
        yield
    except ArgumentError:
        raise
    except (ValueError, TypeError, StrictDataclassError) as error:
        raise ArgumentError(f"{flag} {value}: {one_line(error)}") from None


def check_not_empty(rows: int, source: str, fix: str) -> None:
    """Refuse data with no rows (what a run would otherwise discover as torch's 'num_samples=0' or a 0-image
    evaluation): `source` names where it came from, `fix` what to pass instead."""
    if rows == 0:
        raise ArgumentError(f"{source} has no rows; {fix}")


def one_line(error: BaseException) -> str:
    """An exception's message on one line; a strict config's validation error gives the message of the error it
    wraps (the validator's own, without huggingface_hub's preamble)."""
    cause = error.__cause__ if isinstance(error, StrictDataclassError) else None
    return " ".join(str(cause or error).split())


__all__ = [
    "ArgumentError",
    "bad_value_of",
    "check_arguments",
    "check_image_size",
    "check_not_empty",
    "cli_flag",
    "one_line",
    "script_flag",
]
