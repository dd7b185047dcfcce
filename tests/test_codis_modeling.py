"""CODIS model behaviour: the config and each of its switches, the codebook and its per-step duties, every loss
against a computation by hand (with an independent Sinkhorn), retrieval fine-tuning, loading ALBEF layouts and the
ALBEF → CODIS converter. Registry-wide checks (save/load, Auto classes, remote code, pipelines) are in
test_methods.py."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import ALBEF_FIXTURES, run_cli
from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers import AutoModelForPreTraining, AutoProcessor, TrainerCallback

import vlalign
from vlalign.convert.codis import convert_albef_to_codis
from vlalign.data.collator import AlignmentCollator
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.models import (
    AlbefConfig,
    CodisConfig,
    CodisForImageTextRetrieval,
    CodisForPreTraining,
    CodisModel,
)
from vlalign.models.configuration_albef import AlbefTextConfig, AlbefVisionConfig
from vlalign.recipes import dataset_captions
from vlalign.recipes.albef import tiny_albef_config
from vlalign.recipes.codis import build_codis_tokenizer, codis_processor, tiny_codis_config
from vlalign.training.optim import albef_parameter_groups
from vlalign.training.trainer import AlignmentTrainer, AlignmentTrainingArguments

IMAGE_SIZE = 32
ALBEF_SIZES = dict(
    width=32, num_heads=2, vision_layers=1, text_layers=2, fusion_layer=1, patch_size=16, embed_dim=16, queue_size=16
)
CODEBOOK_SIZE = 12
ORIGINAL = ALBEF_FIXTURES / "original"
LOSS_TERMS = ("loss_align", "loss_code", "loss_ot", "loss_itm", "loss_mlm")


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic_dataset(num_train=16, num_validation=0, num_test=0, image_size=IMAGE_SIZE, seed=5)


@pytest.fixture(scope="module")
def processor(dataset):
    return codis_processor(build_codis_tokenizer(dataset_captions(dataset)), IMAGE_SIZE)


@pytest.fixture(scope="module")
def collator(processor):
    return AlignmentCollator(processor, preset="pretrain", text_column="captions")


@pytest.fixture(scope="module")
def batch(dataset, collator):
    return collator([dataset["train"][i] for i in range(4)])


@pytest.fixture(scope="module")
def other_batch(dataset, collator):
    return collator([dataset["train"][i] for i in range(4, 8)])


def codis_config(tokenizer, **overrides) -> CodisConfig:
    return tiny_codis_config(tokenizer, IMAGE_SIZE, **{**ALBEF_SIZES, "codebook_size": CODEBOOK_SIZE, **overrides})


def build(processor, model_class=CodisForPreTraining, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return model_class(codis_config(processor.tokenizer, **overrides)).train()


def variant(model, **overrides):
    """A model with the same weights, buffers and class under other config settings."""
    config = CodisConfig.from_dict({**model.config.to_dict(), **overrides})
    other = type(model)(config).train()
    other.load_state_dict(model.state_dict())
    return other


def run(model, batch, **kwargs):
    """A forward whose random draws (MLM masking, ITM negatives) are the same every time."""
    return model(**batch, generator=torch.Generator().manual_seed(1), **kwargs)


def decouple_teacher(model) -> None:
    """Move the momentum projections away from the online ones, so that teacher and student features differ (at
    construction the momentum encoders are exact copies)."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for linear in (model.vision_proj_m, model.text_proj_m):
            linear.weight.add_(0.5 * torch.randn(linear.weight.shape, generator=generator))


def albef_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CODIS state dict in ALBEF's names (the online model under `albef.`), without the codebook."""
    return {
        re.sub(r"^codis\.", "albef.", key): value
        for key, value in state.items()
        if not key.startswith("codis.codebook.")
    }


def codis_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An ALBEF state dict in CODIS's names (the online model under `codis.`)."""
    return {re.sub(r"^albef\.", "codis.", key): value for key, value in state.items()}


def normalized_codebook(model, name: str = "codis.codebook") -> torch.Tensor:
    return F.normalize(model.get_submodule(name).prototypes.detach(), dim=-1)


def reference_sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """SwAV's direct Sinkhorn-Knopp in float64 (prototype step, then sample step), rows rescaled to sum to 1: an
    implementation independent of the model's log-domain one."""
    q = torch.exp((scores.double() - scores.max().double()) / epsilon).t()  # [K, N]
    q = q / q.sum()
    num_prototypes, num_samples = q.shape
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / num_prototypes
        q = q / q.sum(dim=0, keepdim=True) / num_samples
    return (q * num_samples).t().float()


def transport_cost(scores: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
    return (plan * (1 - scores)).sum(dim=1).mean()


def soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def close(actual, expected, **tolerances) -> None:
    torch.testing.assert_close(actual, expected, **({"rtol": 1e-5, "atol": 1e-6} | tolerances))


def differs(first, second, by: float = 1e-4) -> bool:
    return (first - second).abs().max().item() > by


def assert_unit_rows(prototypes: torch.Tensor) -> None:
    norms = prototypes.detach().norm(dim=-1)
    close(norms, torch.ones_like(norms), rtol=0, atol=1e-6)


def loop_step(model, optimizer, batch, step: int) -> None:
    """One optimizer step of a hand-written loop, with the model's duties around `optimizer.step()`."""
    run(model, batch).loss.backward()
    model.before_optimizer_step(step)
    optimizer.step()
    model.after_optimizer_step(step)
    optimizer.zero_grad()


def adamw(model, lr: float = 1e-2) -> torch.optim.AdamW:
    return torch.optim.AdamW(albef_parameter_groups(model, 0.02), lr=lr)


# ---------------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------------


def test_config_defaults_follow_the_spec():
    config = CodisConfig()
    expected = dict(
        codebook_size=3000,
        prototype_temperature=0.1,
        momentum_codebook=False,
        sinkhorn_epsilon=0.05,
        sinkhorn_iterations=3,
        sinkhorn_use_queue=False,
        sinkhorn_queue_rows=3584,
        sinkhorn_joint=False,
        code_loss_type="swapped_prediction",
        code_loss_weight=1.0,
        code_loss_reduction="sum",
        code_loss_warmup_steps=0,
        ot_loss_weight=1.0,
        ot_plan_source="student",
        align_intra_modal=True,
        align_reduction="mean",
        intra_soft_targets=False,
        intra_modal_negatives="queue",
        teacher_image_view="same",
        freeze_codebook_steps=0,
        finetune_objective="codis",
    )
    assert {name: getattr(config, name) for name in expected} == expected
    assert config.model_type == "codis" and isinstance(config, AlbefConfig)
    assert config.codebook_dim == config.embed_dim == 256
    assert CodisConfig(embed_dim=32).codebook_dim == 32
    assert CodisConfig(embed_dim=32, codebook_dim=32).codebook_dim == 32
    with pytest.raises(ValueError, match="embed_dim=256"):
        CodisConfig(codebook_dim=128)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(code_loss_type="swav"), "code_loss_type"),
        (dict(code_loss_reduction="max"), "code_loss_reduction"),
        (dict(ot_plan_source="prototypes"), "ot_plan_source"),
        (dict(align_reduction="max"), "align_reduction"),
        (dict(intra_modal_negatives="all"), "intra_modal_negatives"),
        (dict(teacher_image_view="other"), "teacher_image_view"),
        (dict(finetune_objective="clip"), "finetune_objective"),
        (dict(code_loss_weight=-1.0), "code_loss_weight must be >= 0"),
        (dict(ot_loss_weight=-0.5), "ot_loss_weight must be >= 0"),
        (dict(code_loss_warmup_steps=-1), "code_loss_warmup_steps must be >= 0"),
        (dict(freeze_codebook_steps=-1), "freeze_codebook_steps must be >= 0"),
        (dict(codebook_size=0), "codebook_size must be positive"),
        (dict(prototype_temperature=0.0), "prototype_temperature must be positive"),
        (dict(sinkhorn_epsilon=-0.05), "sinkhorn_epsilon must be positive"),
        (dict(sinkhorn_iterations=0), "sinkhorn_iterations must be positive"),
        (dict(sinkhorn_use_queue=True, queue_size=16, sinkhorn_queue_rows=32), "sinkhorn_queue_rows=32"),
        (dict(sinkhorn_use_queue=True, queue_size=16, sinkhorn_queue_rows=0), "sinkhorn_queue_rows=0"),
    ],
)
def test_invalid_settings_are_rejected(overrides, message):
    with pytest.raises((ValueError, StrictDataclassFieldValidationError), match=message):
        CodisConfig(**overrides)


def test_switching_terms_off_and_unused_queue_rows_are_valid():
    config = CodisConfig(code_loss_weight=0.0, ot_loss_weight=0.0, queue_size=16)  # queue rows unused: no check
    assert config.code_loss_weight == config.ot_loss_weight == 0.0 and config.sinkhorn_queue_rows == 3584
    # weights and temperatures written as integers are accepted (as transformers' `int | float` fields)
    config = CodisConfig(code_loss_weight=0, ot_loss_weight=2, prototype_temperature=1, sinkhorn_epsilon=1)
    assert (config.code_loss_weight, config.ot_loss_weight) == (0, 2)


def test_config_round_trips_through_a_dict(processor):
    settings = dict(
        code_loss_type="assignment_contrast",
        code_loss_weight=0.5,
        code_loss_reduction="mean",
        code_loss_warmup_steps=7,
        ot_loss_weight=2.0,
        ot_plan_source="teacher",
        align_intra_modal=False,
        align_reduction="sum",
        intra_soft_targets=True,
        intra_modal_negatives="batch",
        teacher_image_view="augmented",
        freeze_codebook_steps=3,
        finetune_objective="albef",
        momentum_codebook=True,
        sinkhorn_use_queue=True,
        sinkhorn_queue_rows=8,
        sinkhorn_joint=True,
        sinkhorn_epsilon=0.03,
        sinkhorn_iterations=5,
        prototype_temperature=0.2,
    )
    config = codis_config(processor.tokenizer, alpha=0.3, momentum=0.9, **settings)
    data = config.to_dict()
    assert data["model_type"] == "codis"
    again = CodisConfig.from_dict(data)
    assert again.to_dict() == data
    assert {name: getattr(again, name) for name in settings} == settings
    assert again.codebook_size == CODEBOOK_SIZE and again.codebook_dim == again.embed_dim == 16


def test_albef_fields_keep_their_meaning():
    config = CodisConfig(
        embed_dim=64,
        queue_size=1024,
        momentum=0.99,
        alpha=0.2,
        vision_config=dict(image_size=128, hidden_size=64),
        text_config=dict(num_hidden_layers=6, fusion_layer=3),
    )
    assert (config.embed_dim, config.queue_size, config.momentum, config.alpha) == (64, 1024, 0.99, 0.2)
    assert isinstance(config.vision_config, AlbefVisionConfig) and isinstance(config.text_config, AlbefTextConfig)
    assert config.vision_config.image_size == 128 and config.text_config.fusion_layer == 3
    assert config.text_config.encoder_width == 64  # ALBEF's own post-init still runs
    assert config.codebook_dim == 64
    with pytest.raises(ValueError, match="fusion_layer"):
        CodisConfig(text_config=dict(num_hidden_layers=4, fusion_layer=6))


# ---------------------------------------------------------------------------------------------------------------------
# Codebook and training duties
# ---------------------------------------------------------------------------------------------------------------------


def test_codebook_starts_as_distinct_unit_rows(processor):
    prototypes = build(processor).base_model.codebook.prototypes
    assert prototypes.shape == (CODEBOOK_SIZE, 16) and prototypes.requires_grad
    assert_unit_rows(prototypes)
    cosines = prototypes.detach() @ prototypes.detach().t()
    assert (cosines - torch.eye(CODEBOOK_SIZE)).abs().max() < 0.99


def test_codebook_is_kept_out_of_weight_decay(processor):
    model = build(processor)
    decay, no_decay = albef_parameter_groups(model, 0.02)
    assert "codis.codebook.prototypes" in no_decay["param_names"]
    assert "codis.codebook.prototypes" not in decay["param_names"]
    assert any(p is model.base_model.codebook.prototypes for p in no_decay["params"]) and no_decay["weight_decay"] == 0
    assert "codis.vision_proj.weight" in decay["param_names"]  # other matrices keep ALBEF's rule


def test_hand_written_loop_keeps_the_codebook_on_the_sphere(processor, batch):
    model = build(processor)
    prototypes = model.base_model.codebook.prototypes
    initial = prototypes.detach().clone()
    optimizer = adamw(model)
    for step in range(3):
        run(model, batch).loss.backward()
        assert prototypes.grad is not None and prototypes.grad.abs().sum() > 0
        model.before_optimizer_step(step)
        optimizer.step()
        assert (prototypes.detach().norm(dim=-1) - 1).abs().max() > 1e-4  # the optimizer leaves the sphere...
        model.after_optimizer_step(step)
        assert_unit_rows(prototypes)  # ...and the duty puts every row back on it
        optimizer.zero_grad()
    assert differs(prototypes.detach(), initial, by=1e-3)


def test_a_loop_that_skips_the_duties_is_refused(processor, batch):
    model = build(processor)
    optimizer = adamw(model)
    run(model, batch).loss.backward()
    model.before_optimizer_step(0)
    optimizer.step()  # no after_optimizer_step: no re-normalisation, EMA or enqueue
    with pytest.raises(RuntimeError, match="codebook re-normalisation"):
        run(model, batch)
    with torch.no_grad():  # inference forwards are not training
        run(model, batch)


def test_frozen_codebook_holds_still_for_the_first_steps(processor, batch):
    model = build(processor, freeze_codebook_steps=2)
    prototypes, projection = model.base_model.codebook.prototypes, model.base_model.vision_proj.weight
    codebooks, projections = [prototypes.detach().clone()], [projection.detach().clone()]
    optimizer = adamw(model)
    for step in range(3):
        loop_step(model, optimizer, batch, step)
        codebooks.append(prototypes.detach().clone())
        projections.append(projection.detach().clone())
    close(codebooks[1], codebooks[0], rtol=0, atol=1e-6)  # step 0
    close(codebooks[2], codebooks[0], rtol=0, atol=1e-6)  # step 1
    assert differs(codebooks[3], codebooks[2], by=1e-3)  # step 2 trains it
    assert differs(projections[1], projections[0], by=1e-3)  # while the rest trained from step 0


class _RecordCodebook(TrainerCallback):
    def __init__(self, model):
        self.model, self.codebooks = model, []

    def on_step_end(self, args, state, control, **kwargs):
        self.codebooks.append(self.model.base_model.codebook.prototypes.detach().clone())


def test_alignment_trainer_runs_the_codebook_duties_and_logs_its_health(processor, dataset, collator, tmp_path):
    model = build(processor, freeze_codebook_steps=1)
    initial = model.base_model.codebook.prototypes.detach().clone()
    record = _RecordCodebook(model)
    args = AlignmentTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2, logging_steps=1,
        report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no", dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    trainer = AlignmentTrainer(
        model=model, args=args, train_dataset=dataset["train"], data_collator=collator, callbacks=[record]
    )
    trainer.train()
    # the trainer hands the duties the same step numbers as a hand-written loop: step 0 is frozen, step 1 is not
    assert len(record.codebooks) == 2
    close(record.codebooks[0], initial, rtol=0, atol=1e-6)
    assert differs(record.codebooks[1], initial, by=1e-3)
    assert_unit_rows(model.base_model.codebook.prototypes)

    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2
    health = ("codebook_usage_image", "codebook_usage_text", "assignment_entropy", "code_agreement")
    for entry in logged:
        assert {*health, "loss_align", "loss_code", "loss_ot", "loss_itm", "loss_mlm"} <= set(entry), entry
        assert 0 < entry["codebook_usage_image"] <= 1 and 0 < entry["codebook_usage_text"] <= 1
        assert 0 <= entry["code_agreement"] <= 1
        assert 0 <= entry["assignment_entropy"] <= math.log(CODEBOOK_SIZE) + 1e-4


def test_codebook_health_is_measured_on_the_teacher_plans(processor, batch):
    model = build(processor)
    decouple_teacher(model)
    outputs = run(model, batch)
    stats = model.training_log_values()
    plan_image, plan_text = outputs.transport_i2p, outputs.transport_t2p
    codes_image, codes_text = plan_image.argmax(dim=1), plan_text.argmax(dim=1)
    assert stats["codebook_usage_image"] == pytest.approx(len(set(codes_image.tolist())) / CODEBOOK_SIZE)
    assert stats["codebook_usage_text"] == pytest.approx(len(set(codes_text.tolist())) / CODEBOOK_SIZE)
    assert stats["code_agreement"] == pytest.approx((codes_image == codes_text).float().mean().item())
    plans = torch.cat([plan_image, plan_text]).double()
    entropy = -torch.special.xlogy(plans, plans).sum(dim=1).mean().item()
    assert stats["assignment_entropy"] == pytest.approx(entropy, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Loss weights and the total
# ---------------------------------------------------------------------------------------------------------------------


def weighted_total(outputs, code: float = 1.0, ot: float = 1.0) -> torch.Tensor:
    return outputs.loss_align + code * outputs.loss_code + ot * outputs.loss_ot + outputs.loss_itm + outputs.loss_mlm


@pytest.mark.parametrize("code, ot", [(1.0, 1.0), (0.5, 2.0)])
def test_total_loss_is_the_weighted_sum_of_the_named_losses(processor, batch, code, ot):
    model = build(processor, code_loss_weight=code, ot_loss_weight=ot)
    assert model.loss_names == LOSS_TERMS
    outputs = run(model, batch)
    for name in LOSS_TERMS:
        assert outputs[name] is not None and torch.isfinite(outputs[name]), name
    close(outputs.loss, weighted_total(outputs, code, ot))


def test_code_loss_warmup_ramps_its_weight(processor, batch):
    model = build(processor, code_loss_warmup_steps=10, code_loss_weight=2.0)
    for step, weight in [(0, 0.0), (5, 1.0), (10, 2.0), (11, 2.0)]:
        model.set_training_progress(step, 100)
        assert model.loss_weight("loss_code") == pytest.approx(weight), step
        assert model.loss_weight("loss_ot") == 1.0
        outputs = run(model, batch)
        close(outputs.loss, weighted_total(outputs, code=weight))


# ---------------------------------------------------------------------------------------------------------------------
# Switches
# ---------------------------------------------------------------------------------------------------------------------


def test_ot_loss_off(processor, batch):
    outputs = run(build(processor, ot_loss_weight=0.0), batch)
    assert outputs.loss_ot is None and outputs.loss_code is not None
    close(outputs.loss, outputs.loss_align + outputs.loss_code + outputs.loss_itm + outputs.loss_mlm)


def test_code_loss_off(processor, batch):
    outputs = run(build(processor, code_loss_weight=0.0), batch)
    for name in ("loss_code", "loss_t2p", "loss_i2p", "transport_i2p", "transport_t2p", "code_logits_image"):
        assert getattr(outputs, name) is None, name
    assert outputs.loss_ot is not None
    close(outputs.loss, outputs.loss_align + outputs.loss_ot + outputs.loss_itm + outputs.loss_mlm)


def test_without_codebook_and_intra_modal_terms_codis_is_albef(processor, batch):
    """Spec §10.4.10: the three switches off give the ALBEF port's loss bit for bit."""
    codis = build(processor, code_loss_weight=0.0, ot_loss_weight=0.0, align_intra_modal=False)
    albef = vlalign.AlbefForPreTraining(tiny_albef_config(processor.tokenizer, IMAGE_SIZE, **ALBEF_SIZES)).train()
    albef.load_state_dict(albef_keys(codis.state_dict()))
    ours, theirs = run(codis, batch), run(albef, batch)
    for name in ("loss", "loss_itc", "loss_itm", "loss_mlm"):
        assert torch.equal(ours[name], theirs[name]), name


def test_swapped_prediction_by_hand(processor, batch):
    model = build(processor)
    decouple_teacher(model)
    outputs = run(model, batch)
    prototypes = normalized_codebook(model)
    logits_image = outputs.image_feat.detach() @ prototypes.t() / 0.1
    logits_text = outputs.text_feat.detach() @ prototypes.t() / 0.1
    close(outputs.code_logits_image.detach(), logits_image)
    close(outputs.code_logits_text.detach(), logits_text)
    assert not outputs.transport_i2p.requires_grad and not outputs.transport_t2p.requires_grad
    loss_t2p = soft_ce(logits_text, outputs.transport_i2p)  # text student predicts the image teacher's code
    loss_i2p = soft_ce(logits_image, outputs.transport_t2p)
    close(outputs.loss_t2p.detach(), loss_t2p)
    close(outputs.loss_i2p.detach(), loss_i2p)
    close(outputs.loss_code.detach(), loss_t2p + loss_i2p)
    assert differs(loss_t2p, soft_ce(logits_text, outputs.transport_t2p))  # the swap matters here
    mean = run(variant(model, code_loss_reduction="mean"), batch)
    close(mean.loss_code.detach(), (loss_t2p + loss_i2p) / 2)
    # gradients reach the codebook and the student projections, never the momentum encoders
    outputs.loss_code.backward()
    assert model.base_model.codebook.prototypes.grad.abs().sum() > 0
    assert model.base_model.text_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for m in model.momentum_modules() for p in m.parameters())


@pytest.mark.parametrize("source", ["student", "teacher"])
def test_ot_loss_is_the_transport_cost_under_its_plans(processor, batch, source):
    model = build(processor, ot_plan_source=source)
    decouple_teacher(model)
    outputs = run(model, batch)
    prototypes = normalized_codebook(model)
    student = [outputs.image_feat.detach() @ prototypes.t(), outputs.text_feat.detach() @ prototypes.t()]
    teacher = [outputs.image_feat_m @ prototypes.t(), outputs.text_feat_m @ prototypes.t()]
    teacher_plans = [outputs.transport_i2p, outputs.transport_t2p]
    for plan, scores in zip(teacher_plans, teacher, strict=True):  # the targets are Sinkhorn of the teacher scores
        close(plan, reference_sinkhorn(scores))
        close(plan.sum(dim=1), torch.ones(4))
    plans = {"student": [reference_sinkhorn(s) for s in student], "teacher": teacher_plans}

    def cost(source_plans):
        return sum(transport_cost(s, p) for s, p in zip(student, source_plans, strict=True))

    close(outputs.loss_ot.detach(), cost(plans[source]))
    assert differs(cost(plans["student"]), cost(plans["teacher"]), by=1e-3)  # the two sources disagree here


def test_intra_modal_terms_off(processor, batch):
    outputs = run(build(processor, align_intra_modal=False), batch)
    assert outputs.loss_i2i is None and outputs.loss_t2t is None
    assert torch.equal(outputs.loss_align, outputs.loss_itc)


def test_alignment_reduction(processor, batch):
    model = build(processor)
    mean = run(model, batch)
    four = mean.loss_i2t + mean.loss_t2i + mean.loss_i2i + mean.loss_t2t
    close(mean.loss_align, four / 4)
    close(mean.loss_itc, (mean.loss_i2t + mean.loss_t2i) / 2)
    summed = run(variant(model, align_reduction="sum"), batch)
    close(summed.loss_align, four)
    close(summed.loss, weighted_total(summed))


def test_intra_modal_negatives_from_the_queue_or_the_batch(processor, batch, other_batch):
    model = build(processor)
    run(model, other_batch)
    model.after_optimizer_step(0)  # the other batch's teacher features enter the queues
    assert int(model.queue_ptr) == 4
    with_queue = run(model, batch)
    batch_only = run(variant(model, intra_modal_negatives="batch"), batch)
    temp, targets = model.base_model.temp.detach(), torch.arange(4)
    for name, feat, feat_m, queue in [
        ("loss_i2i", with_queue.image_feat, with_queue.image_feat_m, model.image_queue),
        ("loss_t2t", with_queue.text_feat, with_queue.text_feat_m, model.text_queue),
    ]:
        feat = feat.detach()
        close(batch_only[name].detach(), F.cross_entropy(feat @ feat_m.t() / temp, targets))
        bank = torch.cat([feat_m.t(), queue], dim=1)
        close(with_queue[name].detach(), F.cross_entropy(feat @ bank / temp, targets))
        assert differs(with_queue[name], batch_only[name]), name


def test_intra_modal_soft_targets(processor, batch):
    model = build(processor)
    decouple_teacher(model)
    soft_model = variant(model, intra_soft_targets=True)
    hard, soft = run(model, batch, alpha=0.4), run(soft_model, batch, alpha=0.4)
    temp = model.base_model.temp.detach()
    bank = torch.cat([hard.image_feat_m.t(), model.image_queue], dim=1)
    one_hot = F.one_hot(torch.arange(4), bank.shape[1]).float()
    logits = hard.image_feat.detach() @ bank / temp
    close(hard.loss_i2i.detach(), soft_ce(logits, one_hot))
    targets = 0.4 * F.softmax(hard.image_feat_m @ bank / temp, dim=1) + 0.6 * one_hot
    close(soft.loss_i2i.detach(), soft_ce(logits, targets))
    assert differs(soft.loss_i2i, hard.loss_i2i)
    close(hard.loss_i2t, soft.loss_i2t)  # the cross-modal terms distil either way
    # without distillation there is nothing to mix in
    close(run(soft_model, batch, alpha=0.0).loss_i2i, run(model, batch, alpha=0.0).loss_i2i)


def test_recent_queue_columns_wrap_around_the_pointer(processor):
    model = build(processor, sinkhorn_use_queue=True, sinkhorn_queue_rows=8)
    model.queue_ptr.fill_(3)
    assert model._recent_queue_columns(8).tolist() == [11, 12, 13, 14, 15, 0, 1, 2]
    model.queue_ptr.fill_(12)
    assert model._recent_queue_columns(8).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    model.queue_ptr.fill_(0)
    assert model._recent_queue_columns(8).tolist() == [8, 9, 10, 11, 12, 13, 14, 15]


def test_sinkhorn_over_the_most_recent_queue_rows(processor, batch):
    model = build(processor, sinkhorn_use_queue=True, sinkhorn_queue_rows=8)
    decouple_teacher(model)
    model.queue_ptr.fill_(3)
    recent, older = [11, 12, 13, 14, 15, 0, 1, 2], list(range(3, 11))
    with_queue = run(model, batch)
    batch_only = run(variant(model, sinkhorn_use_queue=False), batch)
    prototypes = normalized_codebook(model)
    for plan, plan_batch_only, feat_m, queue in [
        (with_queue.transport_i2p, batch_only.transport_i2p, with_queue.image_feat_m, model.image_queue),
        (with_queue.transport_t2p, batch_only.transport_t2p, with_queue.text_feat_m, model.text_queue),
    ]:
        assert plan.shape == (4, CODEBOOK_SIZE)  # only the batch rows are targets

        def plan_with(columns, feat_m=feat_m, queue=queue):
            return reference_sinkhorn(torch.cat([feat_m, queue[:, columns].t()]) @ prototypes.t())[:4]

        close(plan, plan_with(recent))
        close(plan.sum(dim=1), torch.ones(4))
        assert differs(plan, plan_with(older))
        close(plan_batch_only, reference_sinkhorn(feat_m @ prototypes.t()))
        assert differs(plan, plan_batch_only)


def test_joint_sinkhorn(processor, batch):
    model = build(processor)
    decouple_teacher(model)
    separate = run(model, batch)
    joint = run(variant(model, sinkhorn_joint=True), batch)
    prototypes = normalized_codebook(model)
    scores = torch.cat([joint.image_feat_m, joint.text_feat_m]) @ prototypes.t()
    plans = torch.cat([joint.transport_i2p, joint.transport_t2p])
    close(plans, reference_sinkhorn(scores))
    close(plans.sum(dim=1), torch.ones(8))
    assert differs(joint.transport_i2p, separate.transport_i2p)
    assert differs(joint.transport_t2p, separate.transport_t2p)


def test_momentum_codebook(processor, batch, tmp_path):
    model = build(processor, momentum_codebook=True)
    online, ema = model.base_model.codebook.prototypes, model.codebook_m.prototypes
    assert not ema.requires_grad and torch.equal(ema, online)  # starts as a frozen copy, like the other pairs
    names = [name for group in albef_parameter_groups(model, 0.02) for name in group["param_names"]]
    assert "codis.codebook.prototypes" in names and not any("codebook_m" in name for name in names)
    assert not hasattr(build(processor), "codebook_m")

    with torch.no_grad():  # make the copies differ: the teacher plans are scored against the EMA codebook
        ema.add_(0.3 * torch.randn(ema.shape, generator=torch.Generator().manual_seed(3)))
    outputs = run(model, batch)
    close(
        outputs.transport_i2p, reference_sinkhorn(outputs.image_feat_m @ normalized_codebook(model, "codebook_m").t())
    )
    assert differs(outputs.transport_i2p, reference_sinkhorn(outputs.image_feat_m @ normalized_codebook(model).t()))

    before = ema.detach().clone()
    optimizer = adamw(model)
    outputs.loss.backward()
    model.before_optimizer_step(0)
    optimizer.step()
    model.after_optimizer_step(0)
    momentum = model.config.momentum
    close(ema.detach(), momentum * before + (1 - momentum) * online.detach())
    assert differs(ema.detach(), before, by=1e-5)

    model.save_pretrained(tmp_path)
    reloaded = CodisForPreTraining.from_pretrained(tmp_path)
    assert torch.equal(reloaded.codebook_m.prototypes, ema) and not reloaded.codebook_m.prototypes.requires_grad
    assert torch.equal(reloaded.base_model.codebook.prototypes, online)


def test_momentum_codebook_missing_from_a_checkpoint_starts_as_a_copy(processor, tmp_path):
    """Switching the EMA codebook on for a checkpoint saved without it (a CODIS run without it, an ALBEF conversion):
    like every momentum module at construction, it must start equal to the loaded online codebook, else the teacher
    plans score against unrelated random prototypes until the EMA catches up."""
    model = build(processor)
    model.save_pretrained(tmp_path)
    reloaded = CodisForPreTraining.from_pretrained(tmp_path, momentum_codebook=True)
    assert torch.equal(reloaded.base_model.codebook.prototypes, model.base_model.codebook.prototypes)
    assert not reloaded.codebook_m.prototypes.requires_grad
    assert torch.equal(reloaded.codebook_m.prototypes, reloaded.base_model.codebook.prototypes)


def test_augmented_teacher_view(processor, batch):
    model = build(processor, teacher_image_view="augmented")
    with pytest.raises(ValueError, match="pixel_values_teacher"):
        run(model, batch)
    teacher_pixels = batch["pixel_values"].flip(-1)
    augmented = run(model, batch, pixel_values_teacher=teacher_pixels)
    with torch.no_grad():
        cls = model.vision_model_m(teacher_pixels).last_hidden_state[:, 0]
        expected = F.normalize(model.vision_proj_m(cls), dim=-1)
    close(augmented.image_feat_m, expected)
    same = run(variant(model, teacher_image_view="same"), batch)
    assert differs(augmented.image_feat_m, same.image_feat_m)
    close(augmented.text_feat_m, same.text_feat_m)
    assert differs(augmented.loss, same.loss)
    with pytest.raises(ValueError, match="pixel_values_teacher has shape"):
        run(model, batch, pixel_values_teacher=teacher_pixels[:2])
    with pytest.raises(ValueError, match="pixel_values_teacher has shape"):
        run(model, batch, pixel_values_teacher=teacher_pixels[:, :, :16])
    model.eval()
    with torch.no_grad():  # an evaluation forward needs no second view
        assert torch.isfinite(run(model, batch).loss)


# ---------------------------------------------------------------------------------------------------------------------
# Retrieval fine-tuning
# ---------------------------------------------------------------------------------------------------------------------


def test_retrieval_with_the_codis_objective(processor, batch):
    model = build(processor, CodisForImageTextRetrieval)
    assert model.loss_names == ("loss_align", "loss_code", "loss_ot", "loss_itm")
    outputs = run(model, batch, idx=torch.tensor([0, 1, 2, 3]))
    for name in model.loss_names + ("loss_i2i", "loss_t2t", "transport_i2p"):
        assert getattr(outputs, name) is not None, name
    assert outputs.loss_mlm is None
    close(outputs.loss, outputs.loss_align + outputs.loss_code + outputs.loss_ot + outputs.loss_itm)


def test_retrieval_with_the_albef_objective(processor, batch):
    model = build(processor, CodisForImageTextRetrieval, finetune_objective="albef")
    assert model.loss_names == ("loss_itc", "loss_itm")
    idx = torch.tensor([0, 1, 2, 3])
    outputs = run(model, batch, idx=idx)
    for name in ("loss_align", "loss_i2i", "loss_t2t", "loss_code", "loss_ot", "transport_i2p", "code_logits_text"):
        assert getattr(outputs, name) is None, name
    close(outputs.loss, outputs.loss_itc + outputs.loss_itm)
    outputs.loss.backward()
    assert model.base_model.codebook.prototypes.grad is None
    # exactly ALBEF's retrieval fine-tuning
    albef = vlalign.AlbefForImageTextRetrieval(tiny_albef_config(processor.tokenizer, IMAGE_SIZE, **ALBEF_SIZES))
    albef.train().load_state_dict(albef_keys(model.state_dict()))
    assert torch.equal(run(albef, batch, idx=idx).loss, outputs.loss)


def test_assignment_contrast_treats_pairs_of_one_image_as_positives(processor, batch):
    model = build(processor, CodisForImageTextRetrieval, code_loss_type="assignment_contrast")
    decouple_teacher(model)
    # pairs 0 and 1 are declared the same image (duplicating its pixels too would make both targets give the same
    # loss by symmetry: equal plans score equally whichever of them is the positive)
    distinct_idx, shared_idx = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 1, 2])
    distinct, shared = run(model, batch, idx=distinct_idx), run(model, batch, idx=shared_idx)
    close(distinct.transport_i2p, shared.transport_i2p)  # the plans do not depend on idx...
    assert differs(distinct.loss_code, shared.loss_code)  # ...the targets do
    for outputs, idx in ((distinct, distinct_idx), (shared, shared_idx)):
        positives = (idx[:, None] == idx[None, :]).float()
        targets = positives / positives.sum(dim=1, keepdim=True)

        def contrast(logits, plans, targets=targets):
            return soft_ce(F.log_softmax(logits.detach(), dim=1) @ plans.t(), targets)

        loss_t2p = contrast(outputs.code_logits_text, outputs.transport_i2p)
        loss_i2p = contrast(outputs.code_logits_image, outputs.transport_t2p)
        close(outputs.loss_t2p.detach(), loss_t2p)
        close(outputs.loss_i2p.detach(), loss_i2p)
        close(outputs.loss_code.detach(), loss_t2p + loss_i2p)


# ---------------------------------------------------------------------------------------------------------------------
# CodisModel and loading ALBEF layouts
# ---------------------------------------------------------------------------------------------------------------------


def test_codis_model_loads_a_pretraining_save_and_gives_code_probabilities(processor, batch, tmp_path):
    model = build(processor).eval()
    with torch.no_grad():
        model.base_model.temp.fill_(0.05)  # not the config's value, so that loading it is visible
    model.save_pretrained(tmp_path)
    base = CodisModel.from_pretrained(tmp_path).eval()
    assert torch.equal(base.codebook.prototypes, model.base_model.codebook.prototypes)
    assert torch.equal(base.temp, model.base_model.temp)
    with torch.no_grad():
        embeds = base.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
        probabilities = base.code_probabilities(embeds)
        training_outputs = run(model, batch)
    assert probabilities.shape == (4, CODEBOOK_SIZE)
    close(probabilities.sum(dim=1), torch.ones(4))
    expected = F.softmax(F.normalize(embeds, dim=-1) @ normalized_codebook(base, "codebook").t() / 0.1, dim=1)
    close(probabilities, expected)
    close(probabilities, F.softmax(training_outputs.code_logits_image, dim=1))  # what the code loss predicts


def test_an_albef_save_initialises_codis_with_a_unit_norm_codebook(processor, tmp_path):
    torch.manual_seed(0)
    albef = vlalign.AlbefForPreTraining(tiny_albef_config(processor.tokenizer, IMAGE_SIZE, **ALBEF_SIZES))
    albef.save_pretrained(tmp_path)
    codis = CodisForPreTraining.from_pretrained(tmp_path, codebook_size=CODEBOOK_SIZE)
    assert isinstance(codis.config, CodisConfig) and codis.config.codebook_size == CODEBOOK_SIZE
    state, albef_state = codis.state_dict(), codis_keys(albef.state_dict())
    assert set(state) - set(albef_state) == {"codis.codebook.prototypes"}
    for key, value in albef_state.items():
        assert torch.equal(state[key], value), key
    prototypes = state["codis.codebook.prototypes"]
    assert torch.isfinite(prototypes).all()
    assert_unit_rows(prototypes)
    assert torch.unique(prototypes, dim=0).shape[0] == CODEBOOK_SIZE


# ---------------------------------------------------------------------------------------------------------------------
# Converter
# ---------------------------------------------------------------------------------------------------------------------


def test_converter_turns_the_official_albef_checkpoint_into_codis(converted_pretrain_dir, tmp_path):
    configs = [ORIGINAL / "Pretrain.yaml", ORIGINAL / "config_bert.json"]
    converted = convert_albef_to_codis(ORIGINAL / "checkpoint.pth", configs, tmp_path / "api", tokenizer=ORIGINAL)
    assert type(converted) is CodisForPreTraining
    run_cli(
        "convert", "--method", "codis", "--checkpoint", str(ORIGINAL / "checkpoint.pth"),
        "--config", str(configs[0]), "--config", str(configs[1]), "--tokenizer", str(ORIGINAL),
        "--output", str(tmp_path / "cli"),
    )  # fmt: skip
    reference = AutoModelForPreTraining.from_pretrained(converted_pretrain_dir)
    assert type(reference) is vlalign.AlbefForPreTraining
    reference_state = codis_keys(reference.state_dict())
    for folder in (tmp_path / "api", tmp_path / "cli"):
        assert json.loads((folder / "config.json").read_text())["model_type"] == "codis"
        model = AutoModelForPreTraining.from_pretrained(folder)
        assert type(model) is CodisForPreTraining and model.config.model_type == "codis"
        assert type(AutoProcessor.from_pretrained(folder)).__name__ == "CodisProcessor"
        state = model.state_dict()
        assert set(state) - set(reference_state) == {"codis.codebook.prototypes"}, folder.name
        for key, value in reference_state.items():
            assert torch.equal(state[key], value), f"{folder.name}: {key}"
        prototypes = state["codis.codebook.prototypes"]
        assert prototypes.shape == (model.config.codebook_size, reference.config.embed_dim)
        assert_unit_rows(prototypes)
        assert torch.unique(prototypes, dim=0).shape[0] == model.config.codebook_size

    # a retrieval config converts into the retrieval model, with the same online weights at the native resolution
    retrieval = convert_albef_to_codis(
        ORIGINAL / "checkpoint.pth", [ALBEF_FIXTURES / "retrieval" / "Retrieval_res32.yaml"], tmp_path / "retrieval"
    )
    assert type(retrieval) is CodisForImageTextRetrieval and retrieval.config.model_type == "codis"
    retrieval_state = retrieval.state_dict()
    for key, value in reference_state.items():
        if key.startswith("codis."):
            assert torch.equal(retrieval_state[key], value), key
    assert_unit_rows(retrieval_state["codis.codebook.prototypes"])


@pytest.mark.parametrize(
    ("model_class", "overrides", "trained"),
    [
        (CodisForPreTraining, {}, True),
        (CodisForPreTraining, dict(code_loss_weight=0.0), True),
        (CodisForPreTraining, dict(code_loss_weight=0.0, ot_loss_weight=0.0), False),
        (CodisForImageTextRetrieval, {}, True),
        (CodisForImageTextRetrieval, dict(finetune_objective="albef"), False),
    ],
)
def test_a_codebook_no_loss_trains_is_frozen(processor, batch, model_class, overrides, trained):
    """An unused trainable codebook would stall DDP's gradient reduction: it is frozen and left out of the optimizer."""
    model = build(processor, model_class, **overrides)
    prototypes = model.base_model.codebook.prototypes
    assert prototypes.requires_grad is trained
    in_optimizer = any(p is prototypes for group in albef_parameter_groups(model, 0.02) for p in group["params"])
    assert in_optimizer is trained
    run(model, batch).loss.backward()
    assert (prototypes.grad is not None) is trained
