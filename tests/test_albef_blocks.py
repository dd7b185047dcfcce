"""ALBEF building blocks generalised for SIMLA (spec simla.md §1): the ViT mask token, text embeddings without token
types or from given embeddings, and fusion layers whose cross-attention is skipped when no image is given. Each
option is checked against the same computation written out by hand from the module's weights, and against ALBEF's
behaviour when it is off."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_TEXT_CONFIG, tiny_albef_config

import vlalign
from vlalign.models.modeling_albef import AlbefFusionModel, AlbefVisionEmbeddings

TINY_VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=32)


def vision_config(**overrides) -> vlalign.AlbefVisionConfig:
    return vlalign.AlbefVisionConfig(**TINY_VISION, **overrides)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def patch_mask() -> torch.Tensor:
    return torch.tensor([[True, False, False, True], [False, False, False, False], [True, True, True, True]])


# ---------------------------------------------------------------------------------------------------------------------
# ViT mask token (spec §1.2)
# ---------------------------------------------------------------------------------------------------------------------


def test_mask_token_blends_masked_patches(images, patch_mask):
    torch.manual_seed(0)
    embeddings = AlbefVisionEmbeddings(vision_config(use_mask_token=True))
    with torch.no_grad():
        embeddings.mask_token.normal_()
        embeddings.cls_token.normal_()
        embeddings.position_embeddings.normal_()
        patches = embeddings.patch_embedding(images).flatten(2).transpose(1, 2)
        blended = torch.where(patch_mask.unsqueeze(-1), embeddings.mask_token.expand_as(patches), patches)
        cls = embeddings.cls_token.expand(3, -1, -1)
        expected = torch.cat([cls, blended], dim=1) + embeddings.position_embeddings
        torch.testing.assert_close(embeddings(images, bool_masked_pos=patch_mask), expected, atol=1e-6, rtol=0)
        unmasked = torch.cat([cls, patches], dim=1) + embeddings.position_embeddings
        torch.testing.assert_close(embeddings(images), unmasked, atol=1e-6, rtol=0)


def test_mask_token_off_keeps_albef_weights_and_outputs(images):
    torch.manual_seed(0)
    plain = vlalign.AlbefVisionModel(vision_config())
    with_token = vlalign.AlbefVisionModel(vision_config(use_mask_token=True))
    assert "embeddings.mask_token" not in plain.state_dict()
    assert set(with_token.state_dict()) - set(plain.state_dict()) == {"embeddings.mask_token"}
    missing, unexpected = with_token.load_state_dict(plain.state_dict(), strict=False)
    assert (missing, unexpected) == (["embeddings.mask_token"], [])
    with torch.no_grad():
        expected = plain(images).last_hidden_state
        torch.testing.assert_close(with_token(images).last_hidden_state, expected, atol=0, rtol=0)
        no_mask = torch.zeros(3, 4, dtype=torch.bool)
        torch.testing.assert_close(
            with_token(images, bool_masked_pos=no_mask).last_hidden_state, expected, atol=0, rtol=0
        )


def test_mask_token_starts_at_zero():
    model = vlalign.AlbefVisionModel(vision_config(use_mask_token=True))
    assert tuple(model.embeddings.mask_token.shape) == (1, 1, 32)
    assert torch.count_nonzero(model.embeddings.mask_token) == 0
    with torch.device("meta"):
        meta = vlalign.AlbefVisionModel(vision_config(use_mask_token=True))
    meta.to_empty(device="cpu")
    meta.embeddings.mask_token.data.fill_(1.0)
    meta.init_weights()
    assert torch.count_nonzero(meta.embeddings.mask_token) == 0


def test_masked_image_features_pass_the_mask_through(images, patch_mask):
    config = tiny_albef_config(vision_config={**TINY_VISION, "use_mask_token": True})
    torch.manual_seed(0)
    model = vlalign.AlbefModel(config).eval()
    with torch.no_grad():
        model.vision_model.embeddings.mask_token.normal_()
        masked = model.get_image_features(images, bool_masked_pos=patch_mask)
        direct = model.vision_model(images, bool_masked_pos=patch_mask).last_hidden_state
        unmasked = model.get_image_features(images)
    torch.testing.assert_close(masked.last_hidden_state, direct, atol=0, rtol=0)
    torch.testing.assert_close(masked.pooler_output, model.vision_proj(direct[:, 0]), atol=0, rtol=0)
    # image 1 has no masked patch; the others change
    torch.testing.assert_close(masked.last_hidden_state[1], unmasked.last_hidden_state[1], atol=0, rtol=0)
    assert not torch.allclose(masked.last_hidden_state[0], unmasked.last_hidden_state[0])


def test_mask_errors(images, patch_mask):
    with pytest.raises(ValueError, match="use_mask_token=True"):
        vlalign.AlbefVisionModel(vision_config())(images, bool_masked_pos=patch_mask)
    with pytest.raises(ValueError, match=r"\[batch, patches\]"):
        vlalign.AlbefVisionModel(vision_config(use_mask_token=True))(images, bool_masked_pos=patch_mask[:, :3])


# ---------------------------------------------------------------------------------------------------------------------
# Text embeddings without token types, and from given vectors (spec §1.3)
# ---------------------------------------------------------------------------------------------------------------------


def text_config(**overrides) -> vlalign.AlbefTextConfig:
    return tiny_albef_config(text_config={**TINY_TEXT_CONFIG, **overrides}).text_config


@pytest.fixture
def text_batch() -> dict[str, torch.Tensor]:
    input_ids = torch.randint(5, 245, (3, 7), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    return {"input_ids": input_ids.masked_fill(attention_mask == 0, 0), "attention_mask": attention_mask}


@pytest.mark.parametrize("type_vocab_size", [0, 2])
def test_text_embeddings_by_hand(text_batch, type_vocab_size):
    torch.manual_seed(0)
    embeddings = vlalign.AlbefTextModel(text_config(type_vocab_size=type_vocab_size)).embeddings
    ids = text_batch["input_ids"]
    expected = embeddings.word_embeddings(ids)
    if type_vocab_size:
        expected = expected + embeddings.token_type_embeddings.weight[0]
    expected = embeddings.layer_norm(expected + embeddings.position_embeddings.weight[: ids.shape[1]])
    with torch.no_grad():
        torch.testing.assert_close(embeddings(ids), expected, atol=1e-6, rtol=0)


def test_no_token_types_means_no_weights(text_batch):
    model = vlalign.AlbefTextModel(text_config(type_vocab_size=0))
    assert model.embeddings.token_type_embeddings is None
    assert not any("token_type" in key for key in model.state_dict())
    assert "embeddings.token_type_embeddings.weight" in vlalign.AlbefTextModel(text_config()).state_dict()
    # tokenizers return segment ids; a model without token types ignores them
    with torch.no_grad():
        plain = model(**text_batch).last_hidden_state
        with_types = model(**text_batch, token_type_ids=torch.ones_like(text_batch["input_ids"])).last_hidden_state
    torch.testing.assert_close(with_types, plain, atol=0, rtol=0)
    with pytest.raises(ValueError, match="type_vocab_size"):
        text_config(type_vocab_size=-1)


@pytest.mark.parametrize("type_vocab_size", [0, 2])
def test_inputs_embeds_match_input_ids(text_batch, type_vocab_size):
    torch.manual_seed(0)
    model = vlalign.AlbefTextModel(text_config(type_vocab_size=type_vocab_size)).eval()
    vectors = model.embeddings.word_embeddings(text_batch["input_ids"]).detach()
    with torch.no_grad():
        from_ids = model(**text_batch).last_hidden_state
        from_vectors = model(inputs_embeds=vectors, attention_mask=text_batch["attention_mask"]).last_hidden_state
    torch.testing.assert_close(from_vectors, from_ids, atol=0, rtol=0)


def test_text_input_errors(text_batch):
    model = vlalign.AlbefTextModel(text_config(type_vocab_size=0))
    vectors = torch.zeros(3, 7, 32)
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model(input_ids=text_batch["input_ids"], inputs_embeds=vectors)
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model(attention_mask=text_batch["attention_mask"])
    with pytest.raises(ValueError, match="longer than the model's 64 positions"):
        model(inputs_embeds=torch.zeros(1, 65, 32))


# ---------------------------------------------------------------------------------------------------------------------
# Fusion layers with cross-attention switched off at run time (spec §1.1, §1.3)
# ---------------------------------------------------------------------------------------------------------------------


def all_cross_attention_layers(implementation: str = "eager") -> AlbefFusionModel:
    """SIMLA's layout: every layer has cross-attention (fusion_layer 0)."""
    torch.manual_seed(0)
    config = text_config(fusion_layer=0)
    return AlbefFusionModel._from_config(config, attn_implementation=implementation).eval()


def test_fusion_without_image_is_self_attention_and_ffn_by_hand(text_batch):
    fusion = all_cross_attention_layers()
    states = torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(1))
    mask = text_batch["attention_mask"]
    additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    expected = states
    with torch.no_grad():
        for layer in fusion.layers:
            attn, _ = layer.self_attn(expected, additive)
            expected = layer.self_attn_layer_norm(expected + attn)
            expected = layer.output_layer_norm(expected + layer.mlp(expected))
        output = fusion(states, mask, output_attentions=True)
    torch.testing.assert_close(output.last_hidden_state, expected, atol=1e-5, rtol=0)
    assert len(output.attentions) == len(fusion.layers) and not output.cross_attentions


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_fusion_without_image_equals_text_layers_sharing_weights(text_batch, implementation):
    fusion = all_cross_attention_layers(implementation)
    text = vlalign.AlbefTextModel._from_config(text_config(fusion_layer=4), attn_implementation=implementation)
    weights = {k: v for k, v in fusion.state_dict().items() if ".cross_attn" not in k}
    missing, unexpected = text.layers.load_state_dict({k.removeprefix("layers."): v for k, v in weights.items()})
    assert (missing, unexpected) == ([], [])
    with torch.no_grad():
        embedded = text.embeddings(text_batch["input_ids"])
        fused = fusion(embedded, text_batch["attention_mask"]).last_hidden_state
    torch.testing.assert_close(fused, text.eval()(**text_batch).last_hidden_state, atol=1e-6, rtol=0)


def test_fusion_cross_attention_runs_only_with_image(text_batch):
    fusion = all_cross_attention_layers()
    states = torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(1))
    image = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(2))
    mask = text_batch["attention_mask"]
    fusion(states, mask).last_hidden_state.sum().backward()
    cross = [p for name, p in fusion.named_parameters() if ".cross_attn" in name]
    assert all(p.grad is None for p in cross)
    multimodal = fusion(states, mask, image, output_attentions=True)
    assert len(multimodal.cross_attentions) == len(fusion.layers)
    multimodal.last_hidden_state.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cross)
    with torch.no_grad():
        assert not torch.allclose(fusion(states, mask).last_hidden_state, multimodal.last_hidden_state)
    with pytest.raises(ValueError, match="image_attention_mask was given without image_hidden_states"):
        fusion(states, mask, image_attention_mask=torch.ones(3, 5))
