"""Map official SIMLA (codezakh/SIMLA) encoder weights onto vlalign's generalised ALBEF blocks.

SIMLA's ViT is ALBEF's plus a learned `mask_token`; its BERT (BLIP's "MED") has no token-type embeddings and
cross-attention in every layer. So the ViT becomes an `AlbefVisionModel` (`use_mask_token`), the BERT embeddings an
`AlbefTextModel` with `fusion_layer=0` (embeddings, no layers) and the 12 BERT layers one `AlbefFusionModel`, which
skips cross-attention when no image states are given (SIMLA's `mode='text'`). Key renaming reuses ALBEF's rules.
`simla_config` and `convert_online_state_dict` give the config and weights of the downstream `SimlaModel`,
`convert_pretraining_state_dict` those of `SimlaForPreTraining` (momentum copies, queues, MLM heads).
"""

from __future__ import annotations

import re

import torch

from ..models.configuration_simla import SimlaConfig, SimlaTextConfig, SimlaVisionConfig
from .albef import CheckpointError, _convert_bert_key, _convert_vit_key

#: the ViT shape SIMLA's code hard-codes (patch, width, depth, heads); the fixture YAMLs override it with `vit_*` keys
OFFICIAL_SIMLA_VISION = {"vit_patch_size": 16, "vit_embed_dim": 768, "vit_depth": 12, "vit_num_heads": 12}

_TEXT_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "layer_norm_eps",
    "pad_token_id",
    "initializer_range",
    "encoder_width",
)

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
_YAML_KEYS = ("embed_dim", "temp", "queue_size", "momentum", "alpha", "mlm_probability", "mim_vocab_size")


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


def simla_config(yaml_config: dict, bert_config: dict) -> SimlaConfig:
    """A `SimlaConfig` from the official pretrain YAML and MED BERT json (values the YAML lacks keep the defaults,
    which are the official ones)."""
    vision_config, text_config = simla_encoder_configs(yaml_config, bert_config)
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
    """The official pretraining weights of `SimlaForPreTraining`: the online model under `albef.`, the momentum
    encoders and heads, the queues and both MLM heads (transform and bias; the decoder is the word-embedding matrix,
    checked equal). Return (state dict, dropped keys): the tied decoders and the `position_ids` buffers."""
    online, left_over = convert_online_state_dict(original)
    converted = {f"albef.{key}": value for key, value in online.items()}
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
    "simla_config",
    "simla_encoder_configs",
]
