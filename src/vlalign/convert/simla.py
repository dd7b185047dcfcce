"""Map official SIMLA (codezakh/SIMLA) encoder weights onto vlalign's generalised ALBEF blocks.

SIMLA's ViT is ALBEF's plus a learned `mask_token`; its BERT (BLIP's "MED") has no token-type embeddings and
cross-attention in every layer. So the ViT becomes an `AlbefVisionModel` (`use_mask_token`), the BERT embeddings an
`AlbefTextModel` with `fusion_layer=0` (embeddings, no layers) and the 12 BERT layers one `AlbefFusionModel`, which
skips cross-attention when no image states are given (SIMLA's `mode='text'`). Key renaming reuses ALBEF's rules.
`simla_config` and `convert_online_state_dict` give the config and weights of the downstream `SimlaModel`,
`convert_pretraining_state_dict` those of `SimlaForPreTraining` (momentum copies, queues, MLM heads),
`convert_retrieval_state_dict` those of `SimlaForImageTextRetrieval` (`convert.simla_vqa` builds
`SimlaForQuestionAnswering`), and `convert_simla_checkpoint` turns an official `.pth` (pretraining, fine-tuned
retrieval or fine-tuned VQA layout) into a folder the Auto classes load (`vlalign convert --method simla`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..models.configuration_simla import SimlaConfig, SimlaTextConfig, SimlaVisionConfig
from ..models.modeling_simla import (
    SimlaForImageTextRetrieval,
    SimlaForPreTraining,
    SimlaForQuestionAnswering,
    without_pretraining_modules,
)
from ..models.modeling_simla_nlvr import SimlaForTextAssignment, SimlaForVisualReasoning
from ..models.modeling_simla_ve import SimlaForVisualEntailment
from ..models.tokenization_simla import SimlaTokenizer
from ..recipes.simla import simla_processor
from .albef import (
    BERT_CONFIG_KEYS,
    CheckpointError,
    _convert_bert_key,
    _convert_vit_key,
    _read_configs,
    check_image_size,
    load_converted_weights,
    load_tokenizer,
    save_converted,
)
from .albef_vqa import is_vqa_layout
from .nlvr import convert_to_two_image_task, two_image_task
from .restricted_unpickle import load_official_checkpoint
from .simla_vqa import convert_simla_to_vqa
from .ve import convert_to_ve, is_ve_layout

#: the ViT shape SIMLA's code hard-codes (patch, width, depth, heads); the fixture YAMLs override it with `vit_*` keys
OFFICIAL_SIMLA_VISION = {"vit_patch_size": 16, "vit_embed_dim": 768, "vit_depth": 12, "vit_num_heads": 12}

#: BERT json settings of SIMLA's MED stack: ALBEF's, less the split point and token types it does not have
_TEXT_KEYS = (*(k for k in BERT_CONFIG_KEYS if k not in ("fusion_layer", "type_vocab_size")), "encoder_width")

#: ALBEF's converter prefixes for the online and momentum blocks → the blocks' own prefixes here
_PREFIXES = {
    "albef.vision_model.": "vision_model.",
    "albef.text_model.": "text_model.",
    "albef.fusion_model.": "fusion_model.",
    "vision_model_m.": "vision_model_m.",
    "text_model_m.": "text_model_m.",
    "fusion_model_m.": "fusion_model_m.",
}


#: official keys of the online heads, projections and temperature, loaded into `SimlaModel` under the same names
_ONLINE_HEADS = ("vision_proj.", "text_proj.", "itm_head.", "mim_head.", "concept_head.")

#: official keys of the momentum heads and the queues, loaded into `SimlaForPreTraining` under the same names
_TRAINING_STATE = ("vision_proj_m.", "text_proj_m.", "mim_head_m.", "concept_head_m.", "image_queue", "text_queue")

#: YAML keys of the official pretrain config read into `SimlaConfig` (same names there)
_YAML_KEYS = (
    "embed_dim",
    "temp",
    "queue_size",
    "momentum",
    "alpha",
    "mlm_probability",
    "mim_vocab_size",
    "k_test",
    "distill",
)

#: converted keys of the pretraining-only modules, which the retrieval model lacks (`Retrieval.py` drops them too)
_PRETRAINING_ONLY = re.compile(
    r"^(mlm_head(_m)?\.|simla\.(mim|concept)_head\.|(mim|concept)_head_m\.|.*\.mask_token$)"
)

#: official keys a conversion may leave out: the tied MLM decoders (checked equal to the word embeddings) and the
#: `position_ids` buffers
_DROPPABLE = re.compile(r"(cls\.predictions\.decoder\.(weight|bias)|position_ids)$")

TASKS = ("pretraining", "retrieval", "vqa", "ve", "nlvr2", "text-assignment")


def simla_encoder_configs(yaml_config: dict, bert_config: dict) -> tuple[SimlaVisionConfig, SimlaTextConfig]:
    """The vision and text configs of SIMLA's encoders from the official YAML and MED BERT json.

    The ViT keeps its mask token unless the YAML sets `vit_mask_token: false` (retrieval configs). The text config
    has no token types and no text-only layers (`fusion_layer=0`): every BERT layer has cross-attention.
    """
    vision = {key: yaml_config.get(key, default) for key, default in OFFICIAL_SIMLA_VISION.items()}
    vision_config = SimlaVisionConfig(
        hidden_size=vision["vit_embed_dim"],
        num_hidden_layers=vision["vit_depth"],
        num_attention_heads=vision["vit_num_heads"],
        intermediate_size=4 * vision["vit_embed_dim"],
        patch_size=vision["vit_patch_size"],
        image_size=yaml_config.get("image_res", 256),
        use_mask_token=yaml_config.get("vit_mask_token", True),
    )
    text = {key: bert_config[key] for key in _TEXT_KEYS if key in bert_config}
    text_config = SimlaTextConfig(**text, fusion_layer=0, type_vocab_size=0)
    return vision_config, text_config


def simla_config(
    yaml_config: dict,
    bert_config: dict,
    tokenizer: SimlaTokenizer | None = None,
    image_size: int | None = None,
) -> SimlaConfig:
    """A `SimlaConfig` from the official YAML (pretrain or retrieval) and MED BERT json; values the YAML lacks keep
    the defaults, which are the official ones.

    Args:
        yaml_config, bert_config: the parsed official files.
        tokenizer: when given, the [CLS], [MASK], [PAD] and [SEP] ids come from its vocabulary (MLM masking, PSL
            targets, padding and the VQA answers' start and end depend on them), not from bert-base-uncased's
            defaults.
        image_size: target resolution; default the YAML's `image_res`.
    """
    vision_config, text_config = simla_encoder_configs(yaml_config, bert_config)
    if image_size is not None:
        vision_config.image_size = image_size
    if tokenizer is not None:
        text_config.cls_token_id = tokenizer.cls_token_id
        text_config.mask_token_id = tokenizer.mask_token_id
        text_config.pad_token_id = tokenizer.pad_token_id
        text_config.sep_token_id = tokenizer.sep_token_id
    settings = {key: yaml_config[key] for key in _YAML_KEYS if key in yaml_config}
    return SimlaConfig(vision_config=vision_config, text_config=text_config, **settings)


def convert_online_state_dict(original: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The official pretraining weights of `SimlaModel` (online encoders, `vision_proj`, `text_proj`, `itm_head`,
    `mim_head`, `concept_head`, `temp`); return (state dict, left-over keys): momentum copies, queues, the MLM head
    and the `position_ids` buffers."""
    encoders, left_over = convert_encoder_state_dict(original)
    converted = {key: value for key, value in encoders.items() if not key.split(".", 1)[0].endswith("_m")}
    converted |= {key: original[key] for key in left_over if key == "temp" or key.startswith(_ONLINE_HEADS)}
    momentum_encoders = [key for key in original if re.match(r"^(visual|text)_encoder_m\.", key)]
    rest = {key for key in left_over if key not in converted} | set(momentum_encoders)
    return converted, [key for key in original if key in rest]


def convert_pretraining_state_dict(original: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The official pretraining weights of `SimlaForPreTraining`: the online model under `simla.`, the momentum
    encoders and heads, the queues and both MLM heads (transform and bias; the decoder is the word-embedding matrix,
    checked equal). Return (state dict, dropped keys): the tied decoders and the `position_ids` buffers."""
    online, left_over = convert_online_state_dict(original)
    converted = {f"simla.{key}": value for key, value in online.items()}
    encoders, _ = convert_encoder_state_dict(original)
    converted |= {key: value for key, value in encoders.items() if key.split(".", 1)[0].endswith("_m")}
    dropped = []
    for key in left_over:
        mlm_head = re.match(r"^text_encoder(_m)?\.(cls\..+)$", key)
        if mlm_head:
            new_keys = _convert_bert_key(mlm_head.group(2), original[key], mlm_head.group(1) or "", 0, True)
        elif key.startswith(_TRAINING_STATE) or key == "queue_ptr":
            new_keys = {key: original[key]}
        else:
            new_keys = None if _convert_encoder_key(key, original[key]) is None else {}
        if new_keys is None:
            dropped.append(key)
        converted |= new_keys or {}
    for suffix in ("", "_m"):
        decoder = original.get(f"text_encoder{suffix}.cls.predictions.decoder.weight")
        embeddings = original.get(f"text_encoder{suffix}.bert.embeddings.word_embeddings.weight")
        if decoder is not None and not torch.equal(decoder, embeddings):
            raise CheckpointError(
                f"text_encoder{suffix}.cls.predictions.decoder.weight differs from the word embeddings; SIMLA ties "
                "them, so this is not a SIMLA pretraining checkpoint."
            )
    return converted, dropped


def convert_retrieval_state_dict(original: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The weights of `SimlaForImageTextRetrieval` from either official layout: a fine-tuned retrieval checkpoint
    (`text_encoder.X`, `idx_queue`, no heads) or a pretraining one, reduced as `Retrieval.py` loads it (MLM, MIM and
    keyword heads and the ViTs' `mask_token` dropped; no `idx_queue`, which then starts at -100). Return (state dict,
    dropped official keys)."""
    idx_queue = original.get("idx_queue")
    converted, dropped = convert_pretraining_state_dict({k: v for k, v in original.items() if k != "idx_queue"})
    pretraining_only = {key for key in converted if _PRETRAINING_ONLY.match(key)}
    converted = {key: value for key, value in converted.items() if key not in pretraining_only}
    dropped += [key for key in original if _is_pretraining_only(key)]
    if idx_queue is not None:
        converted["idx_queue"] = idx_queue
    return converted, list(dict.fromkeys(dropped))


def _is_pretraining_only(key: str) -> bool:
    """Whether an official key belongs to a module only the pretraining model has."""
    return bool(
        re.match(r"^text_encoder(_m)?\.cls\.", key)
        or re.match(r"^(mim|concept)_head(_m)?\.", key)
        or re.match(r"^visual_encoder(_m)?\.mask_token$", key)
    )


def convert_simla_checkpoint(
    checkpoint: str | Path,
    config_files: list[str | Path],
    output_dir: str | Path,
    tokenizer: str | Path | None = None,
    task: str = "auto",
    image_size: int | None = None,
) -> SimlaForPreTraining | SimlaForImageTextRetrieval | SimlaForQuestionAnswering:
    """Convert an official SIMLA checkpoint and save it (weights, config, processor, remote code) to `output_dir`.

    Args:
        checkpoint: the official `.pth` file, pretraining layout (`text_encoder.bert.*`, momentum copies, MLM/MIM/
            keyword heads, queues; its config may be a pickled OmegaConf object, read without running its code) or
            fine-tuned retrieval layout (`text_encoder.*`, `idx_queue`, no heads, no mask token) or fine-tuned VQA layout
            (`text_encoder.*`, `text_decoder.bert.*`, `text_decoder.cls.*`).
        config_files: the official YAML (`Pretrain.yaml`, `Retrieval_coco.yaml`, `VQA.yaml`, ...) and the MED BERT json; the json
            may be omitted when the YAML's `bert_config` path resolves beside it.
        output_dir: where to write the converted folder.
        tokenizer: a folder with `vocab.txt`/tokenizer files or a Hub id; default: a `vocab.txt` beside the checkpoint
            or configs, else `bert-base-uncased`. Its [CLS]/[MASK]/[PAD] ids go into the config.
        task: `"pretraining"` (`SimlaForPreTraining`), `"retrieval"` (`SimlaForImageTextRetrieval`; from a pretraining
            checkpoint this is what `Retrieval.py` loads: heads and mask token dropped, `idx_queue` at -100), `"vqa"`
            (`SimlaForQuestionAnswering`; from a pretraining checkpoint this is what `VQA.py` loads, see
            `convert.simla_vqa`), `"ve"` (`SimlaForVisualEntailment`, from a pretraining or fine-tuned VE checkpoint;
            see `convert.ve`), or `"auto"` (VQA for a checkpoint with an answer decoder, VE for one with `cls_head`,
            else retrieval when the YAML has `k_test`, else pretraining).
        image_size: target resolution; default the YAML's `image_res`. ViT position embeddings (online and momentum)
            are interpolated when the checkpoint's grid differs.

    Raises:
        CheckpointError: the file is unreadable, or its keys or shapes do not fit the config (the message names them).
    """
    if task not in (*TASKS, "auto"):
        raise ValueError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)} or 'auto'.")
    yaml_config, bert_config, config_dirs = _read_configs(config_files)
    original, _ = load_official_checkpoint(checkpoint)
    two_image = two_image_task(original, task, bert_config.get("num_hidden_layers"))
    task = two_image or task  # before the VE check: NLVR checkpoints have cls_head too
    if task == "auto":
        task = "vqa" if is_vqa_layout(original) else "retrieval" if "k_test" in yaml_config else "pretraining"
        task = "ve" if is_ve_layout(original) else task
    processor_tokenizer = load_tokenizer(tokenizer, [Path(checkpoint).parent, *config_dirs], SimlaTokenizer)
    config = simla_config(yaml_config, bert_config, processor_tokenizer, image_size)
    check_image_size(config.vision_config, "--image-size" if image_size else "image_res")
    processor = _build_processor(processor_tokenizer, config.vision_config.image_size)
    if two_image is not None:
        model = convert_to_two_image_task(original, config, task, SimlaForVisualReasoning, SimlaForTextAssignment)
        save_converted(model, processor, output_dir)
        return model
    if task == "vqa":
        model = convert_simla_to_vqa(original, without_pretraining_modules(config))
        save_converted(model, processor, output_dir)
        return model
    if task == "ve":
        model = convert_to_ve(original, without_pretraining_modules(config), SimlaForVisualEntailment, yaml_config)
        save_converted(model, processor, output_dir)
        return model

    if task == "pretraining":
        heads = ("mim_head.weight", "concept_head.weight", "text_encoder.cls.predictions.bias")
        if "idx_queue" in original or not any(key in original for key in heads):
            absent = [key for key in heads if key not in original]
            raise CheckpointError(
                f"This looks like a fine-tuned retrieval checkpoint ({'has idx_queue, ' * ('idx_queue' in original)}"
                f"no {', '.join(absent)}): it lacks the pretraining heads. Convert it with task 'retrieval'."
            )
        model_class, (state_dict, dropped) = SimlaForPreTraining, convert_pretraining_state_dict(original)
        unknown = [key for key in dropped if not _DROPPABLE.search(key)]
    else:
        model_class, (state_dict, dropped) = SimlaForImageTextRetrieval, convert_retrieval_state_dict(original)
        unknown = [key for key in dropped if not (_DROPPABLE.search(key) or _is_pretraining_only(key))]
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} checkpoint keys are not SIMLA {task} keys (first: {', '.join(unknown[:5])}). Is this a "
            "SIMLA checkpoint? VQA and NLVR checkpoints convert with task 'vqa' and 'nlvr2'; grounding ones are not "
            "supported."
        )
    # A checkpoint without momentum encoders (e.g. weights saved for inference) starts them as copies of the online
    # ones, as the official `copy_params`; missing queues keep their random unit-vector init, `idx_queue` -100.
    has_momentum = any(key.split(".", 1)[0].endswith("_m") for key in state_dict)
    allowed_missing = [r"_queue$", r"^queue_ptr$", *([] if has_momentum else [r"^[a-z_]+_m\."])]
    model = load_converted_weights(model_class, config, state_dict, allowed_missing, has_momentum)
    save_converted(model, processor, output_dir)
    return model


def _build_processor(tokenizer: SimlaTokenizer, image_size: int):
    """The SIMLA processor at `image_size` (official normalisation, caption cleaning)."""
    return simla_processor(tokenizer, image_size)


def convert_encoder_state_dict(original: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename SIMLA's encoder weights (online and momentum) to the blocks' keys; return (state dict, left-over keys).

    `visual_encoder(_m).*` → `vision_model(_m).*` (qkv split, `mask_token` → `embeddings.mask_token`),
    `text_encoder(_m).[bert.]embeddings.*` → `text_model(_m).embeddings.*`,
    `text_encoder(_m).[bert.]encoder.layer.N.*` → `fusion_model(_m).layers.N.*`. Every other key (heads, projections,
    `temp`, queues, the MLM head, `position_ids`) is returned in the left-over list.
    """
    converted: dict[str, torch.Tensor] = {}
    left_over: list[str] = []
    for key, tensor in original.items():
        new_keys = _convert_encoder_key(key, tensor)
        if new_keys is None:
            left_over.append(key)
            continue
        for new_key, value in new_keys.items():
            prefix = next(p for p in _PREFIXES if new_key.startswith(p))
            converted[_PREFIXES[prefix] + new_key[len(prefix) :]] = value
    return converted, left_over


def _convert_encoder_key(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
    match = re.match(r"^visual_encoder(_m)?\.(.+)$", key)
    if match:
        prefix = "vision_model_m." if match.group(1) else "albef.vision_model."
        if match.group(2) == "mask_token":
            return {f"{prefix}embeddings.mask_token": tensor}
        return _convert_vit_key(match.group(2), tensor, prefix)
    match = re.match(r"^text_encoder(_m)?\.(?:bert\.)?((?:embeddings|encoder)\..+)$", key)
    if match:
        return _convert_bert_key(match.group(2), tensor, match.group(1) or "", fusion_layer=0, with_mlm_head=False)
    return None


__all__ = [
    "convert_encoder_state_dict",
    "convert_online_state_dict",
    "convert_pretraining_state_dict",
    "convert_retrieval_state_dict",
    "convert_simla_checkpoint",
    "simla_config",
    "simla_encoder_configs",
]
