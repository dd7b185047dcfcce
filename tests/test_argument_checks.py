"""The argument checks the example scripts and the CLI share (`vlalign.training.argument_checks`), and the vision
configs' own image-size rule (`vlalign.models.patch_grid`) they rely on."""

from __future__ import annotations

import math

import pytest
from huggingface_hub.errors import StrictDataclassClassValidationError

from vlalign.methods import get_method, method_names
from vlalign.models.patch_grid import nearest_image_sizes
from vlalign.training.argument_checks import (
    ArgumentError,
    check_arguments,
    check_image_size,
    check_not_empty,
    cli_flag,
)


@pytest.mark.parametrize("method", method_names())
def test_every_vision_config_refuses_a_size_the_patch_does_not_divide(method):
    """A side the patch does not divide would crop every image; each method's config names the sizes that work."""
    config_class = get_method(method).config_class
    with pytest.raises(StrictDataclassClassValidationError) as refused:
        config_class(vision_config={"image_size": 60, "patch_size": 8})
    assert "image_size=60 is not a multiple of patch_size=8" in str(refused.value)
    assert "drop the last 4 pixel rows and columns" in str(refused.value) and "Use 56 or 64." in str(refused.value)
    assert config_class(vision_config={"image_size": 56, "patch_size": 8}).vision_config.image_size == 56
    with pytest.raises(StrictDataclassClassValidationError, match="Use 16."):
        config_class(vision_config={"image_size": 10, "patch_size": 16})


def test_nearest_image_sizes():
    assert nearest_image_sizes(60, 8) == (56, 64)
    assert nearest_image_sizes(383, 16) == (368, 384)
    assert nearest_image_sizes(5, 16) == (16,)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_steps": 0}, "--max_steps 0: pass the number of optimizer steps (1 or more)"),
        ({"max_steps": -5, "num_train_epochs": 3.0}, "--max_steps -5: pass the number of optimizer steps"),
        ({"max_steps": -1, "num_train_epochs": 0.0}, "--num_train_epochs 0.0 without --max_steps trains no step"),
        ({"max_steps": None, "num_train_epochs": math.nan}, "--num_train_epochs nan without --max_steps"),
        ({"per_device_train_batch_size": 0}, "--per_device_train_batch_size 0: must be 1 or more."),
        ({"k_test": -3}, "--k_test -3: must be 1 or more."),
        ({"num_test": -1}, "--num_test -1: must be 0 or more."),
        ({"learning_rate": math.inf}, "--learning_rate inf: must be a finite number above 0."),
        ({"learning_rate": 0.0}, "--learning_rate 0.0: must be a finite number above 0."),
        ({"weight_decay": -0.1}, "--weight_decay -0.1: must be a finite number, 0 or more."),
    ],
)
def test_check_arguments_refuses_with_the_flag_and_the_fix(values, message):
    with pytest.raises(ArgumentError) as refused:
        check_arguments(values)
    assert str(refused.value).startswith(message)


def test_check_arguments_accepts_what_a_run_can_use():
    """Unset values (None, transformers' -1 for max_steps), a step count with 0 epochs (steps win), 0 test images,
    and names the checks do not know pass."""
    check_arguments({"max_steps": -1, "num_train_epochs": 3.0, "num_test": 0, "learning_rate": 1e-4})
    check_arguments({"max_steps": 5, "num_train_epochs": 0.0, "k_test": None, "image_size": None})
    check_arguments({"output_dir": "", "seed": -3, "weight_decay": 0.0})


def test_the_cli_spelling():
    """The CLI calls the same checks on its argparse namespace; errors name its dashed flags."""
    with pytest.raises(ArgumentError, match=r"^--max-steps 0: pass the number of optimizer steps"):
        check_arguments({"max_steps": 0, "num_threads": None}, flag_name=cli_flag)
    with pytest.raises(ArgumentError, match=r"^--top-k 0: must be 1 or more"):
        check_arguments({"top_k": 0}, flag_name=cli_flag)


def test_check_image_size_asks_the_config():
    vision = get_method("fdt").config_class(vision_config={"image_size": 64, "patch_size": 8}).vision_config
    check_image_size(72, vision)
    with pytest.raises(ArgumentError) as refused:
        check_image_size(60, vision)
    assert str(refused.value) == (
        "--image_size 60: image_size=60 is not a multiple of patch_size=8: the patch grid would drop the last 4 pixel "
        "rows and columns of every image. Use 56 or 64."
    )
    assert vision.image_size == 64  # the config asked is left as it was


def test_check_not_empty():
    check_not_empty(1, "--train_json a.json", "pass another")
    with pytest.raises(ArgumentError, match=r"^--train_json a.json has no rows; pass another$"):
        check_not_empty(0, "--train_json a.json", "pass another")
