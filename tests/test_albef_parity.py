"""Numerical parity with the official ALBEF code (salesforce/ALBEF @ b9727e4) on its golden fixture.

The fixture's checkpoint is converted through the `vlalign convert` CLI, loaded with the Auto classes, and every
deterministic tensor the official code recorded is matched at atol 1e-5 (see tests/fixtures/albef/README.md).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ALBEF_FIXTURES
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForPreTraining, AutoProcessor

import vlalign
from vlalign.data.loaders import load_karpathy_json
from vlalign.evaluation import evaluate_retrieval

ATOL = 1e-5


@pytest.fixture(scope="module")
def golden():
    return load_file(ALBEF_FIXTURES / "inputs.safetensors"), load_file(ALBEF_FIXTURES / "outputs.safetensors")


@pytest.fixture(scope="module")
def pretrain_model(converted_pretrain_dir):
    model = AutoModelForPreTraining.from_pretrained(converted_pretrain_dir)
    assert isinstance(model, vlalign.AlbefForPreTraining)
    return model.train()  # the official outputs were recorded in train mode (dropout is 0 in the fixture config)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def test_encoders_and_features(pretrain_model, golden):
    inputs, outputs = golden
    albef = pretrain_model.albef
    with torch.no_grad():
        image_hidden = albef.vision_model(inputs["pixel_values"]).last_hidden_state
        text_hidden = albef.text_model(inputs["input_ids"], inputs["attention_mask"]).last_hidden_state
        image_feat = torch.nn.functional.normalize(
            albef.get_image_features(inputs["pixel_values"]).pooler_output, dim=-1
        )
        text_feat = torch.nn.functional.normalize(
            albef.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output, dim=-1
        )
    assert_close(image_hidden, outputs["image_embeds"])
    assert_close(text_hidden, outputs["text_embeds"])
    assert_close(image_feat, outputs["image_feat"])
    assert_close(text_feat, outputs["text_feat"])


def test_itm_logits(pretrain_model, golden):
    inputs, outputs = golden
    albef = pretrain_model.albef
    mask = inputs["attention_mask"]
    with torch.no_grad():
        image_hidden = albef.vision_model(inputs["pixel_values"]).last_hidden_state
        text_hidden = albef.text_model(inputs["input_ids"], mask).last_hidden_state
        positive = albef.itm_logits(text_hidden, mask, image_hidden)
        shifted = albef.itm_logits(text_hidden.roll(-1, 0), mask.roll(-1, 0), image_hidden)
    assert_close(positive, outputs["itm_logits_pos"])
    assert_close(shifted, outputs["itm_logits_shift1"])


def test_momentum_teacher_mlm_logits(pretrain_model, golden):
    inputs, outputs = golden
    with torch.no_grad():
        image_hidden_m = pretrain_model.vision_model_m(inputs["pixel_values"]).last_hidden_state
        logits_m = pretrain_model.mlm_logits(
            inputs["mlm_input_ids"], inputs["attention_mask"], image_hidden_m, momentum=True
        )
    assert_close(logits_m, outputs["mlm_logits_m"])


@pytest.fixture(scope="module")
def forward_after_momentum_update(converted_pretrain_dir, golden):
    """The official forward: one momentum update, then ITC/ITM/MLM; then one enqueue."""
    inputs, _ = golden
    model = AutoModelForPreTraining.from_pretrained(converted_pretrain_dir).train()
    model.momentum_update()
    kwargs = dict(
        pixel_values=inputs["pixel_values"],
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        mlm_input_ids=inputs["mlm_input_ids"],
        mlm_labels=inputs["mlm_labels"],
    )
    with torch.no_grad():
        out = model(**kwargs, alpha=0.4)
        out_alpha0 = model(**kwargs, alpha=0.0)
        model.enqueue(out.image_feat_m, out.text_feat_m)
    return model, out, out_alpha0


def test_contrastive_similarities_and_losses(forward_after_momentum_update, golden):
    _, outputs = golden
    _, out, out_alpha0 = forward_after_momentum_update
    assert_close(out.image_feat_m, outputs["image_feat_m"])
    assert_close(out.text_feat_m, outputs["text_feat_m"])
    assert_close(out.sim_i2t, outputs["sim_i2t"])
    assert_close(out.sim_t2i, outputs["sim_t2i"])
    assert_close(out.loss_itc, outputs["loss_ita"])
    assert_close(out_alpha0.loss_itc, outputs["loss_ita_alpha0"])


def test_momentum_teacher_similarities(converted_pretrain_dir, golden):
    """The distillation teacher's logits: momentum features against the momentum banks (batch + queue)."""
    inputs, outputs = golden
    model = AutoModelForPreTraining.from_pretrained(converted_pretrain_dir).train()
    model.momentum_update()
    with torch.no_grad():
        _, image_feat_m, text_feat_m = model._encode_momentum(
            inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], False
        )
        temp = model.albef.temp.clamp(model.config.temp_min, model.config.temp_max)
        sim_i2t_m = image_feat_m @ torch.cat([text_feat_m.t(), model.text_queue], 1) / temp
        sim_t2i_m = text_feat_m @ torch.cat([image_feat_m.t(), model.image_queue], 1) / temp
    assert_close(sim_i2t_m, outputs["sim_i2t_m"])
    assert_close(sim_t2i_m, outputs["sim_t2i_m"])


def test_mlm_logits_and_losses(forward_after_momentum_update, golden):
    _, outputs = golden
    _, out, out_alpha0 = forward_after_momentum_update
    assert_close(out.mlm_logits, outputs["mlm_logits"])
    assert_close(out.loss_mlm, outputs["loss_mlm_alpha04"])
    assert_close(out_alpha0.loss_mlm, outputs["loss_mlm_alpha0"])


def test_queues_after_one_update(forward_after_momentum_update, golden):
    _, outputs = golden
    model, _, _ = forward_after_momentum_update
    assert_close(model.image_queue, outputs["image_queue"])
    assert_close(model.text_queue, outputs["text_queue"])
    assert torch.equal(model.queue_ptr, outputs["queue_ptr"])


def test_processor_matches_official_preprocessing(converted_pretrain_dir, converted_retrieval_dirs, golden):
    inputs, _ = golden
    meta = json.loads((ALBEF_FIXTURES / "meta.json").read_text())
    processor = AutoProcessor.from_pretrained(converted_pretrain_dir)
    assert isinstance(processor, vlalign.AlbefProcessor)
    batch = processor(text=meta["captions_raw"], preset="pretrain")
    assert torch.equal(batch["input_ids"], inputs["input_ids"])
    assert torch.equal(batch["attention_mask"], inputs["attention_mask"])
    assert [processor.clean([c])[0] for c in meta["captions_raw"]] == meta["captions_after_pre_caption"]
    tokens = processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    assert tokens == meta["tokens"][0] and "[SEP]" not in tokens

    annotations = json.loads((ALBEF_FIXTURES / "retrieval" / "test.json").read_text())
    images = [Image.open(ALBEF_FIXTURES / "retrieval" / a["image"]) for a in annotations]
    captions = [c for a in annotations for c in a["caption"]]
    for resolution, folder in converted_retrieval_dirs.items():
        expected = load_file(ALBEF_FIXTURES / "retrieval" / f"retrieval_outputs_res{resolution}.safetensors")
        batch = AutoProcessor.from_pretrained(folder)(images=images, text=captions, preset="eval")
        assert_close(batch["pixel_values"], expected["retrieval_pixel_values"])
        assert torch.equal(batch["input_ids"], expected["retrieval_input_ids"])
        assert torch.equal(batch["attention_mask"], expected["retrieval_attention_mask"])


@pytest.mark.parametrize("resolution", [32, 48])
def test_retrieval_evaluation_matches_official(converted_retrieval_dirs, resolution):
    folder = converted_retrieval_dirs[resolution]
    expected = load_file(ALBEF_FIXTURES / "retrieval" / f"retrieval_outputs_res{resolution}.safetensors")
    metrics_reference = json.loads((ALBEF_FIXTURES / "retrieval" / "retrieval_metrics.json").read_text())
    model = vlalign.AlbefForImageTextRetrieval.from_pretrained(folder)
    assert_close(
        model.albef.vision_model.embeddings.position_embeddings.detach(), expected["visual_encoder_pos_embed_loaded"]
    )
    dataset = load_karpathy_json(ALBEF_FIXTURES / "retrieval" / "test.json", ALBEF_FIXTURES / "retrieval")
    result = evaluate_retrieval(
        model, AutoProcessor.from_pretrained(folder), dataset, k_test=4, return_scores=True, show_progress=False
    )
    assert_close(result["similarities"], expected["retrieval_sims_matrix"])
    for name in ("score_matrix_i2t", "score_matrix_t2i"):
        reference, ours = expected[name], result[name]
        reranked = reference > -100
        assert torch.equal(ours > -100, reranked), "the re-ranked (top-k) entries differ"
        assert_close(ours[reranked], reference[reranked])
        assert (ours[~reranked] < ours[reranked].min()).all()
    reference_metrics = metrics_reference[f"res{resolution}"]["itm_eval_with_stable_argsort"]
    for name, value in reference_metrics.items():
        assert result[name] == pytest.approx(value, abs=1e-4), name
