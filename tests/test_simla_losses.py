"""SIMLA's objectives as named loss units (MLM with the sequence-axis distillation quirk, MIM, PSL), checked against
the official intermediates recorded in `tests/fixtures/simla/` and against small hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FIXTURES
from safetensors.torch import load_file

from vlalign.models.losses import (
    distilled_mlm_loss,
    masked_image_modeling_loss,
    pseudo_keyword_loss,
    psl_keyword_targets,
)

SIMLA_FIXTURES = FIXTURES / "simla"
ATOL = 1e-5
CLS_TOKEN_ID = 2  # [PAD] [UNK] [CLS] [SEP] [MASK] ... in the fixture's vocab.txt


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    return load_file(SIMLA_FIXTURES / "inputs.safetensors")


@pytest.fixture(scope="module")
def outputs() -> dict[str, torch.Tensor]:
    return load_file(SIMLA_FIXTURES / "outputs.safetensors")


@pytest.fixture(scope="module")
def alpha(inputs) -> float:
    return inputs["alpha"].item()


def assert_scalar(value: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(value, expected, atol=ATOL, rtol=0)


# --- MLM: official sequence-axis distillation ------------------------------------------------------------------------


def test_mlm_sequence_axis_reproduces_official_loss(inputs, outputs, alpha):
    logits, teacher, labels = outputs["mlm_logits"], outputs["mlm_logits_m"], inputs["mlm_labels_fixed"]
    loss = distilled_mlm_loss(logits, labels, lambda: teacher, alpha, distill_axis="sequence")
    assert_scalar(loss, outputs["loss_mlm_fixed"])


def test_mlm_hard_term_reproduces_official_cross_entropy(inputs, outputs):
    logits, labels = outputs["mlm_logits"], inputs["mlm_labels_fixed"]
    for axis in ("vocab", "sequence"):
        loss = distilled_mlm_loss(logits, labels, lambda: pytest.fail("teacher ran"), 0.0, distill_axis=axis)
        assert_scalar(loss, outputs["loss_mlm_fixed_hard"])


def test_mlm_vocab_axis_is_not_the_official_number(inputs, outputs, alpha):
    """The default (fixed) axis gives a different loss on the same tensors: the switch is what reproduces SIMLA."""
    logits, teacher, labels = outputs["mlm_logits"], outputs["mlm_logits_m"], inputs["mlm_labels_fixed"]
    default = distilled_mlm_loss(logits, labels, lambda: teacher, alpha)
    assert torch.equal(default, distilled_mlm_loss(logits, labels, lambda: teacher, alpha, distill_axis="vocab"))
    assert (default - outputs["loss_mlm_fixed"]).abs() > 1e-2


def test_mlm_sequence_axis_by_hand():
    # one sequence of 2 tokens over a 2-word vocabulary, token 0 masked; the teacher is uniform over the vocabulary
    logits = torch.tensor([[[0.0, math.log(2.0)], [0.0, 0.0]]], requires_grad=True)
    labels = torch.tensor([[1, -100]])
    teacher = torch.zeros(1, 2, 2)
    # over the sequence: column 0 -> log(1/2), column 1 -> log(2 / 3); weighted by (1/2, 1/2)
    sequence = distilled_mlm_loss(logits, labels, lambda: teacher, 1.0, distill_axis="sequence")
    torch.testing.assert_close(sequence, torch.tensor(0.5 * math.log(3.0)))
    # over the vocabulary: log(1/3), log(2/3)
    vocab = distilled_mlm_loss(logits, labels, lambda: teacher, 1.0)
    torch.testing.assert_close(vocab, torch.tensor(0.5 * (math.log(3.0) + math.log(1.5))))
    sequence.backward()
    assert logits.grad is not None and logits.grad[0, 1].abs().sum() > 0  # the unmasked token gets gradient too


def test_mlm_sequence_axis_depends_on_unmasked_positions_vocab_axis_does_not():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=generator)
    teacher = torch.randn(2, 5, 7, generator=generator)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3] = 4, 0
    changed = logits.clone()
    changed[0, 2] += 3.0  # an unmasked position
    for axis, should_change in (("vocab", False), ("sequence", True)):
        before = distilled_mlm_loss(logits, labels, lambda: teacher, 0.4, distill_axis=axis)
        after = distilled_mlm_loss(changed, labels, lambda: teacher, 0.4, distill_axis=axis)
        assert bool((before - after).abs() > 1e-4) is should_change, axis


def test_mlm_sequence_axis_without_masked_tokens_is_zero_with_graph():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = distilled_mlm_loss(logits, torch.full((2, 3), -100), lambda: logits.detach(), 0.4, distill_axis="sequence")
    assert loss.item() == 0.0
    loss.backward()


def test_mlm_errors_name_the_fix():
    logits, labels = torch.randn(2, 3, 5), torch.tensor([[1, -100, -100], [-100, 2, -100]])
    with pytest.raises(ValueError, match="'vocab'.*'sequence'"):
        distilled_mlm_loss(logits, labels, distill_axis="tokens")
    with pytest.raises(ValueError, match=r"\[batch, tokens, vocab\]"):
        distilled_mlm_loss(logits, labels[:, :2])
    with pytest.raises(ValueError, match="unflattened"):
        distilled_mlm_loss(logits.flatten(0, 1), labels.flatten(), distill_axis="sequence")
    with pytest.raises(ValueError, match="same masked ids"):
        distilled_mlm_loss(logits, labels, lambda: torch.randn(2, 4, 5), 0.4, distill_axis="sequence")


# --- MIM -------------------------------------------------------------------------------------------------------------


def test_mim_reproduces_official_terms(inputs, outputs, alpha):
    logits, teacher = outputs["mim_logits"], outputs["mim_logits_m"]
    mask, labels = inputs["masked_visual_token_pos"], inputs["masked_visual_token_labels"]
    assert_scalar(masked_image_modeling_loss(logits, mask, labels, teacher, 0.0), outputs["loss_mim_hard"])
    assert_scalar(masked_image_modeling_loss(logits, mask, labels, teacher, 1.0), outputs["loss_mim_distill"])
    assert_scalar(masked_image_modeling_loss(logits, mask, labels, teacher, alpha), outputs["loss_mim"])
    lazy = masked_image_modeling_loss(logits, mask, labels, lambda: teacher, alpha)
    assert_scalar(lazy, outputs["loss_mim"])


def test_mim_one_masked_patch_by_hand():
    logits = torch.tensor([[[5.0, -2.0], [0.0, math.log(3.0)]]], requires_grad=True)
    mask = torch.tensor([[False, True]])
    labels = torch.tensor([1])
    teacher = torch.tensor([[[9.0, 9.0], [0.0, 0.0]]])  # uniform at the masked patch
    hard = math.log(4 / 3)
    distill = 0.5 * (math.log(4.0) + math.log(4 / 3))
    loss = masked_image_modeling_loss(logits, mask, labels, teacher, 0.5)
    torch.testing.assert_close(loss, torch.tensor(0.5 * hard + 0.5 * distill))
    loss.backward()
    assert logits.grad[0, 0].abs().sum() == 0  # unmasked patches get no gradient
    alpha_zero = masked_image_modeling_loss(logits, mask, labels, lambda: pytest.fail("teacher ran"), 0.0)
    torch.testing.assert_close(alpha_zero, torch.tensor(hard))


def test_mim_without_masked_patches_is_zero_with_graph():
    logits = torch.randn(2, 3, 4, requires_grad=True)
    loss = masked_image_modeling_loss(
        logits, torch.zeros(2, 3, dtype=torch.bool), torch.zeros(0, dtype=torch.long), lambda: pytest.fail(), 0.4
    )
    assert loss.item() == 0.0
    loss.backward()


def test_mim_errors_name_the_fix():
    logits, mask = torch.randn(2, 3, 4), torch.tensor([[True, False, True], [False, False, True]])
    labels = torch.tensor([0, 1, 3])
    with pytest.raises(ValueError, match=r"mask\.bool\(\)"):
        masked_image_modeling_loss(logits, mask.long(), labels)
    with pytest.raises(ValueError, match="CLS dropped"):
        masked_image_modeling_loss(torch.randn(2, 4, 4), mask, labels)
    with pytest.raises(ValueError, match=r"visual_token_ids\[mask\]"):
        masked_image_modeling_loss(logits, mask, labels[:2])
    with pytest.raises(ValueError, match="same masked images"):
        masked_image_modeling_loss(logits, mask, labels, torch.randn(2, 3, 5), 0.4)


# --- PSL -------------------------------------------------------------------------------------------------------------


def test_psl_targets_reproduce_official_intermediates(inputs, outputs):
    attention, input_ids = outputs["psl_cls_self_attn_last_layer"], inputs["input_ids"]
    vocab_size = outputs["psl_hard_targets"].shape[1]
    targets = psl_keyword_targets(attention, input_ids, vocab_size, CLS_TOKEN_ID)
    assert torch.equal(targets.salient_positions, outputs["psl_salient_positions"])
    assert torch.equal(targets.position_counts, outputs["psl_position_counts"])
    assert targets.position_counts.dtype == torch.int64
    assert torch.equal(targets.top_positions, outputs["psl_top_positions"])
    assert torch.equal(targets.keyword_ids, outputs["psl_keyword_token_ids"])
    assert torch.equal(targets.hard_targets, outputs["psl_hard_targets"])


def test_psl_loss_reproduces_official_terms(outputs, alpha):
    logits, hard, soft = outputs["psl_logits"], outputs["psl_hard_targets"], outputs["psl_soft_targets"]
    assert_scalar(pseudo_keyword_loss(logits, hard, soft, 0.0), outputs["loss_psl_hard"])
    assert_scalar(pseudo_keyword_loss(logits, hard, soft, 1.0), outputs["loss_psl_soft"])
    assert_scalar(pseudo_keyword_loss(logits, hard, soft, alpha), outputs["loss_psl"])


def test_psl_from_attention_to_loss(inputs, outputs, alpha):
    """The two units composed, from the recorded attention row to the official PSL loss."""
    logits = outputs["psl_logits"]
    targets = psl_keyword_targets(
        outputs["psl_cls_self_attn_last_layer"], inputs["input_ids"], logits.shape[1], CLS_TOKEN_ID
    )
    loss = pseudo_keyword_loss(logits, targets.hard_targets, outputs["psl_soft_targets"], alpha)
    assert_scalar(loss, outputs["loss_psl"])


def test_psl_targets_by_hand():
    # 2 heads over 3 tokens; each head votes for its 2 most attended positions: {0, 1} and {2, 1}
    attention = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]]])
    input_ids = torch.tensor([[CLS_TOKEN_ID, 7, 9]])
    targets = psl_keyword_targets(attention, input_ids, 10, CLS_TOKEN_ID, positions_per_head=2, num_keywords=1)
    assert targets.salient_positions.tolist() == [[0, 1, 2, 1]]
    assert targets.position_counts.tolist() == [[1, 2, 1]]
    assert targets.top_positions.tolist() == [[1]]
    assert targets.keyword_ids.tolist() == [[7]]
    assert targets.hard_targets.tolist() == [[0, 0, 0, 0, 0, 0, 0, 1, 0, 0]]
    # every position a keyword: [CLS] is dropped from the targets
    targets = psl_keyword_targets(attention, input_ids, 10, CLS_TOKEN_ID, positions_per_head=2, num_keywords=3)
    assert sorted(targets.keyword_ids[0].tolist()) == [CLS_TOKEN_ID, 7, 9]
    assert targets.hard_targets[0].nonzero().flatten().tolist() == [7, 9]
    # duplicated ids collapse into one target
    targets = psl_keyword_targets(attention, torch.tensor([[CLS_TOKEN_ID, 7, 7]]), 10, CLS_TOKEN_ID, 2, 3)
    assert targets.hard_targets.sum().item() == 1.0


def test_psl_loss_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)  # sigmoid: 1/2, 3/4
    hard, soft = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]])
    hard_term = (math.log(2.0) + math.log(4.0)) / 2
    soft_term = (math.log(2.0) + math.log(4.0) - 0.5 * math.log(3.0)) / 2
    loss = pseudo_keyword_loss(logits, hard, soft, 0.25)
    torch.testing.assert_close(loss, torch.tensor(0.75 * hard_term + 0.25 * soft_term))
    loss.backward()
    torch.testing.assert_close(pseudo_keyword_loss(logits, hard, None, 0.0), torch.tensor(hard_term))


def test_psl_errors_name_the_fix():
    attention, input_ids = (
        torch.rand(2, 2, 6, generator=torch.Generator().manual_seed(0)),
        torch.arange(4, 10).repeat(2, 1),
    )
    with pytest.raises(ValueError, match=r"attentions\[:, :, 0\]"):
        psl_keyword_targets(torch.rand(2, 2, 6, 6), input_ids, 10, CLS_TOKEN_ID)
    with pytest.raises(ValueError, match=r"\(2, 6\)"):
        psl_keyword_targets(attention, input_ids[:, :5], 10, CLS_TOKEN_ID)
    with pytest.raises(ValueError, match="pad the captions"):
        psl_keyword_targets(attention, input_ids, 10, CLS_TOKEN_ID, positions_per_head=7)
    with pytest.raises(ValueError, match=r"\[CLS\] id"):
        psl_keyword_targets(attention, input_ids, 10, 10)
    with pytest.raises(ValueError, match="vocab size"):
        psl_keyword_targets(attention, input_ids, 8, CLS_TOKEN_ID, positions_per_head=6, num_keywords=6)
    logits = torch.randn(2, 10)
    with pytest.raises(ValueError, match="same vocabulary"):
        pseudo_keyword_loss(logits, torch.zeros(2, 9))
    with pytest.raises(ValueError, match="sigmoid probabilities"):
        pseudo_keyword_loss(logits, torch.zeros(2, 10), torch.zeros(2, 9), 0.4)
