"""Behaviour of the ALBEF model family: sizes, objectives' edge cases, errors, training duties, ALBEF's own attention
maps and backends. The transformers conventions of every model class are checked in test_conventions.py."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_albef_config

import vlalign
from vlalign.models.modeling_albef import AlbefFusionModel, albef_alpha
from vlalign.models.training_duties import TrainingDutiesMixin


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_base_size_parameter_counts():
    """Spec §1.4: ViT-B/16@256 85,844,736; BERT + 6 cross-attention layers + MLM head 123,697,722; online model
    209,937,725; momentum copies of everything but the ITM head and temperature."""
    with torch.device("meta"):
        model = vlalign.AlbefForPreTraining(vlalign.AlbefConfig())
    albef = model.albef
    assert count(albef.vision_model) == 85_844_736
    assert count(albef.text_model) + count(albef.fusion_model) + count(model.mlm_head) == 123_697_722
    assert count(albef.vision_proj) + count(albef.text_proj) == 393_728
    assert count(albef.itm_head) == 1_538
    assert count(albef) + count(model.mlm_head) == 209_937_725
    assert count(model) == 2 * 209_937_725 - 1_538 - 1
    assert tuple(model.image_queue.shape) == (256, 65_536)


def test_momentum_update_is_ema_and_queue_wraps_around(tiny_config):
    torch.manual_seed(0)
    model = vlalign.AlbefForPreTraining(tiny_config)
    online = model.albef.vision_proj.weight
    with torch.no_grad():
        online.add_(1.0)
    before = model.vision_proj_m.weight.detach().clone()
    model.momentum_update()
    expected = 0.995 * before + 0.005 * online.detach()
    torch.testing.assert_close(model.vision_proj_m.weight, expected)

    feats = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    model.enqueue(feats, feats)
    model.enqueue(feats, feats)  # 12 entries into a queue of 8: columns 6,7 then 0..3
    assert int(model.queue_ptr) == 4
    torch.testing.assert_close(model.image_queue[:, 6:8], feats[:2].t())
    torch.testing.assert_close(model.image_queue[:, :4], feats[2:].t())


def test_retrieval_model_enqueues_image_indices(tiny_config, tiny_batch):
    torch.manual_seed(0)
    model = vlalign.AlbefForImageTextRetrieval(tiny_config)
    assert (model.idx_queue == -100).all()
    out = model(**tiny_batch, idx=torch.tensor([7, 7, 8, 9]))
    model.enqueue(out.image_feat_m, out.text_feat_m, out.idx)
    assert model.idx_queue[0, :4].tolist() == [7, 7, 8, 9]
    # the queued captions of image 7 are positives of image 7 in the next step
    out = model(**tiny_batch, idx=torch.tensor([7, 1, 2, 3]), alpha=0.0)
    assert torch.isfinite(out.loss)


class TestHardNegativesInModels:
    @pytest.mark.parametrize("batch_size", [1, 2])
    def test_pretraining_step_with_tiny_batches(self, tiny_config, tiny_batch, batch_size):
        torch.manual_seed(0)
        model = vlalign.AlbefForPreTraining(tiny_config)
        batch = {k: v[:batch_size] for k, v in tiny_batch.items()}
        out = model(**batch)
        assert out.itm_logits.shape[0] == (3 * batch_size if batch_size > 1 else 1)  # a lone pair has no negative
        out.loss.backward()
        assert torch.isfinite(out.loss)

    def test_duplicate_images_in_retrieval_batch(self, tiny_config, tiny_batch):
        torch.manual_seed(0)
        model = vlalign.AlbefForImageTextRetrieval(tiny_config)
        out = model(**tiny_batch, idx=torch.tensor([1, 1, 1, 1]))
        assert out.itm_logits.shape[0] == 4 and torch.isfinite(out.loss)

    def test_generator_makes_sampling_reproducible(self, tiny_config, tiny_batch):
        torch.manual_seed(0)
        model = vlalign.AlbefForPreTraining(tiny_config)
        first = model(**tiny_batch, generator=torch.Generator().manual_seed(5))
        second = model(**tiny_batch, generator=torch.Generator().manual_seed(5))
        assert torch.equal(first.itm_logits, second.itm_logits)
        torch.testing.assert_close(first.loss, second.loss)


def test_mask_tokens_respects_special_tokens_and_ratios(tiny_config):
    torch.manual_seed(0)
    model = vlalign.AlbefForPreTraining(tiny_albef_config(mlm_probability=0.5))
    ids = torch.randint(5, 245, (64, 40))
    ids[:, 0] = 2
    ids[:, 30:] = 0
    masked, labels = model.mask_tokens(ids, torch.Generator().manual_seed(0))
    selected = labels != -100
    assert not selected[:, 0].any() and not selected[:, 30:].any()
    assert selected[:, 1:30].float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert torch.equal(labels[selected], ids[selected])
    became_mask = (masked == 4) & selected
    assert became_mask.sum().item() / selected.sum().item() == pytest.approx(0.8, abs=0.03)
    assert torch.equal(masked[~selected], ids[~selected])


def test_mlm_loss_without_masked_tokens_is_zero_not_nan(tiny_config, tiny_batch):
    torch.manual_seed(0)
    model = vlalign.AlbefForPreTraining(tiny_config)
    labels = torch.full_like(tiny_batch["input_ids"], -100)
    out = model(**tiny_batch, mlm_input_ids=tiny_batch["input_ids"], mlm_labels=labels)
    assert out.loss_mlm.item() == 0.0
    out.loss.backward()


class TestInputErrors:
    @pytest.fixture
    def model(self, tiny_config):
        torch.manual_seed(0)
        return vlalign.AlbefForPreTraining(tiny_config)

    def test_wrong_rank(self, model, tiny_batch):
        with pytest.raises(ValueError, match="4-D tensor"):
            model.albef.get_image_features(tiny_batch["pixel_values"][0])

    def test_wrong_channels(self, model, tiny_batch):
        with pytest.raises(ValueError, match="1 channels but the model expects 3"):
            model.albef.get_image_features(tiny_batch["pixel_values"][:, :1])

    def test_wrong_size(self, model):
        with pytest.raises(ValueError, match="expects 32x32"):
            model.albef.get_image_features(torch.randn(1, 3, 48, 48))
        features = model.albef.get_image_features(torch.randn(1, 3, 48, 48), interpolate_pos_encoding=True)
        assert features.pooler_output.shape == (1, 16)

    def test_mismatched_batch_sizes(self, model, tiny_batch):
        with pytest.raises(ValueError, match="Got 4 images and 3 texts"):
            model(tiny_batch["pixel_values"], tiny_batch["input_ids"][:3], tiny_batch["attention_mask"][:3])

    def test_text_longer_than_positions(self, model):
        with pytest.raises(ValueError, match="longer than the model's 64 positions"):
            model.albef.get_text_features(torch.full((1, 65), 7))

    def test_non_finite_loss(self, model, tiny_batch):
        pixels = tiny_batch["pixel_values"].clone()
        pixels[0] = float("nan")
        with pytest.raises(FloatingPointError, match="not finite"):
            model(pixels, tiny_batch["input_ids"], tiny_batch["attention_mask"])


def test_config_validation():
    with pytest.raises(ValueError, match="fusion_layer"):
        vlalign.AlbefTextConfig(num_hidden_layers=4, fusion_layer=6)
    config = vlalign.AlbefConfig(vision_config={"hidden_size": 64}, text_config={"encoder_width": 999})
    assert config.text_config.encoder_width == 64
    assert vlalign.AlbefConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


def test_set_image_size_interpolates_online_and_momentum_position_tables(tiny_config, tiny_batch):
    torch.manual_seed(0)
    model = vlalign.AlbefForPreTraining(tiny_config)
    original = model.albef.vision_model.embeddings.position_embeddings.detach().clone()
    model.set_image_size(48)
    expected = vlalign.models.modeling_albef.interpolate_pos_embed(original, 9)
    for vision in (model.albef.vision_model, model.vision_model_m):
        torch.testing.assert_close(vision.embeddings.position_embeddings.detach(), expected)
    assert model.config.vision_config.image_size == 48
    assert model.albef.get_image_features(torch.randn(2, 3, 48, 48)).pooler_output.shape == (2, 16)


class TestTrainingDuties:
    """ALBEF's per-step duties (EMA + queue update) run from the model's `after_optimizer_step`."""

    @pytest.fixture
    def model(self, tiny_config):
        torch.manual_seed(0)
        return vlalign.AlbefForPreTraining(tiny_config).train()

    def test_declares_its_losses_and_duties(self, model, tiny_config):
        assert model.loss_names == ("loss_itc", "loss_itm", "loss_mlm")
        assert vlalign.AlbefForImageTextRetrieval(tiny_config).loss_names == ("loss_itc", "loss_itm")
        assert isinstance(model, TrainingDutiesMixin)
        assert model.training_duties_description() == "momentum EMA and queue update"

    def test_only_training_forwards_with_gradients_stash_features(self, model, tiny_batch):
        with torch.no_grad():
            model(**tiny_batch)
        model.eval()
        model(**tiny_batch)
        assert model._momentum_feature_stash == []
        model.train()
        out = model(**tiny_batch)
        (image_m, text_m, idx), *rest = model._momentum_feature_stash
        assert rest == [] and torch.equal(image_m, out.image_feat_m) and torch.equal(text_m, out.text_feat_m)
        assert idx.tolist() == [0, 1, 2, 3] and not image_m.requires_grad

    def test_after_optimizer_step_is_ema_then_enqueue_of_every_micro_batch(self, model, tiny_batch):
        reference = copy.deepcopy(model)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        outputs = []
        for half in (slice(0, 2), slice(2, 4)):  # two micro-batches of one optimizer step
            out = model(**{k: v[half] for k, v in tiny_batch.items()})
            out.loss.backward()
            outputs.append(out)
        optimizer.step()
        model.after_optimizer_step(0)

        for p, q in zip(reference.parameters(), model.parameters(), strict=True):
            if p.requires_grad:
                p.data.copy_(q.data)  # the reference gets the optimizer's update, then the old protocol by hand
        reference.momentum_update()
        reference.enqueue(
            torch.cat([o.image_feat_m for o in outputs]).detach(), torch.cat([o.text_feat_m for o in outputs]).detach()
        )
        for key, value in reference.state_dict().items():
            torch.testing.assert_close(model.state_dict()[key], value, atol=0, rtol=0, msg=key)
        assert int(model.queue_ptr) == 4 and model._momentum_feature_stash == []

    def test_an_optimizer_step_without_the_duties_is_refused(self, model, tiny_batch):
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        model(**tiny_batch).loss.backward()
        optimizer.step()
        with pytest.raises(RuntimeError, match="momentum EMA and queue update"):
            model(**tiny_batch)
        model.after_optimizer_step(0)
        model(**tiny_batch)  # the duties ran: training goes on

    def test_out_of_range_temperature_is_clamped_without_tripping_the_duty_check(self, model, tiny_batch):
        with torch.no_grad():
            model.albef.temp.fill_(1.0)
        model(**tiny_batch)
        assert model.albef.temp.item() == pytest.approx(0.5)
        model(**tiny_batch)

    def test_retrieval_duties_enqueue_image_indices(self, tiny_config, tiny_batch):
        torch.manual_seed(0)
        model = vlalign.AlbefForImageTextRetrieval(tiny_config).train()
        model(**tiny_batch, idx=torch.tensor([7, 7, 8, 9]))
        model.after_optimizer_step(0)
        assert model.idx_queue[0, :4].tolist() == [7, 7, 8, 9]

    def test_alpha_follows_the_warm_up_when_a_trainer_sets_the_step(self, model, tiny_batch):
        assert model.training_log_values()["alpha"] == pytest.approx(0.4)
        model.set_training_progress(5, 10)
        with torch.no_grad():
            model(**tiny_batch)
        logged = model.training_log_values()
        assert logged["alpha"] == pytest.approx(0.2) and logged["temp"] == pytest.approx(0.07)
        with torch.no_grad():
            model(**tiny_batch, alpha=0.3)  # an explicit α wins
        assert model.training_log_values()["alpha"] == pytest.approx(0.3)
        model.config.distill = False
        with torch.no_grad():
            model(**tiny_batch)
        assert model.training_log_values()["alpha"] == 0.0

    def test_default_alpha_without_a_trainer_is_the_config_value(self, model, tiny_batch):
        torch.manual_seed(1)
        with torch.no_grad():
            implicit = model(**tiny_batch, generator=torch.Generator().manual_seed(0))
            explicit = model(**tiny_batch, alpha=0.4, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(implicit.loss, explicit.loss)

    def test_albef_alpha_ramp(self):
        assert albef_alpha(0, 10) == 0.0
        assert albef_alpha(5, 10) == pytest.approx(0.2)
        assert albef_alpha(25, 10) == pytest.approx(0.4)
        assert albef_alpha(3, 0) == pytest.approx(0.4)
        with pytest.raises(ValueError):
            albef_alpha(-1, 10)


def _enqueue_worker(rank: int, world_size: int, init_file: str, result_file: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = vlalign.AlbefForImageTextRetrieval(tiny_albef_config(queue_size=16)).train()
        generator = torch.Generator().manual_seed(10 + rank)
        for micro_batch in range(2):
            ids = torch.randint(5, 245, (2, 6), generator=generator)
            ids[:, 0] = 2
            idx = torch.tensor([100 * micro_batch + 10 * rank, 100 * micro_batch + 10 * rank + 1])
            model(torch.randn(2, 3, 32, 32, generator=generator), ids, idx=idx).loss.backward()
        model.after_optimizer_step(0)
        if rank == 0:
            torch.save({"idx_queue": model.idx_queue.clone(), "ptr": model.queue_ptr.clone()}, result_file)
    finally:
        torch.distributed.destroy_process_group()


def test_duties_enqueue_every_process_features_in_rank_order(tmp_path):
    """Two gloo processes, two micro-batches each: the queue holds micro-batch 0 of ranks 0, 1, then micro-batch 1."""
    result = tmp_path / "result.pt"
    torch.multiprocessing.spawn(_enqueue_worker, args=(2, str(tmp_path / "init"), str(result)), nprocs=2)
    state = torch.load(result, weights_only=True)
    assert state["idx_queue"][0, :8].tolist() == [0, 1, 10, 11, 100, 101, 110, 111]
    assert int(state["ptr"]) == 8


# ---------------------------------------------------------------------------------------------------------------------
# ALBEF's own attention maps, backends and vocabulary state (the transformers conventions of every model class of every
# method, ALBEF's included, are checked in test_conventions.py)
# ---------------------------------------------------------------------------------------------------------------------


def eager(model_class, config):
    torch.manual_seed(0)
    return model_class._from_config(copy.deepcopy(config), attn_implementation="eager").eval()


def fusion_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "text_hidden_states": torch.randn(4, 9, 32, generator=generator),
        "attention_mask": batch["attention_mask"],
        "image_hidden_states": torch.randn(4, 5, 32, generator=generator),
    }


def test_text_tower_masks_padding(tiny_config, tiny_batch):
    out = eager(vlalign.AlbefTextModel, tiny_config.text_config)(
        tiny_batch["input_ids"], tiny_batch["attention_mask"], output_attentions=True, output_hidden_states=True
    )
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    assert (out.attentions[0][1, :, :, 6:] == 0).all()  # row 1 is padded from token 6 on


@pytest.mark.parametrize("model_class", [vlalign.AlbefForPreTraining, vlalign.AlbefForImageTextRetrieval])
def test_training_models_return_the_itm_fusion_maps(model_class, tiny_config, tiny_batch):
    with torch.no_grad():
        out = eager(model_class, tiny_config)(**tiny_batch, output_attentions=True)
    cross_attentions = out.fusion_model_output.cross_attentions
    assert cross_attentions[0].shape == (12, 2, 9, 5)  # one row per ITM pair: 4 positives, 8 negatives


def test_flex_attention_handles_padding_like_eager(tiny_batch):
    inputs = fusion_inputs(tiny_batch)
    outputs = []
    for implementation in ("eager", "flex_attention"):
        torch.manual_seed(0)
        model = AlbefFusionModel._from_config(tiny_albef_config().text_config, attn_implementation=implementation)
        with torch.no_grad():
            outputs.append(model.eval()(**inputs).last_hidden_state)
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=0)


def test_attention_backend_flags():
    assert vlalign.AlbefModel._supports_sdpa and vlalign.AlbefModel._supports_flex_attn
    assert not vlalign.AlbefModel._supports_flash_attn  # untested without a GPU, so not claimed


def test_resize_token_embeddings_zero_pads_the_mlm_biases(tiny_config, tiny_batch):
    """New vocabulary entries of the MLM heads' biases start at 0, the old ones are kept."""
    torch.manual_seed(0)
    model = vlalign.AlbefForPreTraining(tiny_config)
    with torch.no_grad():
        model.mlm_head.bias.add_(1.0)
    model.resize_token_embeddings(250)
    for head in (model.mlm_head, model.mlm_head_m):
        assert head.bias.shape == (250,) and (head.bias[245:] == 0).all()
    assert (model.mlm_head.bias[:245] == 1).all()
    model.momentum_update()  # the EMA runs over the resized pairs
    assert (model.mlm_head_m.bias[245:] == 0).all()
