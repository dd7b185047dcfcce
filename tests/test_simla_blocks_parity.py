"""The generalised ALBEF blocks compute SIMLA's encoder passes (codezakh/SIMLA @ 44c700d) on its golden fixture.

The fixture's official checkpoint is converted with `vlalign.convert.simla`, loaded strictly into an
`AlbefVisionModel` (with mask token), an `AlbefTextModel` with `fusion_layer=0` (the MED embeddings) and an
`AlbefFusionModel` (the 12 MED layers, cross-attention in each), and every encoder pass the official code recorded is
matched at atol 1e-5 in eval mode, with eager and SDPA attention (see tests/fixtures/simla/README.md).
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import FIXTURES
from safetensors.torch import load_file

from vlalign.convert.restricted_unpickle import load_official_checkpoint
from vlalign.convert.simla import convert_encoder_state_dict, simla_encoder_configs
from vlalign.models.modeling_albef import AlbefFusionModel, AlbefTextModel, AlbefVisionModel

SIMLA_FIXTURES = FIXTURES / "simla"
ATOL = 1e-5
MOMENTUM = 0.995

#: official keys outside the encoders (heads, projections, training state, the tied MLM head, position_ids buffers)
LEFT_OVER = {
    "temp",
    "image_queue",
    "text_queue",
    "queue_ptr",
    *(
        f"{head}{suffix}.{kind}"
        for head in ("vision_proj", "text_proj", "mim_head", "concept_head")
        for suffix in ("", "_m")
        for kind in ("weight", "bias")
    ),
    "itm_head.weight",
    "itm_head.bias",
    *(
        f"text_encoder{suffix}.{name}"
        for suffix in ("", "_m")
        for name in (
            "bert.embeddings.position_ids",
            "cls.predictions.bias",
            "cls.predictions.decoder.weight",
            "cls.predictions.decoder.bias",
            "cls.predictions.transform.dense.weight",
            "cls.predictions.transform.dense.bias",
            "cls.predictions.transform.LayerNorm.weight",
            "cls.predictions.transform.LayerNorm.bias",
        )
    ),
}


def _read_configs(yaml_overrides: dict | None = None):
    original = SIMLA_FIXTURES / "original"
    yaml_config = yaml.safe_load((original / "Pretrain.yaml").read_text()) | (yaml_overrides or {})
    return simla_encoder_configs(yaml_config, json.loads((original / "shared_bert.json").read_text()))


def _prefixed(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


def _momentum_update(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One official `_momentum_update()`: `p_m ← p_m·m + p·(1 − m)` for every momentum tensor."""
    updated = dict(state_dict)
    for key, value in state_dict.items():
        block, _, rest = key.partition(".")
        if block.endswith("_m"):
            updated[key] = value * MOMENTUM + state_dict[f"{block[:-2]}.{rest}"] * (1.0 - MOMENTUM)
    return updated


@pytest.fixture(scope="module")
def original() -> dict[str, torch.Tensor]:
    return load_official_checkpoint(SIMLA_FIXTURES / "original" / "checkpoint.pth")[0]


@pytest.fixture(scope="module")
def converted(original) -> dict[str, torch.Tensor]:
    return convert_encoder_state_dict(original)[0]


@pytest.fixture(scope="module")
def golden() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return load_file(SIMLA_FIXTURES / "inputs.safetensors"), load_file(SIMLA_FIXTURES / "outputs.safetensors")


def _blocks(state_dict: dict[str, torch.Tensor], attn_implementation: str, momentum: bool = False):
    """(vision, text embeddings, fusion) blocks in eval mode, strictly loaded from the online or momentum weights."""
    vision_config, text_config = _read_configs()
    suffix = "_m" if momentum else ""
    blocks = []
    for block_class, config, name in (
        (AlbefVisionModel, vision_config, "vision_model"),
        (AlbefTextModel, text_config, "text_model"),
        (AlbefFusionModel, text_config, "fusion_model"),
    ):
        block = block_class(config).eval()
        block.set_attn_implementation(attn_implementation)
        block.load_state_dict(_prefixed(state_dict, f"{name}{suffix}."), strict=True)
        blocks.append(block)
    return blocks


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def test_encoder_configs_follow_the_official_yaml_and_json():
    vision, text = _read_configs()
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (32, 2, 2)
    assert (vision.intermediate_size, vision.patch_size, vision.image_size, vision.use_mask_token) == (
        128,
        16,
        32,
        True,
    )
    assert (text.num_hidden_layers, text.fusion_layer, text.type_vocab_size) == (12, 0, 0)
    assert (text.hidden_size, text.encoder_width, text.vocab_size, text.max_position_embeddings) == (32, 32, 201, 64)
    assert not _read_configs({"vit_mask_token": False})[0].use_mask_token


def test_conversion_keeps_every_encoder_tensor_and_lists_the_rest(original):
    converted, left_over = convert_encoder_state_dict(original)
    assert set(left_over) == LEFT_OVER
    qkv_tensors = 2 * 2 * 2  # (weight, bias) of 2 ViT blocks, online and momentum: each split into 3 tensors
    assert len(converted) + len(left_over) == len(original) + 2 * qkv_tensors
    assert torch.equal(converted["vision_model.embeddings.mask_token"], original["visual_encoder.mask_token"])
    assert torch.equal(converted["vision_model_m.embeddings.mask_token"], original["visual_encoder_m.mask_token"])
    for suffix in ("", "_m"):
        qkv = [converted[f"vision_model{suffix}.layers.1.self_attn.{p}.weight"] for p in ("query", "key", "value")]
        assert torch.equal(torch.cat(qkv), original[f"visual_encoder{suffix}.blocks.1.attn.qkv.weight"])
        assert torch.equal(
            converted[f"fusion_model{suffix}.layers.11.cross_attn.key.weight"],
            original[f"text_encoder{suffix}.bert.encoder.layer.11.crossattention.self.key.weight"],
        )
        assert torch.equal(
            converted[f"text_model{suffix}.embeddings.layer_norm.bias"],
            original[f"text_encoder{suffix}.bert.embeddings.LayerNorm.bias"],
        )


def test_retrieval_layout_converts_to_mask_token_free_blocks():
    original, _ = load_official_checkpoint(SIMLA_FIXTURES / "retrieval" / "checkpoint_retrieval_layout.pth")
    converted, left_over = convert_encoder_state_dict(original)
    encoder_left_over = {key for key in left_over if key.startswith(("visual_encoder", "text_encoder"))}
    assert encoder_left_over == {"text_encoder.embeddings.position_ids", "text_encoder_m.embeddings.position_ids"}
    vision_config, text_config = _read_configs({"vit_mask_token": False, "image_res": 48})
    for suffix in ("", "_m"):
        AlbefVisionModel(vision_config).load_state_dict(_prefixed(converted, f"vision_model{suffix}."), strict=True)
        AlbefTextModel(text_config).load_state_dict(_prefixed(converted, f"text_model{suffix}."), strict=True)
        AlbefFusionModel(text_config).load_state_dict(_prefixed(converted, f"fusion_model{suffix}."), strict=True)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_online_encoder_passes_match_official(converted, golden, attn_implementation):
    inputs, outputs = golden
    vision, text, fusion = _blocks(converted, attn_implementation)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        image_embeds = vision(inputs["pixel_values"]).last_hidden_state
        text_embeddings = text(ids, mask).last_hidden_state  # fusion_layer=0: the embedding layer only
        text_embeds = fusion(text_embeddings, mask).last_hidden_state  # mode='text'
        fused = fusion(text_embeddings, mask, image_embeds).last_hidden_state  # mode='multimodal'
        masked_image_embeds = vision(
            inputs["pixel_values"], bool_masked_pos=inputs["masked_visual_token_pos"]
        ).last_hidden_state
        # MIM: image tokens query the caption's embedding-layer output through the same BERT stack
        cross = fusion(text.embeddings(inputs_embeds=masked_image_embeds), None, text_embeddings, mask)
    assert_close(image_embeds, outputs["image_embeds"])
    assert_close(text_embeds, outputs["text_embeds"])
    assert_close(fused, outputs["itm_fused_pos"])
    assert_close(text_embeddings, outputs["mim_text_embeddings"])
    assert_close(masked_image_embeds, outputs["mim_masked_image_embeds"])
    assert_close(cross.last_hidden_state[:, 1:], outputs["mim_cross_embeds"])


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_momentum_encoder_passes_match_official_after_one_update(converted, golden, attn_implementation):
    inputs, outputs = golden
    vision, text, fusion = _blocks(_momentum_update(converted), attn_implementation, momentum=True)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        image_embeds_m = vision(inputs["pixel_values"]).last_hidden_state
        text_embeds_m = fusion(text(ids, mask).last_hidden_state, mask).last_hidden_state
        masked_image_embeds_m = vision(
            inputs["pixel_values"], bool_masked_pos=inputs["masked_visual_token_pos"]
        ).last_hidden_state
    assert_close(image_embeds_m, outputs["image_embeds_m"])
    assert_close(text_embeds_m, outputs["text_embeds_m"])
    assert_close(masked_image_embeds_m, outputs["mim_masked_image_embeds_m"])


def test_psl_attention_row_matches_official(converted, golden):
    """PSL reads layer 11's self-attention of the momentum BERT (after the update), multimodal with the online image
    embeddings; attention maps need eager attention."""
    inputs, outputs = golden
    vision, _, _ = _blocks(converted, "eager")
    _, text_m, fusion_m = _blocks(_momentum_update(converted), "eager", momentum=True)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        image_embeds = vision(inputs["pixel_values"]).last_hidden_state
        fused = fusion_m(text_m(ids, mask).last_hidden_state, mask, image_embeds, output_attentions=True)
    assert_close(fused.attentions[11][:, :, 0], outputs["psl_cls_self_attn_last_layer"])
