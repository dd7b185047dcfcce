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
