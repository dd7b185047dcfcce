"""FdtModel / FdtForPreTraining behaviour on tiny random configs: shapes, save/load, sparsity, padding, frozen
patch embedding, per-step duties, optimizer groups, output options, attention backends and two-process training."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlalign.evaluation import zero_shot_class_embeddings
from vlalign.models.configuration_fdt import FdtConfig
from vlalign.models.modeling_fdt import (
    FdtForPreTraining,
    FdtModel,
    fdt_parameter_groups,
    l2_normalize,
)
from vlalign.recipes.fdt import fdt_lr_factor, fdt_lr_schedule, tiny_fdt_config

CONTEXT = 8
WORKER = Path(__file__).parent / "fdt_ddp_worker.py"


def micro_config(**overrides) -> FdtConfig:
    settings = dict(
        image_size=16, patch_size=8, width=32, vision_layers=2, text_layers=2, context_length=CONTEXT,
        fdt_num_tokens=32, fdt_dim=16,
    )  # fmt: skip
    settings.update(overrides)
    return tiny_fdt_config(60, **settings)


def batch(size: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([3, CONTEXT, 5, 4, 6, 2][:size])
    mask = (torch.arange(CONTEXT)[None] < lengths[:, None]).long()
    ids = torch.randint(1, 57, (size, CONTEXT), generator=generator) * mask
    ids[torch.arange(size), lengths - 1] = 59  # EOT
    return {
        "pixel_values": torch.randn(size, 3, 16, 16, generator=generator),
        "input_ids": ids,
        "attention_mask": mask,
    }


@pytest.fixture
def model() -> FdtModel:
    torch.manual_seed(0)
    return FdtModel(micro_config()).eval()


def test_output_shapes(model):
    inputs = batch()
    out = model(**inputs, return_loss=True)
    assert out.logits_per_image.shape == out.logits_per_text.shape == (3, 3)
    assert out.image_embeds.shape == out.text_embeds.shape == (3, 16)
    assert out.image_fdt_weights.shape == out.text_fdt_weights.shape == (3, 32)
    assert out.loss.ndim == 0
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out.image_fdt_weights.sum(-1), torch.ones(3))
    assert model.get_image_features(inputs["pixel_values"]).pooler_output.shape == (3, 16)
    assert model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output.shape == (3, 16)
    torch.testing.assert_close(
        l2_normalize(model.get_image_features(inputs["pixel_values"]).pooler_output), out.image_embeds
    )
    # zero-shot pipeline layout: 1 image against n texts
    one = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"][:1])
    assert one.logits_per_image.shape == (1, 3)


def test_token_type_ids_accepted(model):
    """The zero-shot pipeline passes the tokenizer's outputs (unknown arguments are refused: test_conventions.py)."""
    inputs = batch()
    model(**inputs, token_type_ids=torch.zeros_like(inputs["input_ids"]))


def test_pretraining_model_loads_a_dual_encoder_save(tmp_path, model):
    """(Each class's own round trip: test_conventions.py.)"""
    model.save_pretrained(tmp_path / "model")
    training = FdtForPreTraining.from_pretrained(tmp_path / "model")
    torch.testing.assert_close(training.fdt.grounding.tokens, model.grounding.tokens)
    assert FdtConfig.from_pretrained(tmp_path / "model").to_dict() == model.config.to_dict()


def test_weights_sparse_at_low_temperature_dense_at_high(model):
    inputs = batch()
    with torch.no_grad():
        sharp = model(**inputs, fdt_temperature=0.05)
        flat = model(**inputs, fdt_temperature=1000.0)
    assert ((sharp.image_fdt_weights > 0).sum(-1) < 32).all()
    assert ((sharp.text_fdt_weights > 0).sum(-1) < 32).all()
    assert ((flat.image_fdt_weights > 0).sum(-1) == 32).all()


@pytest.mark.parametrize("attention", ["softmax", "sigmoid"])
@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_other_attentions_and_poolings(attention, pooling):
    torch.manual_seed(0)
    model = FdtModel(micro_config(fdt_attention=attention, fdt_pooling=pooling)).eval()
    out = model(**batch())
    torch.testing.assert_close(out.text_fdt_weights.sum(-1), torch.ones(3))
    embeds = out.text_fdt_weights @ model.grounding.tokens
    torch.testing.assert_close(l2_normalize(embeds), out.text_embeds)


def test_zero_pad_fill_floors_max_at_zero_and_ignores_padding_length(model):
    inputs = batch()
    grounding, features = model.grounding, model.text_model(inputs["input_ids"]).last_hidden_state
    mask = inputs["attention_mask"]
    with torch.no_grad():
        pooled = grounding(features, "text", 1.0, mask).pooled_logits
        scores = grounding.text_query(features) @ grounding.tokens.t() / 4  # sqrt(16)
        official = (scores * mask[..., None]).amax(dim=1)  # the official multiply-by-validity, padded to context
    torch.testing.assert_close(pooled, official)
    assert (pooled[mask.sum(1) < CONTEXT] >= 0).all()
    # the full-length caption (row 1) has no padding, so nothing floors it
    assert (pooled[1] < 0).any()
    # trimming the padding of a batch does not change the result (padding is emulated up to the context length)
    with torch.no_grad():
        trimmed = grounding(features[[0], :3], "text", 1.0, mask[[0], :3]).pooled_logits
    torch.testing.assert_close(trimmed, pooled[[0]])


def test_neg_inf_pad_fill_pools_valid_tokens_only():
    torch.manual_seed(0)
    model = FdtModel(micro_config(fdt_pad_fill="neg_inf")).eval()
    inputs = batch()
    features = model.text_model(inputs["input_ids"]).last_hidden_state
    mask = inputs["attention_mask"].bool()
    with torch.no_grad():
        pooled = model.grounding(features, "text", 1.0, inputs["attention_mask"]).pooled_logits
        scores = model.grounding.text_query(features) @ model.grounding.tokens.t() / 4
    for row in range(3):
        torch.testing.assert_close(pooled[row], scores[row][mask[row]].amax(dim=0))
    assert (pooled[0] < 0).any()  # no floor at 0


def test_patch_embedding_frozen_through_training_and_loading(tmp_path):
    torch.manual_seed(0)
    model = FdtForPreTraining(micro_config()).train()
    patch = model.fdt.vision_model.embeddings.patch_embedding.weight
    assert not patch.requires_grad
    before = patch.detach().clone()
    optimizer = torch.optim.AdamW(fdt_parameter_groups(model, 0.1), lr=1e-2)
    model(**batch()).loss.backward()
    model.before_optimizer_step(0)
    optimizer.step()
    model.after_optimizer_step(0)
    torch.testing.assert_close(patch, before, atol=0, rtol=0)
    model.save_pretrained(tmp_path / "m")
    loaded = FdtForPreTraining.from_pretrained(tmp_path / "m")
    assert not loaded.fdt.vision_model.embeddings.patch_embedding.weight.requires_grad
    unfrozen = FdtModel(micro_config(vision_config={"freeze_patch_embedding": False}))
    assert unfrozen.vision_model.embeddings.patch_embedding.weight.requires_grad


def test_every_trainable_parameter_gets_a_finite_gradient_in_the_sparse_regime():
    """At a low FDT temperature (few codebook tokens active); at the recipe's: test_conventions.py."""
    torch.manual_seed(0)
    model = FdtForPreTraining(micro_config(fdt_temperature=0.05)).train()
    model(**batch()).loss.backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all(), name


def test_logit_scale_clamped_around_optimizer_steps():
    torch.manual_seed(0)
    model = FdtForPreTraining(micro_config())
    theta = model.fdt.logit_scale
    assert math.isclose(theta.item(), math.log(1 / 0.07), rel_tol=1e-6)
    with torch.no_grad():
        theta.fill_(10.0)
    model.before_optimizer_step(0)
    assert theta.item() == 6.0
    with torch.no_grad():
        theta.fill_(1.0)
    model.after_optimizer_step(0)
    assert theta.item() == 3.0
    # the forward scale is capped at 100 with a straight-through gradient (the official `.data` clamp)
    with torch.no_grad():
        theta.fill_(5.0)
    scale = model.fdt.scale()
    assert scale.item() == 100.0
    scale.backward()
    assert math.isclose(theta.grad.item(), math.exp(5.0), rel_tol=1e-5)


def test_duties_enforced_when_an_optimizer_steps_without_them():
    torch.manual_seed(0)
    model = FdtForPreTraining(micro_config()).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(**batch()).loss.backward()
    optimizer.step()
    with pytest.raises(RuntimeError, match="logit-scale"):
        model(**batch())


def test_temperature_schedule_follows_training_progress():
    config = micro_config(
        fdt_temperature=1000.0,
        fdt_temperature_decay_weight=0.5,
        fdt_temperature_decay_every=10,
        fdt_temperature_min=200.0,
    )
    assert config.fdt_temperature_at(9) == 1000.0
    assert config.fdt_temperature_at(25) == 250.0
    assert config.fdt_temperature_at(30) == 200.0  # floored at the minimum
    assert config.fdt_temperature_at(15, stepwise=False) == pytest.approx(1000 * 0.5**1.5)
    torch.manual_seed(0)
    model = FdtForPreTraining(config).train()
    model.set_training_progress(25, steps_per_epoch=100)
    out = model(**batch())
    assert out.fdt_temperature.item() == 250.0
    assert model.fdt.fdt_temperature.item() == 250.0  # saved with the weights, so a resumed or exported model has it
    logs = model.training_log_values()
    assert logs["fdt_temperature"] == 250.0
    assert logs["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-5)
    assert 1 <= logs["fdt_support_size"] <= 32
    assert model.loss_names == ("loss_itc",)
    assert out.loss_itc is out.loss


def test_official_parameter_groups():
    torch.manual_seed(0)
    model = FdtForPreTraining(micro_config())
    decay, no_decay = fdt_parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decayed, free = set(decay["names"]), set(no_decay["names"])
    layer = "fdt.vision_model.encoder.layers.0."
    for name in ("q_proj.bias", "k_proj.bias", "v_proj.bias", "q_proj.weight", "out_proj.weight"):
        assert layer + "self_attn." + name in decayed
    assert layer + "self_attn.out_proj.bias" in free
    assert layer + "mlp.fc1.bias" in free and layer + "layer_norm1.weight" in free
    assert {"fdt.logit_scale", "fdt.grounding.image_query.fc2.bias", "fdt.grounding.image_query.ln_in.weight"} <= free
    assert {"fdt.grounding.tokens", "fdt.text_model.embeddings.token_embedding.weight"} <= decayed
    assert "fdt.vision_model.embeddings.patch_embedding.weight" not in decayed | free  # frozen
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert decayed | free == trainable and not decayed & free


def test_text_attention_is_causal(model):
    """(Attention and hidden-state outputs of every class: test_conventions.py.)"""
    model.set_attn_implementation("eager")  # SDPA does not return attention probabilities
    text = model(**batch(), output_attentions=True).text_model_output
    assert all(torch.all(attention.triu(diagonal=1) == 0) for attention in text.attentions)


def test_fresh_model_has_the_documented_clip_initialisation():
    """OpenAI-CLIP init (see `FdtPreTrainedModel._init_weights`), not PyTorch's defaults: zero attention biases,
    in-projections N(0, width^-0.5), out-projections N(0, width^-0.5·(2L)^-0.5), MLP inputs N(0, (2·width)^-0.5)."""
    torch.manual_seed(0)
    model = FdtModel(micro_config(width=64))
    for tower in (model.vision_model, model.text_model):
        width, layers = 64, tower.config.num_hidden_layers
        for layer in tower.encoder.layers:
            attention, mlp = layer.self_attn, layer.mlp
            for linear in (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj):
                assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
            for linear in (attention.q_proj, attention.k_proj, attention.v_proj):
                assert linear.weight.std().item() == pytest.approx(width**-0.5, rel=0.1)
            expected_out = width**-0.5 * (2 * layers) ** -0.5
            assert attention.out_proj.weight.std().item() == pytest.approx(expected_out, rel=0.1)
            assert mlp.fc1.weight.std().item() == pytest.approx((2 * width) ** -0.5, rel=0.1)
            assert mlp.fc2.weight.std().item() == pytest.approx(expected_out, rel=0.1)


def test_flex_attention_agrees_with_eager():
    """(Eager against SDPA for every class: test_conventions.py.)"""
    backend_name = "flex_attention"
    inputs = batch()
    outputs = {}
    for implementation in (backend_name, "eager"):
        torch.manual_seed(0)
        model = FdtModel(micro_config()).eval()
        model.set_attn_implementation(implementation)
        assert model.text_model.config._attn_implementation == implementation
        with torch.no_grad():  # flex attention has no backward on CPU
            outputs[implementation] = model(**inputs, fdt_temperature=0.1)
    backend, eager = outputs.values()
    torch.testing.assert_close(backend.logits_per_image, eager.logits_per_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(backend.text_fdt_weights, eager.text_fdt_weights, atol=1e-6, rtol=0)


def test_zero_shot_class_embeddings_average_templates(model):
    inputs = batch(6)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    weights = zero_shot_class_embeddings(
        model, {"input_ids": ids, "attention_mask": mask}, ["a", "b", "c"], ["{}", "x {}"]
    )
    per_prompt = l2_normalize(model.get_text_features(ids, mask).pooler_output).view(3, 2, -1).mean(1)
    torch.testing.assert_close(weights, per_prompt / per_prompt.norm(dim=-1, keepdim=True))
    with pytest.raises(ValueError, match="6 prompts"):
        zero_shot_class_embeddings(model, ids[:4], ["a", "b", "c"], ["{}", "x {}"])


def test_lr_schedule_matches_official_formula():
    assert fdt_lr_factor(0, 86560) * 1e-3 == pytest.approx(1e-4)
    assert fdt_lr_factor(1249, 86560) * 1e-3 == pytest.approx(1e-4 + 9e-4 * 1249 / 2499)
    assert fdt_lr_factor(2499, 86560) == pytest.approx(1.0)
    assert fdt_lr_factor(86559, 86560) == pytest.approx(0.0, abs=1e-12)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = fdt_lr_schedule(optimizer, max_steps=100, warmup_steps=10)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    for _ in range(9):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


def _run_worker(output: Path, processes: int, global_batch: int) -> dict:
    output.mkdir(parents=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = launcher if processes > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [*command, str(WORKER), str(output), str(global_batch)], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(output / "result.pt", weights_only=True)


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    single = _run_worker(tmp_path / "single", 1, 8)
    double = _run_worker(tmp_path / "double", 2, 8)
    assert (single["world_size"], double["world_size"]) == (1, 2)
    torch.testing.assert_close(double["loss"], single["loss"], atol=1e-5, rtol=0)
    assert single["grads"].keys() == double["grads"].keys()
    for name, grad in single["grads"].items():
        torch.testing.assert_close(double["grads"][name], grad, atol=1e-5, rtol=1e-5, msg=name)
    # AdamW's first step is lr·g/(|g| + eps): elements with a rounding-level gradient (e.g. key biases, whose true
    # gradient is 0 because softmax ignores them) move by up to ±lr either way, so they are left out.
    for name, value in single["state"].items():
        grad = single["grads"].get(name)
        keep = torch.ones_like(value, dtype=torch.bool) if grad is None else grad.abs() > 1e-6
        torch.testing.assert_close(double["state"][name][keep], value[keep], atol=1e-5, rtol=0, msg=name)
