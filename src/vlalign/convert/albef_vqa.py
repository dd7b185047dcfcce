"""Official ALBEF checkpoints as VQA models (`vlalign convert --method albef --task vqa`, through
[`convert_albef_checkpoint`](albef.py), which reads the files and writes the folder).

Two inputs, told apart by their keys:

* a **pretraining** checkpoint (`text_encoder.bert.*`, no decoder): the VQA model is initialised from it as the
  official `VQA.py` does: the encoder keeps every BERT layer, the answer decoder's layer i is pretrained layer
  `config.answer_decoder_first_layer() + i` (ALBEF: the fusion layers), its embeddings and LM head are the
  pretrained text embeddings and MLM head;
  projections, ITM head, temperature and queues have no place in the VQA model and are dropped (the official
  `strict=False` load reports them as unexpected);
* a **fine-tuned VQA** checkpoint (the layout of the official `model_vqa.py`: `text_encoder.*`, `text_decoder.bert.*`,
  `text_decoder.cls.*`, their `_m` copies).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from ..models import AlbefConfig, AlbefPreTrainedModel
from .albef import (
    _BERT_LAYER_RENAMES,
    _MLM_HEAD_RENAMES,
    CheckpointError,
    _convert_task_encoder_key,
    _rename,
    load_converted_weights,
)

#: pretraining keys the official VQA initialisation leaves out (unexpected in its `strict=False` load)
PRETRAINING_ONLY_KEYS = (
    r"^(temp|image_queue|text_queue|queue_ptr|idx_queue|(vision_proj|text_proj|itm_head)(_m)?\..*)$"
)


def is_vqa_layout(original: dict[str, torch.Tensor]) -> bool:
    """Whether a checkpoint holds a VQA model (an answer decoder) rather than a pretraining/retrieval one."""
    return any(key.startswith("text_decoder.") for key in original)


def pretraining_to_vqa_layout(
    original: dict[str, torch.Tensor], first_layer: int, num_decoder_layers: int
) -> dict[str, torch.Tensor]:
    """The official VQA initialisation of a pretraining state dict, in the official VQA layout: `text_encoder(_m).*`
    without `bert.`, and `text_decoder(_m).bert.encoder.layer.i` = pretrained layer `first_layer + i`
    (`config.answer_decoder_first_layer()`), with the pretrained embeddings and MLM head as the decoder's.
    Pretraining-only keys are dropped."""
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in original.items():
        if re.match(PRETRAINING_ONLY_KEYS, key):
            continue
        match = re.match(r"^text_encoder(_m)?\.(.+)$", key)
        if match is None:
            converted[key] = tensor
            continue
        momentum, rest = match.group(1) or "", match.group(2)
        if rest.startswith("bert."):
            converted[f"text_encoder{momentum}.{rest.removeprefix('bert.')}"] = tensor
        layer = re.match(r"^bert\.encoder\.layer\.(\d+)\.(.+)$", rest)
        if layer is None:
            converted[f"text_decoder{momentum}.{rest}"] = tensor
        elif 0 <= int(layer.group(1)) - first_layer < num_decoder_layers:
            decoder_layer = int(layer.group(1)) - first_layer
            converted[f"text_decoder{momentum}.bert.encoder.layer.{decoder_layer}.{layer.group(2)}"] = tensor
    return converted


def _convert_decoder_key(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """vlalign's key for an official `text_decoder(_m).*` key (None for the tied LM-head copies and position ids)."""
    match = re.match(r"^text_decoder(_m)?\.(.+)$", key)
    prefix, rest = f"text_decoder{match.group(1) or ''}.", match.group(2)
    if rest.startswith("cls."):
        renamed = _rename(rest.removeprefix("cls."), _MLM_HEAD_RENAMES)
        return None if renamed is None else {f"{prefix}lm_head.{renamed}": tensor}
    rest = rest.removeprefix("bert.")
    if rest.startswith("embeddings.") and rest != "embeddings.position_ids":
        return {prefix + rest.replace("LayerNorm.", "layer_norm."): tensor}
    layer = re.match(r"^encoder\.layer\.(\d+)\.(.+)$", rest)
    renamed = _rename(layer.group(2), _BERT_LAYER_RENAMES) if layer else None
    return None if renamed is None else {f"{prefix}layers.{layer.group(1)}.{renamed}": tensor}


def convert_vqa_state_dict(
    original: dict[str, torch.Tensor], fusion_layer: int
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map an official VQA-layout state dict to vlalign's (`vision_model`, `text_model`, `fusion_model`,
    `text_decoder` and their `_m` copies) and return (state dict, dropped keys). The decoder's tied LM-head weight
    must equal its word embeddings."""
    converted: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, tensor in original.items():
        if key.startswith("text_decoder"):
            new_keys = _convert_decoder_key(key, tensor)
        elif key.startswith(("visual_encoder", "text_encoder")):
            new_keys = _convert_task_encoder_key(key, tensor, fusion_layer)
        else:
            new_keys = None
        if new_keys is None:
            dropped.append(key)
        converted.update(new_keys or {})
    for suffix in ("", "_m"):
        decoder = original.get(f"text_decoder{suffix}.cls.predictions.decoder.weight")
        embeddings = original.get(f"text_decoder{suffix}.bert.embeddings.word_embeddings.weight")
        if decoder is not None and embeddings is not None and not torch.equal(decoder, embeddings):
            raise CheckpointError(
                f"text_decoder{suffix}.cls.predictions.decoder.weight differs from the decoder's word embeddings; "
                "ALBEF's answer decoder ties them, so this is not an official ALBEF VQA checkpoint."
            )
    return converted, dropped


def convert_to_vqa(
    original: dict[str, torch.Tensor], config: AlbefConfig, model_class: type, new_modules: Iterable[str] = ()
) -> AlbefPreTrainedModel:
    """`model_class(config)` (a VQA model) holding an official pretraining checkpoint's weights as the official
    VQA initialisation places them, or an official fine-tuned VQA checkpoint's. `new_modules`: patterns of weights of
    a family built on ALBEF that ALBEF checkpoints lack (they keep their fresh initialisation)."""
    fusion_layer = config.text_config.fusion_layer
    if not is_vqa_layout(original):
        if not any(key.startswith("text_encoder.cls.") for key in original):
            raise CheckpointError(
                "This checkpoint has neither an answer decoder (`text_decoder.*`, a fine-tuned VQA checkpoint) nor the "
                "MLM head (`text_encoder.cls.*`) the decoder's LM head is initialised from: it is not a pretraining "
                "checkpoint (a fine-tuned retrieval one?). Convert the pretraining checkpoint or a VQA checkpoint."
            )
        num_decoder_layers = config.answer_decoder_config().num_hidden_layers
        original = pretraining_to_vqa_layout(original, config.answer_decoder_first_layer(), num_decoder_layers)
    state_dict, dropped = convert_vqa_state_dict(original, fusion_layer)
    unknown = [k for k in dropped if not re.search(r"(cls\.predictions\.decoder\.|position_ids$)", k)]
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} checkpoint keys are not ALBEF VQA keys (first: {', '.join(unknown[:5])}). Pass an "
            "official ALBEF pretraining checkpoint or a fine-tuned VQA checkpoint."
        )
    if not config.distill:  # the VQA model builds momentum copies only to distil from them
        state_dict = {key: value for key, value in state_dict.items() if "_m." not in key}
    has_momentum = any("_m." in key for key in state_dict)
    allowed_missing = [*new_modules, *([] if has_momentum else [r"_m\."])]
    return load_converted_weights(model_class, config, state_dict, allowed_missing, has_momentum)


__all__ = [
    "PRETRAINING_ONLY_KEYS",
    "convert_to_vqa",
    "convert_vqa_state_dict",
    "is_vqa_layout",
    "pretraining_to_vqa_layout",
]
