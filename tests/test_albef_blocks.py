"""ALBEF building blocks generalised for SIMLA (spec simla.md §1): the ViT mask token, text embeddings without token
types or from given embeddings, and fusion layers whose cross-attention is skipped when no image is given. Each
option is checked against the same computation written out by hand from the module's weights, and against ALBEF's
behaviour when it is off."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_albef_config

import vlalign
from vlalign.models.modeling_albef import AlbefVisionEmbeddings

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


TINY_TEXT = dict(
    vocab_size=245,
    hidden_size=32,
    num_hidden_layers=4,
    fusion_layer=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def text_config(**overrides) -> vlalign.AlbefTextConfig:
    return tiny_albef_config(text_config={**TINY_TEXT, **overrides}).text_config


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
