"""Official ALBEF and SIMLA checkpoints as NLVR2 and text-assignment models (`vlalign convert --task nlvr2` and
`--task text-assignment`, through each method's converter, which reads the files and writes the folder).

Three inputs, told apart by their keys:

* a **pretraining** checkpoint (`text_encoder.bert.*`): the official `Pretrain_nlvr.py` loading block builds the
  text-assignment model from it: `bert.` is dropped, BERT layer l below the first paired layer stays layer l and each
  later layer l initialises **both** layers `first + 2 (l - first)` and `first + 2 (l - first) + 1`; the momentum
  copies, MLM/ITM (and SIMLA's MIM/keyword) heads and queues are left out; `ta_head` (and SIMLA's token-type table,
  which its MED BERT lacks) keep their fresh initialisation;
* a **text-assignment** checkpoint (`ta_head.*`, 18 layers, no `bert.`);
* an **NLVR** checkpoint (`cls_head.*`, momentum copies), fine-tuned or as `NLVR.py` initialised it.

`--task nlvr2` from a text-assignment checkpoint (or a pretraining one, through the layer doubling above) is the
official `NLVR.py` initialisation: encoders from the checkpoint, a fresh head, and momentum copies that keep the
*construction-time* weights (the script copies parameters to the momentum model before it loads the checkpoint, which
has no momentum weights). `momentum_from_loaded=True` is the switch that starts them from the loaded weights instead.
Both official layouts list a shared cross-attention key/value twice (layer first + 2i and + 2i + 1): the copies are
checked equal and stored once (see `AlbefTwoImageFusionModel`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import torch

from ..models.modeling_albef_nlvr import first_paired_layer, zero_missing_token_types
from .albef import CheckpointError, _check_fit, _convert_bert_key, _convert_vit_key, _fit_position_embeddings

logger = logging.getLogger(__name__)

TASKS = ("nlvr2", "text-assignment")

#: official keys of the text-assignment model besides its encoders
_TEXT_ASSIGNMENT_HEADS = re.compile(r"^(temp|(vision_proj|text_proj|ta_head)\.(weight|bias))$")
_OFFICIAL_LAYER = re.compile(r"^text_encoder\.encoder\.layer\.(\d+)\.(.+)$")


def checkpoint_layout(original: dict[str, torch.Tensor]) -> str:
    """`"nlvr2"`, `"text-assignment"` or `"pretraining"`, from the checkpoint's keys."""
    if any(key.startswith("cls_head.") for key in original):
        return "nlvr2"
    if any(key.startswith("ta_head.") for key in original):
        return "text-assignment"
    if any(key.startswith("text_encoder.bert.") for key in original):
        return "pretraining"
    raise CheckpointError(
        "This checkpoint is neither an NLVR checkpoint (`cls_head.*`), a text-assignment one (`ta_head.*`) nor a "
        "pretraining one (`text_encoder.bert.*`); convert one of those with --task nlvr2 or text-assignment."
    )


def two_image_task(original: dict[str, torch.Tensor], task: str, num_pretrained_layers: int | None) -> str | None:
    """The two-image task a conversion asked for `task` makes: `task` itself when it is one of `TASKS`; for `"auto"`
    `"text-assignment"` for a checkpoint with `ta_head`, `"nlvr2"` for one with `cls_head` whose BERT has more layers
    than the BERT json's `num_pretrained_layers` (a VE checkpoint also has `cls_head`, with the json's layer count);
    else None."""
    if task in TASKS:
        return task
    if task != "auto":
        return None
    if any(key.startswith("ta_head.") for key in original):
        return "text-assignment"
    layers = [int(match.group(1)) for key in original if (match := _OFFICIAL_LAYER.match(key))]
    if any(key.startswith("cls_head.") for key in original) and layers and num_pretrained_layers is not None:
        return "nlvr2" if max(layers) >= num_pretrained_layers else None
    return None


def text_assignment_initialisation(
    original: dict[str, torch.Tensor], first_paired: int
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The official text-assignment initialisation of a pretraining state dict, in the official text-assignment
    layout, and the pretraining keys it leaves out (the official `strict=False` load's unexpected keys)."""
    converted: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, tensor in original.items():
        if not (key.startswith(("visual_encoder.", "text_encoder.bert.")) or _TEXT_ASSIGNMENT_HEADS.match(key)):
            dropped.append(key)
            continue
        if key == "visual_encoder.mask_token":  # SIMLA's masked image modelling token: not in the downstream ViT
            dropped.append(key)
            continue
        key = key.replace("bert.", "", 1)
        layer = _OFFICIAL_LAYER.match(key)
        if layer is None or int(layer.group(1)) < first_paired:
            converted[key] = tensor
            continue
        number, rest = int(layer.group(1)), layer.group(2)
        for copy in (0, 1):
            target = first_paired + 2 * (number - first_paired) + copy
            converted[f"text_encoder.encoder.layer.{target}.{rest}"] = tensor
    return converted, dropped


def convert_two_image_state_dict(
    original: dict[str, torch.Tensor], fusion_layer: int, first_paired: int
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map an official NLVR or text-assignment state dict to vlalign's (`vision_model`, `text_model`,
    `fusion_model`, `cls_head`/`ta_head`, projections, and `_m` copies); return (state dict, dropped keys). Each
    shared cross-attention key/value, listed under both layers of its pair, must be the same tensor and is kept once."""
    converted: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, tensor in original.items():
        head = re.match(r"^cls_head(_m)?\.([02])\.(weight|bias)$", key)
        if head:
            name = "dense" if head.group(2) == "0" else "out_proj"
            converted[f"cls_head{head.group(1) or ''}.{name}.{head.group(3)}"] = tensor
            continue
        if _TEXT_ASSIGNMENT_HEADS.match(key):
            converted[key] = tensor
            continue
        new_keys = None
        vit = re.match(r"^visual_encoder(_m)?\.(.+)$", key)
        bert = re.match(r"^text_encoder(_m)?\.(?:bert\.)?(.+)$", key)
        if vit:
            new_keys = _convert_vit_key(vit.group(2), tensor, "vision_model_m." if vit.group(1) else "vision_model.")
        elif bert:
            new_keys = _convert_bert_key(bert.group(2), tensor, bert.group(1) or "", fusion_layer, False)
        if new_keys is None:
            dropped.append(key)
            continue
        converted.update({key.removeprefix("albef."): value for key, value in new_keys.items()})
    for key in list(converted):
        shared = re.match(r"^(fusion_model(?:_m)?)\.layers\.(\d+)\.cross_attn\.(key|value)\.(weight|bias)$", key)
        if shared is None:
            continue
        position = int(shared.group(2))
        offset = position + fusion_layer - first_paired
        if offset < 0 or offset % 2:
            continue
        partner = f"{shared.group(1)}.layers.{position + 1}.cross_attn.{shared.group(3)}.{shared.group(4)}"
        if partner not in converted or not torch.equal(converted[key], converted[partner]):
            raise CheckpointError(
                f"{key} should be the same tensor as {partner} (the two-image encoder shares each pair's "
                "cross-attention key and value); this is not an official NLVR or text-assignment checkpoint."
            )
        del converted[key]
    return converted, dropped


def _load(model_class: type, config, state_dict: dict[str, torch.Tensor], allowed_missing: Iterable[str]):
    model = model_class(config)
    vision = model.config.vision_config
    _fit_position_embeddings(state_dict, (vision.image_size // vision.patch_size) ** 2)
    _check_fit(model, state_dict, list(allowed_missing))
    model.load_state_dict(state_dict, strict=False)
    return model


def convert_to_two_image_task(
    original: dict[str, torch.Tensor],
    config,
    task: str,
    visual_reasoning_class: type,
    text_assignment_class: type,
    momentum_from_loaded: bool = False,
    zero_token_types: bool = False,
):
    """An NLVR2 (`task="nlvr2"`) or text-assignment model holding an official checkpoint's weights as the official
    scripts place them (see the module docstring). `config` is the method's config read from the official files (its
    BERT json has the pretrained layer count); the model classes build their two-image config from it.

    Switches for the official quirks: `momentum_from_loaded` starts NLVR2's momentum copies from the loaded weights
    (not the construction-time ones); `zero_token_types` starts a token-type table a pretraining checkpoint lacks
    (SIMLA's) at zeros (not at random values whose row 0 is added to every token)."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    model_class = visual_reasoning_class if task == "nlvr2" else text_assignment_class
    two_image = model_class.two_image_config(config)
    text = two_image.text_config
    fusion_layer, first = text.fusion_layer, first_paired_layer(text)
    layout = checkpoint_layout(original)
    if layout == "nlvr2" and task == "text-assignment":
        raise CheckpointError(
            "This is an NLVR checkpoint (`cls_head.*`): it has no text-assignment head. Convert it with --task nlvr2, "
            "or convert the pretraining or text-assignment checkpoint with --task text-assignment."
        )
    fresh_from_pretraining: list[str] = []
    if layout == "pretraining":
        original, _ = text_assignment_initialisation(original, first)
        # the official load leaves these at their construction values: ta_head, and SIMLA's token-type table
        fresh_from_pretraining = [r"^ta_head\.", r"^text_model\.embeddings\.token_type_embeddings\."]
    state_dict, dropped = convert_two_image_state_dict(original, fusion_layer, first)
    unknown = [key for key in dropped if not key.endswith("position_ids")]
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} checkpoint keys are not two-image encoder keys (first: {', '.join(unknown[:5])})."
        )
    if task == "text-assignment":
        model = _load(model_class, two_image, state_dict, fresh_from_pretraining)
        if zero_token_types:
            zero_missing_token_types(model, state_dict)
        return model
    if layout == "nlvr2":
        has_momentum = any(re.match(r"^[a-z_]+_m\.", key) for key in state_dict)
        model = _load(model_class, two_image, state_dict, [] if has_momentum else [r"^[a-z_]+_m\."])
        if not has_momentum:
            model.copy_params_to_momentum()
        return model
    # NLVR.py on a text-assignment checkpoint: online encoders only; projections, temperature and ta_head unexpected
    state_dict = {key: value for key, value in state_dict.items() if not _TEXT_ASSIGNMENT_HEADS.match(key)}
    model = _load(model_class, two_image, state_dict, [r"^cls_head\.", r"^[a-z_]+_m\.", *fresh_from_pretraining])
    if zero_token_types:
        zero_missing_token_types(model, state_dict)
    if momentum_from_loaded and two_image.distill:
        model.copy_params_to_momentum()
    return model


def load_two_image_model(
    folder, task: str, config=None, momentum_from_loaded: bool = False, zero_token_types: bool = False
):
    """The `<Method>ForVisualReasoning` (`task="nlvr2"`) or `<Method>ForTextAssignment` (`"text-assignment"`) of a
    saved vlalign folder (or Hub id), in training mode: loaded as it is when the folder holds one; an NLVR2 model from
    a text-assignment folder as the official `NLVR.py` (`from_text_assignment`: the momentum copies keep their
    construction-time weights unless `momentum_from_loaded`); either from a pretraining, retrieval or inference model
    of the family with `from_pretraining` (the official `Pretrain_nlvr.py` layer doubling; `zero_token_types`: a
    token-type table the pretrained model lacks starts at zeros, not random). `config`: the folder's config with
    changes (e.g. overrides), or None."""
    from transformers import AutoConfig

    from ..auto import family_of

    if task not in ("nlvr2", "text-assignment"):
        raise ValueError(f"task must be 'nlvr2' or 'text-assignment', got {task!r}.")
    config = config if config is not None else AutoConfig.from_pretrained(folder)
    family = family_of(config)
    target = family.visual_reasoning_class if task == "nlvr2" else family.text_assignment_class
    if target is None:
        raise ValueError(f"{family.model_type} has no {task} model.")
    saved = (config.architectures or [family.model_class.__name__])[0]
    assignment = family.text_assignment_class if task == "nlvr2" else None
    candidates = (target, assignment, family.pretraining_class, family.retrieval_class, family.model_class)
    saved_class = next((c for c in candidates if c is not None and c.__name__ == saved), None)
    if saved_class is None:
        raise ValueError(f"{folder} holds a {saved}, none of {family.model_type}'s models usable for {task}.")
    model = saved_class.from_pretrained(folder, config=config)
    if saved_class is target:
        return model.train()
    logger.info("Starting the %s model from the %s in %s", task, saved, folder)
    if saved_class is assignment:
        return target.from_text_assignment(model, momentum_from_loaded)
    if task == "nlvr2":
        return target.from_pretraining(model, momentum_from_loaded, zero_token_types)
    return target.from_pretraining(model, zero_token_types)


__all__ = [
    "TASKS",
    "checkpoint_layout",
    "convert_to_two_image_task",
    "convert_two_image_state_dict",
    "load_two_image_model",
    "text_assignment_initialisation",
    "two_image_task",
]
