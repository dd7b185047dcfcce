"""Official ALBEF / SIMLA checkpoints as visual entailment models (`vlalign convert --method M --task ve`, through
[`convert_albef_checkpoint`](albef.py) and [`convert_simla_checkpoint`](simla.py), which read the files and write the
folder).

Two inputs, told apart by their keys:

* a **pretraining** checkpoint (`text_encoder.bert.*`, no `cls_head`): the entailment model is initialised from it as
  the official `VE.py` does: keys lose `bert.`, the ViT and every BERT layer (online and momentum) are kept, and
  `load_state_dict(strict=False)` leaves out the MLM head, projections, ITM head, temperature and queues (and SIMLA's
  MIM/keyword heads and mask tokens); the head (`cls_head`, `cls_head_m`) is new, the momentum head a copy of the
  online one, as the official constructor's `copy_params` leaves them;
* a **fine-tuned VE** checkpoint (the layout of the official `model_ve.py` / `models/simla/ve.py`: `visual_encoder.*`,
  `text_encoder.*`, `cls_head.{0,2}.*` and their `_m` copies).

The official VE config keeps α constant (`warm_up: False`): the converted config then has `alpha_warmup_epochs=0`.
"""

from __future__ import annotations

import logging
import re

import torch
from torch import nn

from ..models import AlbefConfig, AlbefPreTrainedModel
from .albef import CheckpointError, _convert_task_encoder_key, load_converted_weights

logger = logging.getLogger(__name__)

#: pretraining keys the official VE initialisation leaves out (its `strict=False` load reports them as unexpected)
PRETRAINING_ONLY_KEYS = (
    r"^(temp|image_queue|text_queue|queue_ptr|idx_queue|(vision_proj|text_proj|itm_head)(_m)?\..*"
    r"|text_encoder(_m)?\.(bert\.)?cls\..*|(mim|concept)_head(_m)?\..*|visual_encoder(_m)?\.mask_token)$"
)
#: keys with no weight of their own (BERT's position-id buffer)
_BUFFERS = r"\.position_ids$"


def is_ve_layout(original: dict[str, torch.Tensor]) -> bool:
    """Whether a checkpoint holds an entailment model (the MLP head) rather than a pretraining/retrieval one."""
    return any(key.startswith("cls_head.") for key in original)


def pretraining_keys_left_out(original: dict[str, torch.Tensor]) -> list[str]:
    """The keys of a pretraining state dict that the official VE initialisation does not load, named as its
    `strict=False` load reports them (after `bert.` is removed from every key)."""
    return [key.replace("bert.", "") for key in original if re.match(PRETRAINING_ONLY_KEYS, key)]


def convert_ve_state_dict(
    original: dict[str, torch.Tensor], fusion_layer: int
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map an official VE-layout (or pretraining) state dict to vlalign's (`vision_model`, `text_model`,
    `fusion_model`, `cls_head` and their `_m` copies) and return (state dict, dropped keys)."""
    converted: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, tensor in original.items():
        if re.match(PRETRAINING_ONLY_KEYS, key) or re.search(_BUFFERS, key):
            new_keys = None
        elif re.match(r"^cls_head(_m)?\.[02]\.(weight|bias)$", key):
            new_keys = {key: tensor}
        elif key.startswith(("visual_encoder", "text_encoder")):
            new_keys = _convert_task_encoder_key(key, tensor, fusion_layer)
        else:
            new_keys = None
        if new_keys is None:
            dropped.append(key)
        converted.update(new_keys or {})
    return converted, dropped


def convert_to_ve(
    original: dict[str, torch.Tensor],
    config: AlbefConfig,
    model_class: type,
    yaml_config: dict | None = None,
    new_modules: tuple[str, ...] = (),
) -> AlbefPreTrainedModel:
    """`model_class(config)` (an entailment model) holding an official fine-tuned VE checkpoint's weights, or an
    official pretraining checkpoint's as `VE.py` places them (new head, PyTorch's default init, the momentum head a
    copy of it). `yaml_config`: the official VE YAML (`warm_up: False` → `alpha_warmup_epochs=0`)."""
    if yaml_config is not None:
        config.alpha_warmup_epochs = 1.0 if yaml_config.get("warm_up", False) else 0.0
    state_dict, dropped = convert_ve_state_dict(original, config.text_config.fusion_layer)
    unknown = [key for key in dropped if not (re.match(PRETRAINING_ONLY_KEYS, key) or re.search(_BUFFERS, key))]
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} checkpoint keys are not visual entailment keys (first: {', '.join(unknown[:5])}). Pass "
            "an official pretraining checkpoint or a fine-tuned VE checkpoint of the method."
        )
    fine_tuned = is_ve_layout(original)
    if not fine_tuned and not any(re.match(r"^text_encoder\.(bert\.)?encoder\.", key) for key in original):
        raise CheckpointError(
            "This checkpoint holds no BERT encoder (`text_encoder.*`): it is not an ALBEF/SIMLA one."
        )
    if not config.distill:  # the model builds momentum copies only to distil from them
        state_dict = {key: value for key, value in state_dict.items() if "_m." not in key}
    has_momentum = any("_m." in key for key in state_dict)
    allowed_missing = [*new_modules, *([] if has_momentum else [r"_m\."]), *([] if fine_tuned else [r"^cls_head"])]
    model = load_converted_weights(model_class, config, state_dict, allowed_missing, has_momentum)
    if not fine_tuned:
        _official_head(model)
    return model


@torch.no_grad()
def _official_head(model: nn.Module) -> None:
    """The head of a model the official VE script builds from a pretraining checkpoint: PyTorch's default `nn.Linear`
    init (the checkpoint has no head), the momentum head a copy of the online one (`copy_params`)."""
    for layer in model.cls_head:
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()
    momentum_head = getattr(model, "cls_head_m", None)
    if momentum_head is not None:
        for parameter, parameter_m in zip(model.cls_head.parameters(), momentum_head.parameters(), strict=True):
            parameter_m.copy_(parameter)


def load_ve_model(folder, config=None):
    """The `<Method>ForVisualEntailment` of a saved vlalign folder (or Hub id): loaded as it is when it holds one
    (`vlalign convert --task ve`, a fine-tuned model), else initialised from the saved model (a pretraining,
    retrieval or inference model of the family) with `from_pretraining`, in training mode. `config`: the folder's
    config with changes (e.g. overrides), or None."""
    from ..auto import family_of
    from .task_init import load_task_model

    return load_task_model(
        folder,
        config,
        "visual_entailment_class",
        "visual entailment",
        lambda model: family_of(model).visual_entailment_class.from_pretraining(model),
    )


__all__ = [
    "PRETRAINING_ONLY_KEYS",
    "convert_to_ve",
    "convert_ve_state_dict",
    "is_ve_layout",
    "load_ve_model",
    "pretraining_keys_left_out",
]
