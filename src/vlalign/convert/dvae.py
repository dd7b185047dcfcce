"""Convert OpenAI's DALL-E dVAE encoder (`encoder.pkl`, SIMLA's MIM image tokenizer) into a `FlavaImageCodebook`.

SIMLA tokenises the 128-px view with the DALL-E encoder and takes the argmax over its 8192 logits as MIM labels. The
released file pickles a whole `dall_e.encoder.Encoder` module, so it is read with the restricted loader: the dall_e
and `torch.nn` classes resolve to inert stand-ins that only record parameters and attributes, and no dall_e code runs.
transformers' `FlavaImageCodebook` is the same network (7×7 input conv, four groups of residual blocks with post-gain
1/L², 2×2 max-pool after the first three groups, ReLU + 1×1 output conv), so only parameter names change
(`blocks.group_1.block_1.res_path.conv_1.w` → `blocks.group_1.group.block_1.res_path.path.conv_1.weight`).
Inputs are the `map_pixels` values (0.8·x + 0.1 of [0, 1] pixels), as for the original encoder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from transformers import FlavaImageCodebook, FlavaImageCodebookConfig

from .albef import CheckpointError
from .restricted_unpickle import PickledObject, load_restricted

__all__ = ["DALLE_ENCODER_STAND_INS", "convert_dalle_encoder", "convert_dalle_state_dict", "read_dalle_encoder"]

#: every class a pickled `dall_e.encoder.Encoder` instantiates
DALLE_ENCODER_STAND_INS = (
    "dall_e.encoder.Encoder",
    "dall_e.encoder.EncoderBlock",
    "dall_e.utils.Conv2d",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.linear.Identity",
)

#: every parameter name of a DALL-E encoder (`<module path>.w` / `.b`)
_DALLE_PARAMETER = re.compile(r"blocks\.(input|output\.conv|group_\d+\.block_\d+\.(id_path|res_path\.conv_\d+))\.[wb]")


def _collect_parameters(module: PickledObject, prefix: str, out: dict[str, torch.Tensor]) -> None:
    attributes = module.attributes
    for name, tensor in {**attributes.get("_parameters", {}), **attributes.get("_buffers", {})}.items():
        if tensor is not None:
            out[prefix + name] = tensor.detach()
    for name, child in attributes.get("_modules", {}).items():
        if isinstance(child, PickledObject):
            _collect_parameters(child, f"{prefix}{name}.", out)


def read_dalle_encoder(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a pickled DALL-E `Encoder` without its package: its parameters under their dall_e names (what
    `encoder.state_dict()` gives) and its hyperparameters (`n_hid`, `n_blk_per_group`, `vocab_size`, ...)."""
    encoder = load_restricted(path, DALLE_ENCODER_STAND_INS)
    if not isinstance(encoder, PickledObject) or encoder.global_name != "dall_e.encoder.Encoder":
        found = encoder.global_name if isinstance(encoder, PickledObject) else type(encoder).__name__
        raise CheckpointError(f"{path} holds a {found}, not a pickled dall_e.encoder.Encoder (the dVAE encoder.pkl).")
    state_dict: dict[str, torch.Tensor] = {}
    _collect_parameters(encoder, "", state_dict)
    hyperparameters = {
        key: value
        for key, value in encoder.attributes.items()
        if not key.startswith("_") and isinstance(value, (bool, int, float, str))
    }
    return state_dict, hyperparameters


def convert_dalle_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename dall_e encoder parameters (`<path>.w`/`.b`) to `FlavaImageCodebook` names (`.weight`/`.bias`), whose
    groups and residual paths sit one `nn.Sequential` deeper (`group_1.group.block_1`, `res_path.path.conv_1`)."""
    converted = {}
    for key, tensor in state_dict.items():
        if not _DALLE_PARAMETER.fullmatch(key):
            raise CheckpointError(f"Unexpected parameter {key!r} in the dVAE encoder: not the DALL-E encoder layout.")
        new_key = re.sub(r"^blocks\.(group_\d+)\.", r"blocks.\1.group.", key).replace(".res_path.", ".res_path.path.")
        converted[new_key[:-1] + {"w": "weight", "b": "bias"}[key[-1]]] = tensor
    return converted


def _config_from_weights(
    state_dict: dict[str, torch.Tensor], hyperparameters: dict[str, Any]
) -> FlavaImageCodebookConfig:
    groups = sorted({int(m.group(1)) for key in state_dict if (m := re.match(r"blocks\.group_(\d+)\.", key))})
    if groups != [1, 2, 3, 4]:
        raise CheckpointError(f"The dVAE encoder has groups {groups}; FlavaImageCodebook (like DALL-E) needs 1-4.")
    blocks = {int(m.group(1)) for key in state_dict if (m := re.match(r"blocks\.group_1\.block_(\d+)\.", key))}
    hidden_size, input_channels = state_dict["blocks.input.w"].shape[:2]
    config = FlavaImageCodebookConfig(
        num_groups=len(groups),
        input_channels=input_channels,
        num_blocks_per_group=len(blocks),
        hidden_size=hidden_size,
        vocab_size=state_dict["blocks.output.conv.w"].shape[0],
    )
    # the pickled attributes must agree with the weights (the post-gain 1/L² depends on group and block counts)
    for attribute, value in {
        "group_count": config.num_groups,
        "n_blk_per_group": config.num_blocks_per_group,
        "n_hid": config.hidden_size,
        "input_channels": config.input_channels,
        "vocab_size": config.vocab_size,
    }.items():
        if attribute in hyperparameters and hyperparameters[attribute] != value:
            raise CheckpointError(
                f"The dVAE encoder's {attribute}={hyperparameters[attribute]} disagrees with its weights ({value})."
            )
    return config


def convert_dalle_encoder(encoder_path: str | Path, output_dir: str | Path | None = None) -> FlavaImageCodebook:
    """Convert a DALL-E `encoder.pkl` to a `FlavaImageCodebook` (saved with safetensors to `output_dir` if given).

    `model.get_codebook_indices(pixel_values)` then gives SIMLA's MIM labels, [B, H/8, W/8] (flatten for [B, N]).
    """
    dalle_state_dict, hyperparameters = read_dalle_encoder(encoder_path)
    config = _config_from_weights(dalle_state_dict, hyperparameters)
    model = FlavaImageCodebook(config)
    try:
        model.load_state_dict(convert_dalle_state_dict(dalle_state_dict), strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{encoder_path} does not fit the DALL-E encoder layout: {error}") from error
    model.eval()
    if output_dir is not None:
        model.save_pretrained(output_dir)
    return model
