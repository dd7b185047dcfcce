"""Map official SIMLA (codezakh/SIMLA) encoder weights onto vlalign's generalised ALBEF blocks.

SIMLA's ViT is ALBEF's plus a learned `mask_token`; its BERT (BLIP's "MED") has no token-type embeddings and
cross-attention in every layer. So the ViT becomes an `AlbefVisionModel` (`use_mask_token`), the BERT embeddings an
`AlbefTextModel` with `fusion_layer=0` (embeddings, no layers) and the 12 BERT layers one `AlbefFusionModel`, which
skips cross-attention when no image states are given (SIMLA's `mode='text'`). Key renaming reuses ALBEF's rules.
"""

from __future__ import annotations

import re

import torch

from ..models.configuration_albef import AlbefTextConfig, AlbefVisionConfig
from .albef import BERT_CONFIG_KEYS, _convert_bert_key, _convert_vit_key

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


def simla_encoder_configs(yaml_config: dict, bert_config: dict) -> tuple[AlbefVisionConfig, AlbefTextConfig]:
    """The vision and text configs of SIMLA's encoders from the official YAML and MED BERT json.

    The ViT keeps its mask token unless the YAML sets `vit_mask_token: false` (retrieval configs). The text config
    has no token types and no text-only layers (`fusion_layer=0`): every BERT layer has cross-attention.
    """
    vision = {key: yaml_config.get(key, default) for key, default in OFFICIAL_SIMLA_VISION.items()}
    vision_config = AlbefVisionConfig(
        hidden_size=vision["vit_embed_dim"],
        num_hidden_layers=vision["vit_depth"],
        num_attention_heads=vision["vit_num_heads"],
        intermediate_size=4 * vision["vit_embed_dim"],
        patch_size=vision["vit_patch_size"],
        image_size=yaml_config.get("image_res", 256),
        use_mask_token=yaml_config.get("vit_mask_token", True),
    )
    text = {key: bert_config[key] for key in _TEXT_KEYS if key in bert_config}
    text_config = AlbefTextConfig(**text, fusion_layer=0, type_vocab_size=0)
    return vision_config, text_config


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


__all__ = ["convert_encoder_state_dict", "simla_encoder_configs"]
