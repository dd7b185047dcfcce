"""`SimlaForPreTraining` reproduces the deterministic losses of one official SIMLA (codezakh/SIMLA @ 44c700d) forward.

The official pretraining checkpoint is converted with `convert_pretraining_state_dict` and loaded strictly; after one
momentum update (which the official forward runs first), a train-mode forward with the fixture's fixed MLM masking is
matched at atol 1e-5: ITC (both directions), MLM, MIM, PSL with its keyword intermediates, ITM with the official
forward's recorded negatives, and the queues after the per-step duties (see tests/fixtures/simla/README.md). Eager
attention: PSL reads attention maps.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURES
from safetensors.torch import load_file
from test_simla_model_parity import _config

from vlalign.convert.restricted_unpickle import load_official_checkpoint
from vlalign.convert.simla import convert_pretraining_state_dict
from vlalign.models.modeling_simla import SimlaForPreTraining

SIMLA_FIXTURES = FIXTURES / "simla"
ATOL = 1e-5


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.to(expected.dtype), expected, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def original() -> dict[str, torch.Tensor]:
    return load_official_checkpoint(SIMLA_FIXTURES / "original" / "checkpoint.pth")[0]


@pytest.fixture(scope="module")
def run(original):
    """(model after the forward and its duties, inputs, outputs, forward output)."""
    inputs, outputs = (
        load_file(SIMLA_FIXTURES / "inputs.safetensors"),
        load_file(SIMLA_FIXTURES / "outputs.safetensors"),
    )
    config = _config()
    # the fixture's vocab.txt starts [PAD] [UNK] [CLS] [SEP] [MASK] (the config defaults are bert-base-uncased's)
    config.text_config.cls_token_id, config.text_config.mask_token_id = 2, 4
    model = SimlaForPreTraining(config).train()
    model.set_attn_implementation("eager")
    converted, dropped = convert_pretraining_state_dict(original)
    model.load_state_dict(converted, strict=True)
    assert all(key.endswith(("position_ids", "decoder.weight", "decoder.bias")) for key in dropped)
    model.momentum_update()  # the official forward's first step
    output = model(
        pixel_values=inputs["pixel_values"],
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        bool_masked_pos=inputs["masked_visual_token_pos"],
        mim_labels=inputs["masked_visual_token_labels"],
        alpha=float(inputs["alpha"]),
        mlm_input_ids=inputs["mlm_input_ids_fixed"],
        mlm_labels=inputs["mlm_labels_fixed"],
        generator=torch.Generator().manual_seed(0),
    )
    output.loss.backward()
    with torch.no_grad():
        keywords = model.psl_targets(inputs["input_ids"], inputs["attention_mask"], outputs["image_embeds"])
    model.after_optimizer_step(0)  # no optimizer step here: the duties enqueue the forward's momentum features
    return model, inputs, outputs, output, keywords


def test_conversion_ties_the_mlm_heads_to_the_word_embeddings(original):
    converted, _ = convert_pretraining_state_dict(original)
    for suffix, text_model in (("", "simla.text_model"), ("_m", "text_model_m")):
        assert torch.equal(
            converted[f"{text_model}.embeddings.word_embeddings.weight"],
            original[f"text_encoder{suffix}.cls.predictions.decoder.weight"],
        )
        assert torch.equal(
            converted[f"mlm_head{suffix}.bias"], original[f"text_encoder{suffix}.cls.predictions.decoder.bias"]
        )


def test_contrastive_loss_matches_official(run):
    _, _, outputs, output, _ = run
    assert_close(output.sim_i2t, outputs["sim_i2t"])
    assert_close(output.sim_t2i, outputs["sim_t2i"])
    for direction, sim in (("i2t", output.sim_i2t), ("t2i", output.sim_t2i)):
        loss = -(F.log_softmax(sim, dim=1) * outputs[f"sim_{direction}_targets"]).sum(1).mean()
        assert_close(loss, outputs[f"loss_{direction}"])
    assert_close(output.loss_itc, outputs["loss_ita"])


def test_mlm_mim_psl_losses_match_official(run):
    _, _, outputs, output, _ = run
    assert_close(output.mlm_logits, outputs["mlm_logits"])
    assert_close(output.loss_mlm, outputs["loss_mlm_fixed"])
    assert_close(output.mim_logits, outputs["mim_logits"])
    assert_close(output.loss_mim, outputs["loss_mim"])
    assert_close(output.psl_logits, outputs["psl_logits"])
    assert_close(output.loss_psl, outputs["loss_psl"])
    total = output.loss_itc + output.loss_itm + output.loss_mlm + output.loss_mim + output.loss_psl
    assert_close(output.loss, total)


def test_psl_keywords_match_official(run):
    _, _, outputs, _, keywords = run
    for name in ("salient_positions", "position_counts", "top_positions", "keyword_ids", "hard_targets"):
        key = "psl_keyword_token_ids" if name == "keyword_ids" else f"psl_{name}"
        assert torch.equal(getattr(keywords, name), outputs[key]), name


def test_matching_loss_with_the_official_negatives(run):
    model, inputs, outputs, output, _ = run
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    negative_images, negative_texts = (
        outputs["fwd_itm_neg_image_idx_for_text"],
        outputs["fwd_itm_neg_text_idx_for_image"],
    )
    with torch.no_grad():
        text = model.base_model.get_text_features(ids, mask).last_hidden_state
        image = model.base_model.get_image_features(inputs["pixel_values"]).last_hidden_state
        logits = model.base_model.itm_logits(
            torch.cat([text, text, text[negative_texts]]),
            torch.cat([mask, mask, mask[negative_texts]]),
            torch.cat([image, image[negative_images], image]),
        )
    assert_close(F.cross_entropy(logits, outputs["itm_labels"]), outputs["loss_itm_from_fwd_choices"])
    assert output.itm_logits.shape == (12, 2) and torch.isfinite(output.loss_itm)


def test_queues_after_the_duties_match_official(run):
    model, _, outputs, _, _ = run
    assert_close(model.image_queue, outputs["post_image_queue"])
    assert_close(model.text_queue, outputs["post_text_queue"])
    assert torch.equal(model.queue_ptr, outputs["post_queue_ptr"])
    assert model.base_model.mim_head.weight.grad is not None and model.base_model.concept_head.weight.grad is not None
