"""Behaviour of the ALBEF model family: sizes, attention backends, checkpointing, objectives' edge cases, errors."""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch
from conftest import tiny_albef_config
from safetensors.torch import save_file
from transformers import AutoModel, AutoModelForPreTraining, PreTrainedModel
from transformers.utils.output_capturing import CompileableContextVar

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


def make_model(implementation: str, seed: int = 0) -> vlalign.AlbefForPreTraining:
    torch.manual_seed(seed)
    config = tiny_albef_config()  # one config per model: _from_config sets the backend on the config it is given
    return vlalign.AlbefForPreTraining._from_config(config, attn_implementation=implementation).train()


def test_sdpa_matches_eager(tiny_batch):
    eager = make_model("eager")
    sdpa = make_model("sdpa")
    sdpa.load_state_dict(eager.state_dict())
    assert sdpa.albef.text_model.config._attn_implementation == "sdpa"
    assert eager.fusion_model_m.config._attn_implementation == "eager"
    masked, labels = eager.mask_tokens(tiny_batch["input_ids"], torch.Generator().manual_seed(1))
    outputs = []
    for model in (eager, sdpa):
        with torch.no_grad():
            outputs.append(
                model(
                    **tiny_batch, mlm_input_ids=masked, mlm_labels=labels, generator=torch.Generator().manual_seed(2)
                )
            )
    for name in ("loss", "loss_itc", "loss_itm", "loss_mlm", "sim_i2t", "itm_logits", "mlm_logits"):
        torch.testing.assert_close(outputs[0][name], outputs[1][name], atol=1e-5, rtol=0)


def test_gradient_checkpointing_same_loss_and_gradients(tiny_batch):
    plain = make_model("sdpa")
    checkpointed = make_model("sdpa")
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.activation_checkpointing_enable({"use_reentrant": False})
    assert checkpointed.albef.fusion_model.layers[0].gradient_checkpointing
    masked, labels = plain.mask_tokens(tiny_batch["input_ids"], torch.Generator().manual_seed(1))
    losses = []
    for model in (plain, checkpointed):
        out = model(**tiny_batch, mlm_input_ids=masked, mlm_labels=labels, generator=torch.Generator().manual_seed(3))
        out.loss.backward()
        losses.append(out.loss.detach())
    torch.testing.assert_close(losses[0], losses[1], atol=1e-6, rtol=0)
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("model_class", [vlalign.AlbefForPreTraining, vlalign.AlbefForImageTextRetrieval])
def test_every_trainable_parameter_gets_a_finite_gradient(model_class, tiny_config, tiny_batch):
    torch.manual_seed(0)
    model = model_class(tiny_config).train()
    extra = {"idx": torch.tensor([0, 1, 1, 2])} if model_class is vlalign.AlbefForImageTextRetrieval else {}
    model(**tiny_batch, **extra).loss.backward()
    for name, parameter in model.named_parameters():
        if name.split(".")[0].endswith("_m"):
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


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


def test_save_and_reload_round_trip_with_auto_classes(tmp_path, tiny_config, tiny_batch):
    torch.manual_seed(0)
    model = vlalign.AlbefForPreTraining(tiny_config).eval()
    model.enqueue(torch.ones(3, 16), torch.ones(3, 16))
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(base, vlalign.AlbefModel)
    with torch.no_grad():
        expected = model.albef(**tiny_batch).logits_per_image
        torch.testing.assert_close(base(**tiny_batch).logits_per_image, expected)


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
# transformers conventions (the checks of transformers' ModelTesterMixin that apply to ALBEF)
# ---------------------------------------------------------------------------------------------------------------------

ALL_CLASSES = [
    vlalign.AlbefVisionModel,
    vlalign.AlbefTextModel,
    AlbefFusionModel,
    vlalign.AlbefModel,
    vlalign.AlbefForPreTraining,
    vlalign.AlbefForImageTextRetrieval,
    # CODIS is ALBEF plus a codebook: its classes must keep every convention
    vlalign.CodisModel,
    vlalign.CodisForPreTraining,
    vlalign.CodisForImageTextRetrieval,
]


def config_for(model_class, config: vlalign.AlbefConfig):
    if issubclass(model_class, vlalign.CodisPreTrainedModel):
        settings = {k: v for k, v in config.to_dict().items() if k in vlalign.CodisConfig.__dataclass_fields__}
        return vlalign.CodisConfig(**settings, codebook_size=8)
    if model_class is vlalign.AlbefVisionModel:
        return config.vision_config
    if model_class in (vlalign.AlbefTextModel, AlbefFusionModel):
        return config.text_config
    return config


def inputs_for(model_class, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if model_class is vlalign.AlbefVisionModel:
        return {"pixel_values": batch["pixel_values"]}
    if model_class is vlalign.AlbefTextModel:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if model_class is AlbefFusionModel:
        generator = torch.Generator().manual_seed(0)
        return {
            "text_hidden_states": torch.randn(4, 9, 32, generator=generator),
            "attention_mask": batch["attention_mask"],
            "image_hidden_states": torch.randn(4, 5, 32, generator=generator),
        }
    return dict(batch)


@pytest.mark.parametrize("model_class", ALL_CLASSES)
def test_main_input_name_is_the_first_forward_argument(model_class):
    assert model_class.main_input_name == list(inspect.signature(model_class.forward).parameters)[1]


@pytest.mark.parametrize("model_class", ALL_CLASSES)
def test_unknown_keyword_arguments_are_refused(model_class, tiny_config, tiny_batch):
    model = model_class(config_for(model_class, tiny_config))
    with pytest.raises(TypeError, match="unexpected keyword argument 'lables'"):
        model(**inputs_for(model_class, tiny_batch), lables=None)


@pytest.mark.parametrize("model_class", ALL_CLASSES)
def test_return_dict_false_returns_the_output_as_a_tuple(model_class, tiny_config, tiny_batch):
    torch.manual_seed(0)
    model = model_class(config_for(model_class, tiny_config)).eval()
    inputs = inputs_for(model_class, tiny_batch)

    def call(**kwargs):  # training models draw masks and negatives: give both calls the same generator
        seeded = {"generator": torch.Generator().manual_seed(0)} if hasattr(model, "loss_names") else {}
        with torch.no_grad():
            return model(**inputs, **seeded, **kwargs)

    as_dict, as_tuple = call(), call(return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple())
    for expected, actual in zip(as_dict.to_tuple(), as_tuple, strict=True):
        if isinstance(expected, torch.Tensor):
            torch.testing.assert_close(actual, expected)


def test_features_return_output_objects_and_tuples(tiny_config, tiny_batch):
    model = vlalign.AlbefModel(tiny_config).eval()
    image = model.get_image_features(tiny_batch["pixel_values"])
    text = model.get_text_features(tiny_batch["input_ids"], tiny_batch["attention_mask"])
    assert image.pooler_output.shape == text.pooler_output.shape == (4, 16)
    assert image.last_hidden_state.shape == (4, 5, 32) and text.last_hidden_state.shape == (4, 9, 32)
    assert isinstance(model.get_image_features(tiny_batch["pixel_values"], return_dict=False), tuple)


def eager(model_class, config):
    torch.manual_seed(0)
    return model_class._from_config(config_for(model_class, config), attn_implementation="eager").eval()


class TestOutputCapture:
    """`output_attentions` / `output_hidden_states` through transformers' `capture_outputs` hooks."""

    def test_vision_tower(self, tiny_config, tiny_batch):
        out = eager(vlalign.AlbefVisionModel, tiny_config)(
            tiny_batch["pixel_values"], output_attentions=True, output_hidden_states=True
        )
        assert len(out.attentions) == 2 and out.attentions[0].shape == (4, 2, 5, 5)
        assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (4, 5, 32)
        torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(4, 2, 5))

    def test_text_tower_masks_padding(self, tiny_config, tiny_batch):
        out = eager(vlalign.AlbefTextModel, tiny_config)(
            tiny_batch["input_ids"], tiny_batch["attention_mask"], output_attentions=True, output_hidden_states=True
        )
        assert len(out.attentions) == 2 and out.attentions[0].shape == (4, 2, 9, 9)
        assert len(out.hidden_states) == 3
        torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
        assert (out.attentions[0][1, :, :, 6:] == 0).all()  # row 1 is padded from token 6 on

    def test_fusion_tower_returns_cross_attention_maps(self, tiny_config, tiny_batch):
        inputs = inputs_for(AlbefFusionModel, tiny_batch)
        out = eager(AlbefFusionModel, tiny_config)(**inputs, output_attentions=True, output_hidden_states=True)
        assert len(out.attentions) == len(out.cross_attentions) == 2
        assert out.attentions[0].shape == (4, 2, 9, 9) and out.cross_attentions[0].shape == (4, 2, 9, 5)
        assert len(out.hidden_states) == 3

    def test_nothing_is_captured_unless_asked(self, tiny_config, tiny_batch):
        out = eager(vlalign.AlbefModel, tiny_config)(**tiny_batch)
        assert out.vision_model_output.attentions is None and out.text_model_output.hidden_states is None

    def test_config_flags_are_honoured(self, tiny_config, tiny_batch):
        model = eager(vlalign.AlbefModel, tiny_config)
        model.config.output_hidden_states = True
        assert len(model(**tiny_batch).vision_model_output.hidden_states) == 3

    @pytest.mark.parametrize("model_class", [vlalign.AlbefForPreTraining, vlalign.AlbefForImageTextRetrieval])
    def test_training_models_return_tower_and_itm_fusion_maps(self, model_class, tiny_config, tiny_batch):
        with torch.no_grad():
            out = eager(model_class, tiny_config)(**tiny_batch, output_attentions=True, output_hidden_states=True)
        assert len(out.vision_model_output.attentions) == 2 and len(out.text_model_output.hidden_states) == 3
        fusion = out.fusion_model_output
        assert fusion.cross_attentions[0].shape == (12, 2, 9, 5)  # one row per ITM pair: 4 positives, 8 negatives
        assert len(fusion.attentions) == 2

    def test_captures_are_not_chained(self, tiny_config, tiny_batch, monkeypatch):
        """transformers forbids nested `capture_outputs` collecting the same output (they would mix)."""
        depth = {"active": 0}
        original_set, original_reset = CompileableContextVar.set, CompileableContextVar.reset

        def tracking_set(self, value):
            if value and depth["active"]:
                raise AssertionError("capture_outputs chained")
            depth["active"] += bool(value)
            return original_set(self, value)

        def tracking_reset(self, token):
            depth["active"] -= bool(self.context_var.get())
            return original_reset(self, token)

        monkeypatch.setattr(CompileableContextVar, "set", tracking_set)
        monkeypatch.setattr(CompileableContextVar, "reset", tracking_reset)
        with torch.no_grad():
            eager(vlalign.AlbefForPreTraining, tiny_config)(
                **tiny_batch, output_attentions=True, output_hidden_states=True
            )


def test_flex_attention_handles_padding_like_eager(tiny_config, tiny_batch):
    inputs = inputs_for(AlbefFusionModel, tiny_batch)
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


class TestInitialisation:
    @pytest.fixture
    def seeded_init(self, monkeypatch):
        """Reseed before every module's init (as transformers' tests do), so the order of init does not matter."""
        original = PreTrainedModel._initialize_weights

        def seeded(*args, **kwargs):
            torch.manual_seed(42)
            original(*args, **kwargs)

        monkeypatch.setattr(PreTrainedModel, "_initialize_weights", seeded)

    @pytest.mark.parametrize("model_class", ALL_CLASSES)
    def test_init_weights_covers_every_parameter_and_buffer(self, model_class, tiny_config, seeded_init):
        config = config_for(model_class, tiny_config)
        from_init = model_class(copy.deepcopy(config))
        from_nothing = model_class.from_pretrained(None, config=copy.deepcopy(config), state_dict={})
        for key, value in from_init.state_dict().items():
            assert torch.equal(from_nothing.state_dict()[key], value), key

    @pytest.mark.parametrize(
        "model_class", [vlalign.AlbefVisionModel, vlalign.AlbefForPreTraining, vlalign.CodisForPreTraining]
    )
    def test_meta_device_model_initialises_everything(self, model_class, tiny_config):
        config = config_for(model_class, tiny_config)
        with torch.device("meta"):
            model = model_class(copy.deepcopy(config))
        model.to_empty(device="cpu")
        for tensor in [*model.parameters(), *model.buffers()]:  # what uninitialised memory may hold
            tensor.data.fill_(float("nan") if tensor.is_floating_point() else -7)
        model.init_weights()
        fresh = model_class(copy.deepcopy(config))
        for key, value in model.state_dict().items():
            assert torch.isfinite(value.float()).all(), key
            if not value.is_floating_point() or value.numel() == 1:  # pointers, indices, temperature: exact
                assert torch.equal(value, fresh.state_dict()[key]), key
            elif value.std() > 0:  # random tensors: same distribution as a fresh model
                assert value.std().item() == pytest.approx(fresh.state_dict()[key].std().item(), rel=0.5), key

    def test_missing_patch_embedding_is_initialised_from_its_distribution(self, tmp_path, tiny_config):
        torch.manual_seed(0)
        model = vlalign.AlbefModel(tiny_config)
        state = {k: v for k, v in model.state_dict().items() if "patch_embedding" not in k}
        model.save_pretrained(tmp_path)
        save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
        loaded = vlalign.AlbefModel.from_pretrained(tmp_path)
        conv = loaded.vision_model.embeddings.patch_embedding
        bound = 1 / math.sqrt(conv.weight[0].numel())
        assert (
            torch.isfinite(conv.weight).all() and conv.weight.abs().max() <= bound and conv.bias.abs().max() <= bound
        )
        assert conv.weight.std() > bound / 4  # not left at zero


def test_resize_token_embeddings_resizes_momentum_copies_and_mlm_biases(tiny_config, tiny_batch):
    torch.manual_seed(0)
    model = vlalign.AlbefForPreTraining(tiny_config)
    momentum_rows = model.text_model_m.embeddings.word_embeddings.weight[:245].detach().clone()
    with torch.no_grad():
        model.mlm_head.bias.add_(1.0)
    model.resize_token_embeddings(250)
    online = model.albef.get_input_embeddings().weight
    momentum = model.text_model_m.embeddings.word_embeddings.weight
    assert online.shape == momentum.shape == (250, 32) and not momentum.requires_grad
    torch.testing.assert_close(momentum[:245], momentum_rows)
    torch.testing.assert_close(momentum[245:], online[245:].detach())
    for head in (model.mlm_head, model.mlm_head_m):
        assert head.bias.shape == (250,) and (head.bias[245:] == 0).all()
    assert (model.mlm_head.bias[:245] == 1).all() and model.mlm_head.bias.requires_grad
    assert not model.mlm_head_m.bias.requires_grad
    assert model.config.text_config.vocab_size == 250
    model.momentum_update()
    ids = tiny_batch["input_ids"].clone()
    ids[:, 3] = 249
    out = model(**{**tiny_batch, "input_ids": ids})
    assert out.mlm_logits.shape[-1] == 250 and torch.isfinite(out.loss)
