"""NLVR2 and text-assignment models beyond parity (tiny random models): the two-image encoder's layer pairing and
shared cross-attention keys/values, the official loss, both image layouts, save/reload, the seeded and replayable
text-assignment draw, initialisation from a pretraining model (layer doubling, construction-time momentum copies and
the switch that fixes them), the EMA as a training duty, and SIMLA's and CODIS's classes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_TEXT_CONFIG, tiny_albef_config
from test_nonfinite_skip import Batches, first_item
from test_training_duties import REFUSAL, arguments
from transformers import Trainer

import vlalign
from vlalign.auto import AutoModelForTextAssignment, AutoModelForVisualReasoning
from vlalign.models.modeling_albef_nlvr import (
    AlbefForTextAssignment,
    AlbefForVisualReasoning,
    SharedProjection,
    draw_text_assignment,
    two_image_layer_sources,
)
from vlalign.models.modeling_codis_nlvr import CodisForTextAssignment, CodisForVisualReasoning
from vlalign.models.modeling_simla_nlvr import SimlaForTextAssignment, SimlaForVisualReasoning
from vlalign.training.trainer import AlignmentTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build(cls=AlbefForVisualReasoning, **overrides):
    torch.manual_seed(0)
    return cls(tiny_albef_config(**overrides))


def batch(pairs: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 245, (pairs, 6), generator=generator)
    input_ids[:, 0] = 2
    attention_mask = torch.ones_like(input_ids)
    input_ids[0, 4:], attention_mask[0, 4:] = 0, 0
    return {
        "pixel_values": torch.randn(pairs, 2, 3, 32, 32, generator=generator),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": torch.arange(pairs) % 2,
    }


def test_two_image_encoder_pairs_layers_and_shares_keys_and_values():
    model = build()
    text = model.config.text_config
    # 4 pretrained layers, fusion (and pairing) from 2: 2 + 2 * 2 = 6 layers, 4 of them fusion layers
    assert text.num_hidden_layers == 6 and text.first_paired_layer == 2
    assert two_image_layer_sources(text) == [0, 1, 2, 2, 3, 3]
    layers = model.fusion_model.layers
    assert len(layers) == 4
    for first, second in ((0, 1), (2, 3)):
        for name in ("key", "value"):
            shared = getattr(layers[first].cross_attn, name)
            assert isinstance(shared, SharedProjection)
            assert shared.weight is getattr(layers[second].cross_attn, name).weight
        assert layers[first].cross_attn.query.weight is not layers[second].cross_attn.query.weight
    names = [name for name, _ in model.fusion_model.named_parameters()]
    assert not any(name.startswith(("layers.0.cross_attn.key", "layers.2.cross_attn.value")) for name in names)
    assert sum(name.startswith("layers.1.cross_attn.key") for name in names) == 2  # weight and bias, saved once


def test_layers_alternate_between_the_two_images():
    model = build().eval()
    inputs = batch()
    inputs.pop("labels")
    reference = model(**inputs).logits
    swapped = inputs["pixel_values"].flip(1)
    assert not torch.allclose(model(**{**inputs, "pixel_values": swapped}).logits, reference)
    # the official layout: all left images, then all right images
    flat = torch.cat([inputs["pixel_values"][:, 0], inputs["pixel_values"][:, 1]])
    torch.testing.assert_close(model(**{**inputs, "pixel_values": flat}).logits, reference, atol=0, rtol=0)
    with pytest.raises(ValueError, match="two images per sentence"):
        model(**{**inputs, "pixel_values": flat[:-1]})


def test_loss_is_the_official_distilled_cross_entropy():
    model = build().train()
    for _, momentum in model.momentum_parameter_pairs():  # a teacher that differs from the student
        momentum.add_(0.05 * torch.randn_like(momentum))
    inputs = batch()
    output = model(**inputs, alpha=0.4)
    ce = F.cross_entropy(output.logits, inputs["labels"])
    distill = -(F.log_softmax(output.logits, 1) * F.softmax(output.logits_m, 1)).sum(1).mean()
    torch.testing.assert_close(output.loss_ce, ce)
    torch.testing.assert_close(output.loss_distill, distill)
    torch.testing.assert_close(output.loss, 0.6 * ce + 0.4 * distill)
    assert not torch.allclose(output.logits_m, output.logits)
    plain = model(**inputs, alpha=0.0)
    assert plain.logits_m is None and torch.equal(plain.loss, plain.loss_ce)
    output.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def test_save_reload_outputs_and_states(tmp_path):
    model = build().eval()
    inputs = batch()
    inputs.pop("labels")
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForVisualReasoning.from_pretrained(tmp_path)
    assert type(reloaded) is AlbefForVisualReasoning
    torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)
    output = reloaded(**inputs, output_hidden_states=True)
    assert len(output.fusion_model_output.hidden_states) == 5  # the input and each of the 4 fusion layers
    vlalign.AlbefForPreTraining(tiny_albef_config()).save_pretrained(tmp_path / "pre")
    with pytest.raises(ValueError, match=r"not a VisualReasoning model: .*from_text_assignment"):
        AlbefForVisualReasoning.from_pretrained(tmp_path / "pre")
    with pytest.raises(ValueError, match=r"not a TextAssignment model: .*--task text-assignment"):
        AlbefForTextAssignment.from_pretrained(tmp_path)


def test_text_assignment_draw_is_seeded_and_replayable():
    model = build(AlbefForTextAssignment).eval()
    inputs = batch(pairs=5)
    inputs.pop("labels")
    inputs["pixel_values"] = inputs["pixel_values"][:, 0]
    first = model(**inputs, generator=torch.Generator().manual_seed(7))
    again = model(**inputs, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first.pairs, again.pairs) and torch.equal(first.labels, again.labels)
    replay = model(**inputs, pairs=first.pairs, labels=first.labels)
    torch.testing.assert_close(replay.logits, first.logits, atol=0, rtol=0)
    # label 0: own image left; 1: own image right; 2: two others
    for row, (pair, label) in enumerate(zip(first.pairs.tolist(), first.labels.tolist(), strict=True)):
        assert {0: pair[0] == row, 1: pair[1] == row, 2: row not in pair and pair[0] != pair[1]}[int(label)]
    assert torch.equal(first.sim_weights.diagonal(), torch.zeros(5))
    torch.testing.assert_close(first.sim_weights.sum(1) + first.sim_weights.diagonal(), first.sim_weights.sum(1))
    with pytest.raises(ValueError, match="both pairs and labels"):
        model(**inputs, pairs=first.pairs)


def test_draw_follows_the_weights():
    weights = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    pairs, labels = draw_text_assignment(weights, torch.Generator().manual_seed(0))
    for row, (pair, label) in enumerate(zip(pairs.tolist(), labels.tolist(), strict=True)):
        if label < 2:
            assert sorted(pair) == sorted([row, (row + 1) % 4])


def test_initialisation_from_pretraining_doubles_layers_and_keeps_construction_momentum():
    torch.manual_seed(0)
    pretrained = vlalign.AlbefForPreTraining(tiny_albef_config())
    assignment = AlbefForTextAssignment.from_pretraining(pretrained)
    source = pretrained.albef.fusion_model.layers
    for layer, pretrained_layer in ((0, 0), (1, 0), (2, 1), (3, 1)):
        target = assignment.fusion_model.layers[layer]
        assert torch.equal(target.mlp.fc1.weight, source[pretrained_layer].mlp.fc1.weight)
        assert torch.equal(target.cross_attn.key.weight, source[pretrained_layer].cross_attn.key.weight)
    assert torch.equal(assignment.vision_proj.weight, pretrained.albef.vision_proj.weight)

    reasoning = AlbefForVisualReasoning.from_text_assignment(assignment)
    assert torch.equal(reasoning.fusion_model.layers[3].mlp.fc2.weight, source[1].mlp.fc2.weight)
    # the official quirk: momentum copies hold the construction-time weights, not the loaded ones
    assert not torch.equal(reasoning.fusion_model_m.layers[3].mlp.fc2.weight, source[1].mlp.fc2.weight)
    assert torch.equal(reasoning.cls_head_m.dense.weight, reasoning.cls_head.dense.weight)
    fixed = AlbefForVisualReasoning.from_pretraining(pretrained, momentum_from_loaded=True)
    assert all(torch.equal(online, momentum) for online, momentum in fixed.momentum_parameter_pairs())


def test_momentum_copies_follow_the_ema_as_a_training_duty(tmp_path):
    data = Batches([batch(seed=seed) for seed in range(2)])
    plain = Trainer(
        model=build(), args=arguments(tmp_path, "adamw_torch_fused"), train_dataset=data, data_collator=first_item
    )
    with pytest.raises(RuntimeError, match=REFUSAL):
        plain.train()
    model = build()
    pairs = list(model.momentum_parameter_pairs())
    assert len(pairs) == sum(1 for name, _ in model.named_parameters() if "_m." not in name)
    before = [m.detach().clone() for _, m in pairs]
    args = arguments(tmp_path, "adamw_torch_fused", alignment=True)
    AlignmentTrainer(model=model, args=args, train_dataset=data, data_collator=first_item).train()
    moved = [not torch.equal(m, b) for (_, m), b in zip(pairs, before, strict=True)]
    assert sum(moved) > len(pairs) // 2
    assert all(not m.requires_grad for _, m in pairs)


@pytest.mark.parametrize("cls", [SimlaForVisualReasoning, SimlaForTextAssignment])
def test_simla_pairs_the_second_half_of_its_single_stream(cls):
    config = vlalign.SimlaConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=32),
        text_config={**TINY_TEXT_CONFIG, "fusion_layer": 0},
        embed_dim=16, queue_size=8,
    )  # fmt: skip
    torch.manual_seed(0)
    model = cls(config).eval()
    text = model.config.text_config
    # 4 layers, pairs from layer 2 (half the stack): 2 + 2 * 2 = 6, every one cross-attending; a token-type table
    assert (text.num_hidden_layers, text.first_paired_layer, text.type_vocab_size) == (6, 2, 2)
    assert len(model.fusion_model.layers) == 6
    assert not model.config.use_pretraining_heads and not model.config.vision_config.use_mask_token
    layers = model.fusion_model.layers
    assert isinstance(layers[2].cross_attn.key, SharedProjection)
    assert not isinstance(layers[0].cross_attn.key, SharedProjection)
    inputs = batch()
    inputs.pop("labels")
    if cls is SimlaForTextAssignment:
        inputs["pixel_values"] = inputs["pixel_values"][:, 0]
    assert model(**inputs).logits.shape == (3, 3 if cls is SimlaForTextAssignment else 2)


def test_simla_token_types_stay_random_unless_switched():
    """The pretrained MED BERT has no token-type table: the official load leaves the two-image encoder's at its
    construction values (row 0 added to every token); `zero_token_types=True` starts it at zeros."""
    config = vlalign.SimlaConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=32),
        text_config={**TINY_TEXT_CONFIG, "fusion_layer": 0},
        embed_dim=16, queue_size=8,
    )  # fmt: skip
    torch.manual_seed(0)
    pretrained = vlalign.SimlaForPreTraining(config)
    table = "text_model.embeddings.token_type_embeddings.weight"
    quirk = SimlaForTextAssignment.from_pretraining(pretrained).state_dict()[table]
    assert quirk.abs().sum() > 0
    assert (
        SimlaForTextAssignment.from_pretraining(pretrained, zero_token_types=True).state_dict()[table].abs().sum() == 0
    )
    reasoning = SimlaForVisualReasoning.from_pretraining(pretrained, zero_token_types=True)
    assert reasoning.state_dict()[table].abs().sum() == 0


def test_codis_classes_are_albef_under_codis_config(tmp_path):
    torch.manual_seed(0)
    config = vlalign.CodisConfig(**{k: v for k, v in tiny_albef_config().to_dict().items() if k in ("embed_dim",)},
                                 vision_config=tiny_albef_config().vision_config.to_dict(),
                                 text_config=dict(TINY_TEXT_CONFIG), queue_size=8)  # fmt: skip
    for cls in (CodisForVisualReasoning, CodisForTextAssignment):
        model = cls(config)
        assert isinstance(model, vlalign.CodisPreTrainedModel) and model.config.model_type == "codis"
        assert not any("codebook" in name for name, _ in model.named_parameters())
    model.save_pretrained(tmp_path)
    assert type(AutoModelForTextAssignment.from_pretrained(tmp_path)) is CodisForTextAssignment
