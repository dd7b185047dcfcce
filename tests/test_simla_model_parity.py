"""`SimlaModel` (the online downstream model) reproduces the official SIMLA (codezakh/SIMLA @ 44c700d) fixture.

The official checkpoint is converted with `vlalign.convert.simla` and loaded strictly; features, ITM logits, MIM
logits and PSL keyword logits are matched at atol 1e-5 in eval mode (see tests/fixtures/simla/README.md). Also the
config (SIMLA defaults, validation, `to_dict` round trip); the safetensors save/load round trip of every SIMLA class
is in test_conventions.py.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import FIXTURES
from safetensors.torch import load_file

from vlalign.convert.restricted_unpickle import load_official_checkpoint
from vlalign.convert.simla import convert_online_state_dict, simla_config
from vlalign.models.configuration_simla import SimlaConfig, SimlaTextConfig, SimlaVisionConfig
from vlalign.models.modeling_simla import SimlaModel

SIMLA_FIXTURES = FIXTURES / "simla"
ATOL = 1e-5


def _config() -> SimlaConfig:
    original = SIMLA_FIXTURES / "original"
    return simla_config(
        yaml.safe_load((original / "Pretrain.yaml").read_text()),
        json.loads((original / "shared_bert.json").read_text()),
    )


@pytest.fixture(scope="module")
def original() -> dict[str, torch.Tensor]:
    return load_official_checkpoint(SIMLA_FIXTURES / "original" / "checkpoint.pth")[0]


@pytest.fixture(scope="module")
def golden() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return load_file(SIMLA_FIXTURES / "inputs.safetensors"), load_file(SIMLA_FIXTURES / "outputs.safetensors")


def _model(original: dict[str, torch.Tensor], attn_implementation: str) -> SimlaModel:
    model = SimlaModel(_config()).eval()
    model.set_attn_implementation(attn_implementation)
    model.load_state_dict(convert_online_state_dict(original)[0], strict=True)
    return model


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def assert_online_outputs_match(model: SimlaModel, inputs: dict, outputs: dict) -> None:
    """The online model's recorded outputs: ViT and text-mode states and features, ITM logits (positive and
    shift-by-one pairs), MIM logits and PSL keyword logits."""
    ids, mask, pixels = inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"]
    with torch.no_grad():
        vision = model.get_image_features(pixels)
        text = model.get_text_features(ids, mask)
        image_states = vision.last_hidden_state
        itm_pos = model.itm_logits(text.last_hidden_state, mask, image_states)
        itm_shift = model.itm_logits(text.last_hidden_state, mask, image_states.roll(-1, dims=0))
        mim_logits = model.mim_logits(pixels, inputs["masked_visual_token_pos"], ids, mask)
        psl_logits = model.keyword_logits(pixels)
    assert_close(image_states, outputs["image_embeds"])
    assert_close(F.normalize(vision.pooler_output, dim=-1), outputs["image_feat"])
    assert_close(text.unimodal_last_hidden_state, outputs["text_embeds"])
    assert_close(F.normalize(text.pooler_output, dim=-1), outputs["text_feat"])
    assert_close(itm_pos, outputs["itm_logits_pos"])
    assert_close(itm_shift, outputs["itm_logits_shift"])
    assert_close(mim_logits, outputs["mim_logits"])
    assert_close(psl_logits, outputs["psl_logits"])


def test_config_defaults_are_the_official_simla_layout():
    config = SimlaConfig()
    assert isinstance(config.vision_config, SimlaVisionConfig) and config.vision_config.use_mask_token
    assert isinstance(config.text_config, SimlaTextConfig)
    assert (config.text_config.fusion_layer, config.text_config.type_vocab_size) == (0, 0)
    assert (config.mim_vocab_size, config.psl_attention_layer) == (8192, 11)
    assert (config.psl_positions_per_head, config.psl_num_keywords, config.mlm_distill_axis) == (4, 5, "sequence")
    # dict sub-configs get SIMLA's defaults too; the PSL layer follows the depth
    small = SimlaConfig(vision_config={"hidden_size": 32}, text_config={"hidden_size": 32, "num_hidden_layers": 3})
    assert (small.text_config.fusion_layer, small.text_config.encoder_width, small.psl_attention_layer) == (0, 32, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vision_config": {"hidden_size": 32}}, "must equal text_config.hidden_size"),
        ({"text_config": {"fusion_layer": 6}}, "fusion_layer must be 0"),
        ({"psl_attention_layer": 12}, "psl_attention_layer=12"),
        ({"psl_num_keywords": 0}, "psl_num_keywords must be positive"),
        ({"mim_vocab_size": 0}, "mim_vocab_size must be positive"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SimlaConfig(**kwargs)


def test_config_round_trips_through_dict_and_reads_the_official_files():
    config = _config()
    assert (config.embed_dim, config.queue_size, config.mim_vocab_size, config.psl_attention_layer) == (16, 8, 64, 11)
    assert (config.vision_config.hidden_size, config.text_config.num_hidden_layers) == (32, 12)
    restored = SimlaConfig.from_dict(config.to_dict())
    assert restored.to_dict() == config.to_dict()
    assert isinstance(restored.text_config, SimlaTextConfig)


def test_online_conversion_loads_strictly_and_reports_training_state(original):
    converted, left_over = convert_online_state_dict(original)
    assert not any(key.split(".", 1)[0].endswith("_m") for key in converted)
    assert {"temp", "mim_head.weight", "concept_head.bias", "itm_head.weight"} <= set(converted)
    assert all(key in original for key in left_over)
    heads = {key for key in left_over if not key.startswith(("visual_encoder_m.", "text_encoder_m."))}
    assert {key for key in heads if not key.startswith("text_encoder.")} == {
        "image_queue",
        "text_queue",
        "queue_ptr",
        *(
            f"{head}_m.{kind}"
            for head in ("vision_proj", "text_proj", "mim_head", "concept_head")
            for kind in ("weight", "bias")
        ),
    }
    assert {key for key in heads if key.startswith("text_encoder.")} == {
        "text_encoder.bert.embeddings.position_ids",
        *(key for key in original if key.startswith("text_encoder.cls.")),
    }


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_online_model_matches_official(original, golden, attn_implementation):
    inputs, outputs = golden
    model = _model(original, attn_implementation)
    assert_online_outputs_match(model, inputs, outputs)
    with torch.no_grad():
        output = model(
            input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"]
        )
    # ITC against the fixture's bank (momentum features of the batch, then the queue): online image side
    assert_close(output.image_embeds @ outputs["text_feat_all"] / model.temp, outputs["sim_i2t"])
    assert_close(output.logits_per_image, outputs["image_feat"] @ outputs["text_feat"].t() / 0.07)


def test_fresh_tiny_model_runs_every_path():
    config = SimlaConfig(
        vision_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32},
        text_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 50},
        embed_dim=8,
        mim_vocab_size=16,
    )
    model = SimlaModel(config)
    assert (model.mim_head.out_features, model.concept_head.in_features, model.concept_head.out_features) == (
        16,
        8,
        50,
    )
    ids, mask = torch.randint(5, 50, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    pixels, masked = torch.randn(2, 3, 32, 32), torch.tensor([[True, False, True, False], [False] * 4])
    text = model.get_text_features(ids, mask, output_hidden_states=True)
    assert text.last_hidden_state.shape == text.unimodal_last_hidden_state.shape == (2, 6, 32)
    assert len(text.hidden_states) == 3
    output = model(input_ids=ids, pixel_values=pixels, attention_mask=mask)
    mim = model.mim_logits(pixels, masked, ids, mask)
    assert output.logits_per_image.shape == (2, 2) and mim.shape == (2, 4, 16)
    (output.logits_per_image.sum() + mim.sum() + model.concept_head(output.image_embeds).sum()).backward()
    assert model.mim_head.weight.grad is not None and model.concept_head.weight.grad is not None
