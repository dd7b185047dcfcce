"""CODIS's loss units checked against hand formulas (plain `math` or elementary tensor ops written out here, never
the code under test), and the CODIS pretraining forward checked for its wiring: gradients, constant targets, the
code-loss reduction, and the exact reduction to ALBEF when every CODIS addition is switched off."""

from __future__ import annotations

import math

import ot
import pytest
import torch
import torch.nn.functional as F

import vlalign
from vlalign.methods import get_method
from vlalign.models.losses import (
    assignment_contrastive_loss,
    bank_contrastive_loss,
    queue_contrastive_loss,
    swapped_prediction_loss,
    transport_cost_loss,
)
from vlalign.models.sinkhorn import sinkhorn_log
from vlalign.recipes.albef import tiny_albef_config
from vlalign.recipes.codis import build_codis_tokenizer, tiny_codis_config

IMAGE_SIZE = 32
CAPTIONS = ["a red square at the top left", "a blue circle in the middle", "a green triangle at the bottom right"]


def logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def log_softmax(values: list[float]) -> list[float]:
    normaliser = logsumexp(values)
    return [v - normaliser for v in values]


def unit_rows(*shape: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype), dim=-1)


def pot_plan(scores: torch.Tensor) -> torch.Tensor:
    """POT's converged entropic plan (total mass 1) for cost 1 − scores with uniform marginals, ε = 0.05."""
    samples, prototypes = scores.shape
    a = torch.full((samples,), 1 / samples, dtype=torch.float64)
    b = torch.full((prototypes,), 1 / prototypes, dtype=torch.float64)
    return ot.sinkhorn(a, b, 1 - scores, 0.05, method="sinkhorn_log", numItermax=20000, stopThr=1e-13)


# ---------------------------------------------------------------------------------------------------------------------
# swapped_prediction_loss
# ---------------------------------------------------------------------------------------------------------------------

LOGITS = [[1.0, 2.0, 0.5, -1.0], [0.0, -0.5, 3.0, 1.0]]
PLAN = [[0.1, 0.6, 0.3, 0.0], [0.25, 0.25, 0.25, 0.25]]


def test_swapped_prediction_hand_value_and_gradient():
    expected = -sum(
        sum(p * lp for p, lp in zip(plan_row, log_softmax(logit_row), strict=True))
        for plan_row, logit_row in zip(PLAN, LOGITS, strict=True)
    ) / len(LOGITS)
    logits = torch.tensor(LOGITS, requires_grad=True)
    loss = swapped_prediction_loss(logits, torch.tensor(PLAN))
    assert loss.dtype == torch.float32
    assert abs(loss.item() - expected) < 1e-6
    loss.backward()
    # d/dlogits of the mean cross-entropy: (softmax − target) / B
    softmax = [[math.exp(v) for v in log_softmax(row)] for row in LOGITS]
    gradient = [
        [(s - p) / 2 for s, p in zip(s_row, p_row, strict=True)] for s_row, p_row in zip(softmax, PLAN, strict=True)
    ]
    torch.testing.assert_close(logits.grad, torch.tensor(gradient), atol=1e-7, rtol=0)


def test_swapped_prediction_one_hot_targets():
    codes = torch.tensor([2, 0, 3])
    targets = F.one_hot(codes, 4).float()
    # very large logits on the target code: the prediction is the target, nothing left to learn
    assert swapped_prediction_loss(50.0 * targets, targets).abs().item() < 1e-6
    # the same confident prediction against another code costs the logit gap (log(e^50 + 3) − 0 ≈ 50)
    wrong = F.one_hot(torch.tensor([1, 3, 0]), 4).float()
    assert abs(swapped_prediction_loss(50.0 * targets, wrong).item() - 50.0) < 1e-4


@pytest.mark.parametrize("prototypes", [4, 12])
def test_swapped_prediction_with_uniform_logits_is_log_k(prototypes):
    generator = torch.Generator().manual_seed(0)
    logits = torch.rand(3, 1, generator=generator).expand(3, prototypes)  # a constant row per sample
    plan_a = torch.rand(3, prototypes, generator=generator)
    plan_b = torch.rand(3, prototypes, generator=generator)
    plan_a, plan_b = plan_a / plan_a.sum(1, keepdim=True), plan_b / plan_b.sum(1, keepdim=True)
    loss_t2p, loss_i2p = swapped_prediction_loss(logits, plan_a), swapped_prediction_loss(logits, plan_b)
    assert abs(loss_t2p.item() - math.log(prototypes)) < 1e-5
    assert abs((loss_t2p + loss_i2p).item() - 2 * math.log(prototypes)) < 1e-5


# ---------------------------------------------------------------------------------------------------------------------
# assignment_contrastive_loss
# ---------------------------------------------------------------------------------------------------------------------

AC_LOGITS = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]
AC_PLANS = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]]


def hand_assignment_contrast(logits, plans, idx, plan_idx) -> float:
    """−(1/B) Σ_i Σ_j y_ij · log softmax_j(Σ_k plans[j][k] · log p_i[k]), y uniform over the candidates of i's image."""
    total = 0.0
    for row, image in zip(logits, idx, strict=True):
        log_p = log_softmax(row)
        pair = [sum(q * lp for q, lp in zip(plan, log_p, strict=True)) for plan in plans]
        log_q = log_softmax(pair)
        positives = [j for j, other in enumerate(plan_idx) if other == image]
        total -= sum(log_q[j] for j in positives) / len(positives)
    return total / len(logits)


def test_assignment_contrast_hand_value():
    expected = hand_assignment_contrast(AC_LOGITS, AC_PLANS, [0, 1], [0, 1, 2])
    loss = assignment_contrastive_loss(
        torch.tensor(AC_LOGITS), torch.tensor(AC_PLANS), torch.tensor([0, 1]), torch.tensor([0, 1, 2])
    )
    assert abs(loss.item() - expected) < 1e-6


def test_assignment_contrast_positives_by_image_index():
    # students 0 and 1 are captions of image 5, whose two candidate plans are both positives (targets 1/2 each)
    idx, plan_idx = [5, 5], [5, 5, 7]
    expected = hand_assignment_contrast(AC_LOGITS, AC_PLANS, idx, plan_idx)
    loss = assignment_contrastive_loss(
        torch.tensor(AC_LOGITS), torch.tensor(AC_PLANS), torch.tensor(idx), torch.tensor(plan_idx)
    )
    assert abs(loss.item() - expected) < 1e-6
    # a single positive per row gives another value: the shared index is honoured
    single = hand_assignment_contrast(AC_LOGITS, AC_PLANS, [5, 6], [5, 6, 7])
    assert abs(loss.item() - single) > 1e-3


def test_assignment_contrast_positive_logit_is_the_swapped_prediction_loss():
    """Its InfoNCE logit of the positive pair is minus the swapped-prediction loss of that pair, so
    loss = swapped prediction on the positives + mean log-partition over the candidates. With a single candidate the
    two terms cancel: the loss is 0 (one-way softmax), *not* the swapped-prediction loss."""
    logits, plans = torch.tensor(AC_LOGITS), torch.tensor(AC_PLANS)
    idx, plan_idx = torch.tensor([1, 0]), torch.tensor([0, 1, 2])
    partition = sum(
        logsumexp([sum(q * lp for q, lp in zip(plan, log_softmax(row), strict=True)) for plan in AC_PLANS])
        for row in AC_LOGITS
    ) / len(AC_LOGITS)
    expected = swapped_prediction_loss(logits, plans[idx]).item() + partition
    assert abs(assignment_contrastive_loss(logits, plans, idx, plan_idx).item() - expected) < 1e-5
    for row in range(2):
        one = assignment_contrastive_loss(logits[row : row + 1], plans[row : row + 1], idx[:1], idx[:1])
        assert one.abs().item() < 1e-7


# ---------------------------------------------------------------------------------------------------------------------
# transport_cost_loss
# ---------------------------------------------------------------------------------------------------------------------


def test_transport_cost_hand_value_and_gradient():
    scores = [[0.5, -0.2, 0.9], [0.1, 0.3, -0.4]]
    plan = [[0.2, 0.3, 0.5], [0.6, 0.4, 0.0]]
    expected = (
        sum(sum(p * (1 - s) for p, s in zip(pr, sr, strict=True)) for pr, sr in zip(plan, scores, strict=True)) / 2
    )
    scores_t = torch.tensor(scores, requires_grad=True)
    loss = transport_cost_loss(scores_t, torch.tensor(plan))
    assert abs(loss.item() - expected) < 1e-6
    loss.backward()
    torch.testing.assert_close(scores_t.grad, -torch.tensor(plan) / 2, atol=1e-7, rtol=0)


def test_transport_cost_with_the_converged_plan_is_the_pot_cost_and_has_the_ot_gradient():
    features, prototypes = unit_rows(10, 8, seed=0, dtype=torch.float64), unit_rows(16, 8, seed=1, dtype=torch.float64)
    scores = features @ prototypes.t()
    samples = scores.shape[0]
    plan = sinkhorn_log(scores, 0.05, 20000)
    pot = pot_plan(scores)
    # POT's transport cost <G, 1 − S> of its own converged plan, and <G·N, 1 − S>/N written out
    pot_cost = ot.sinkhorn2(
        torch.full((samples,), 1 / samples, dtype=torch.float64), torch.full((16,), 1 / 16, dtype=torch.float64),
        1 - scores, 0.05, method="sinkhorn_log", numItermax=20000, stopThr=1e-13,
    )  # fmt: skip
    assert abs(float(pot_cost) - float(((pot * samples) * (1 - scores)).sum() / samples)) < 1e-12
    scores_grad = scores.clone().requires_grad_()
    loss = transport_cost_loss(scores_grad, plan)
    assert abs(loss.item() - float(pot_cost)) < 1e-6
    loss.backward()
    torch.testing.assert_close(scores_grad.grad, -plan / samples, atol=1e-7, rtol=0)

    # Envelope theorem: the derivative of the converged entropic OT value W(S) = min_G <G, 1−S> + ε Σ G log G
    # along a direction E is −<G*, E>, the directional derivative of this loss with the plan held constant.
    def entropic_value(s: torch.Tensor) -> float:
        g = pot_plan(s)
        return float((g * (1 - s)).sum() + 0.05 * (g * g.log()).sum())

    direction = torch.randn(scores.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    step = 1e-4
    finite_difference = (entropic_value(scores + step * direction) - entropic_value(scores - step * direction)) / (
        2 * step
    )
    assert abs(float((scores_grad.grad * direction).sum()) - finite_difference) < 1e-5


# ---------------------------------------------------------------------------------------------------------------------
# bank_contrastive_loss / queue_contrastive_loss
# ---------------------------------------------------------------------------------------------------------------------


def contrast_inputs():
    return dict(
        image_feat=unit_rows(3, 8, seed=10),
        text_feat=unit_rows(3, 8, seed=11),
        image_feat_m=unit_rows(3, 8, seed=12),
        text_feat_m=unit_rows(3, 8, seed=13),
        image_queue=unit_rows(4, 8, seed=14).t(),
        text_queue=unit_rows(4, 8, seed=15).t(),
        idx=torch.arange(3),
        queue_idx=torch.full((4,), -100),
        temp=0.1,
    )


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_queue_contrast_is_the_mean_of_its_two_directions(alpha):
    out = queue_contrastive_loss(**contrast_inputs(), alpha=alpha)
    assert torch.equal(out.loss, (out.loss_i2t + out.loss_t2i) / 2)
    assert out.loss_i2t.item() != out.loss_t2i.item()


def hand_bank_contrast(feat, feat_m, bank, temp, alpha) -> float:
    """−(1/B) Σ_b Σ_j y_bj log softmax_j(feat_b · bank_j / τ), y = α·softmax(feat_m_b · bank / τ) + (1−α)·onehot(b)."""
    sims = (feat @ bank / temp).tolist()
    sims_m = (feat_m @ bank / temp).tolist()
    total = 0.0
    for b, (row, row_m) in enumerate(zip(sims, sims_m, strict=True)):
        log_q = log_softmax(row)
        teacher = [math.exp(v) for v in log_softmax(row_m)]
        targets = [alpha * t + (1 - alpha) * (1.0 if j == b else 0.0) for j, t in enumerate(teacher)]
        total -= sum(y * lq for y, lq in zip(targets, log_q, strict=True))
    return total / len(sims)


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_bank_contrast_hand_value(alpha):
    x = contrast_inputs()
    bank = torch.cat([x["text_feat_m"].t(), x["text_queue"]], dim=1)
    bank_idx = torch.cat([x["idx"], x["queue_idx"]])
    loss, sim = bank_contrastive_loss(x["image_feat"], x["image_feat_m"], bank, x["idx"], bank_idx, 0.1, alpha)
    assert abs(loss.item() - hand_bank_contrast(x["image_feat"], x["image_feat_m"], bank, 0.1, alpha)) < 1e-5
    torch.testing.assert_close(sim, x["image_feat"] @ bank / 0.1)
    if alpha == 0:  # one-hot on the own column: −(1/B) Σ_b [s_bb − logsumexp_j s_bj]
        sims = (x["image_feat"] @ bank / 0.1).tolist()
        one_hot = -sum(row[b] - logsumexp(row) for b, row in enumerate(sims)) / 3
        assert abs(loss.item() - one_hot) < 1e-5
    out = queue_contrastive_loss(**x, alpha=alpha)
    assert abs(out.loss_i2t.item() - hand_bank_contrast(x["image_feat"], x["image_feat_m"], bank, 0.1, alpha)) < 1e-5
    image_bank = torch.cat([x["image_feat_m"].t(), x["image_queue"]], dim=1)
    assert (
        abs(out.loss_t2i.item() - hand_bank_contrast(x["text_feat"], x["text_feat_m"], image_bank, 0.1, alpha)) < 1e-5
    )


# ---------------------------------------------------------------------------------------------------------------------
# The CODIS pretraining forward
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return build_codis_tokenizer(CAPTIONS)


def micro_codis_config(tokenizer, **overrides) -> vlalign.CodisConfig:
    """The recipes' tiny CODIS shrunk by the registry's test size caps, 12 prototypes unless overridden."""
    return tiny_codis_config(tokenizer, IMAGE_SIZE, **{**get_method("codis").test_overrides, **overrides})


def make_batch(tokenizer, batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, len(tokenizer), (batch, 7), generator=generator)
    input_ids[:, 0] = tokenizer.cls_token_id
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    input_ids[1, 5:] = tokenizer.pad_token_id
    return {
        "pixel_values": torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
    }


def codis_model(config: vlalign.CodisConfig, seed: int = 0) -> vlalign.CodisForPreTraining:
    torch.manual_seed(seed)
    return vlalign.CodisForPreTraining(config).train()


def forward(model, batch, seed: int = 1, **kwargs):
    return model(**batch, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_uniform_code_scores_give_two_log_k(tokenizer):
    """All prototypes equal: every student scores all K codes alike, so each swapped-prediction term is log K
    whatever the targets, and L_code (sum) = 2 log K; the OT cost is then 1 − cosine to that prototype, per modality."""
    model = codis_model(micro_codis_config(tokenizer, codebook_size=8))
    with torch.no_grad():
        model.base_model.codebook.prototypes.copy_(unit_rows(1, 16, seed=3).expand(8, 16) * 2.5)
    out = forward(model, make_batch(tokenizer))
    assert abs(out.loss_t2p.item() - math.log(8)) < 1e-5 and abs(out.loss_i2p.item() - math.log(8)) < 1e-5
    assert abs(out.loss_code.item() - 2 * math.log(8)) < 1e-5
    prototype = unit_rows(1, 16, seed=3)[0]
    expected_ot = sum((1 - feat @ prototype).mean().item() for feat in (out.image_feat, out.text_feat))
    assert abs(out.loss_ot.item() - expected_ot) < 1e-5


def test_code_loss_reduction_mean_is_half_the_sum(tokenizer):
    summed_model = codis_model(micro_codis_config(tokenizer, code_loss_reduction="sum"))
    mean_model = codis_model(micro_codis_config(tokenizer, code_loss_reduction="mean"), seed=7)
    mean_model.load_state_dict(summed_model.state_dict())  # same weights, queues and codebook
    batch = make_batch(tokenizer)
    summed, mean = forward(summed_model, batch), forward(mean_model, batch)
    assert torch.equal(summed.loss_t2p, mean.loss_t2p) and torch.equal(summed.loss_i2p, mean.loss_i2p)
    assert torch.equal(summed.loss_code, summed.loss_t2p + summed.loss_i2p)
    assert torch.equal(mean.loss_code, summed.loss_code / 2)
    torch.testing.assert_close(summed.loss - mean.loss, summed.loss_code / 2, atol=1e-5, rtol=0)


def swav_plan(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's direct Sinkhorn form, written out independently of `sinkhorn.py` (float64)."""
    q = torch.exp(scores.double() / epsilon).t()
    q = q / q.sum()
    prototypes, samples = q.shape
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / prototypes
        q = q / q.sum(dim=0, keepdim=True) / samples
    return (q * samples).t()


@pytest.mark.parametrize("code_loss_type", ["swapped_prediction", "assignment_contrast"])
def test_forward_losses_match_a_hand_recomputation(tokenizer, code_loss_type):
    """The model's plans, L_code and L_ot rebuilt from its own features and codebook: teacher plans from the momentum
    features, the *text* student predicting the *image* teacher's plan (t2p) and the reverse, OT on student plans."""
    config = micro_codis_config(tokenizer, code_loss_type=code_loss_type)
    model = codis_model(config)
    out = forward(model, make_batch(tokenizer))
    prototypes = F.normalize(model.base_model.codebook.prototypes.detach().double(), dim=-1)
    eps, iterations, tau = config.sinkhorn_epsilon, config.sinkhorn_iterations, config.prototype_temperature
    plan_image = swav_plan(out.image_feat_m.double() @ prototypes.t(), eps, iterations)
    plan_text = swav_plan(out.text_feat_m.double() @ prototypes.t(), eps, iterations)
    torch.testing.assert_close(out.transport_i2p.double(), plan_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.transport_t2p.double(), plan_text, atol=1e-5, rtol=0)
    log_p_image = torch.log_softmax(out.image_feat.detach().double() @ prototypes.t() / tau, dim=-1)
    log_p_text = torch.log_softmax(out.text_feat.detach().double() @ prototypes.t() / tau, dim=-1)
    for logits, feat in ((out.code_logits_image, out.image_feat), (out.code_logits_text, out.text_feat)):
        torch.testing.assert_close(logits.double(), feat.detach().double() @ prototypes.t() / tau, atol=1e-5, rtol=0)
    if code_loss_type == "swapped_prediction":
        t2p = -(plan_image * log_p_text).sum(1).mean()
        i2p = -(plan_text * log_p_image).sum(1).mean()
    else:  # InfoNCE over the batch's plans, pair score Σ_k plan_j,k log p_i,k, positive: the own pair
        t2p = F.cross_entropy(log_p_text @ plan_image.t(), torch.arange(4))
        i2p = F.cross_entropy(log_p_image @ plan_text.t(), torch.arange(4))
    assert abs(out.loss_t2p.item() - t2p.item()) < 1e-4
    assert abs(out.loss_i2p.item() - i2p.item()) < 1e-4
    assert abs(out.loss_code.item() - (t2p + i2p).item()) < 1e-4
    expected_ot = 0.0
    for feat in (out.image_feat, out.text_feat):
        scores = feat.detach().double() @ prototypes.t()
        expected_ot += (swav_plan(scores, eps, iterations) * (1 - scores)).sum(1).mean().item()
    assert abs(out.loss_ot.item() - expected_ot) < 1e-4


@pytest.mark.parametrize("loss_name", ["loss_code", "loss_ot"])
def test_gradient_flow_of_the_codebook_losses(tokenizer, loss_name):
    model = codis_model(micro_codis_config(tokenizer))
    out = forward(model, make_batch(tokenizer))
    getattr(out, loss_name).backward()
    online = model.base_model
    for name, parameter in [
        ("codebook.prototypes", online.codebook.prototypes),
        ("vision_proj.weight", online.vision_proj.weight),
        ("text_proj.weight", online.text_proj.weight),
    ]:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, (
            f"{loss_name} sends no gradient to {name}"
        )
    momentum = [(name, p) for module in model.momentum_modules() for name, p in module.named_parameters()]
    assert momentum and all(p.grad is None for _, p in momentum), [n for n, p in momentum if p.grad is not None]
    assert online.itm_head.weight.grad is None and model.mlm_head.dense.weight.grad is None
    for plan in (out.transport_i2p, out.transport_t2p):
        assert not plan.requires_grad
        torch.testing.assert_close(plan.sum(dim=1), torch.ones(4), atol=1e-6, rtol=0)


def test_with_every_codis_addition_off_it_is_albef_bit_for_bit(tokenizer):
    overrides = get_method("albef").test_overrides
    albef = vlalign.AlbefForPreTraining(tiny_albef_config(tokenizer, IMAGE_SIZE, **overrides)).train()
    codis = codis_model(
        micro_codis_config(tokenizer, align_intra_modal=False, code_loss_weight=0.0, ot_loss_weight=0.0), seed=5
    )
    albef_state = {key.replace("albef.", "codis.", 1): value for key, value in albef.state_dict().items()}
    result = codis.load_state_dict(albef_state, strict=False)
    assert result.missing_keys == ["codis.codebook.prototypes"] and result.unexpected_keys == []
    batch = make_batch(tokenizer)
    mlm_input_ids, mlm_labels = albef.mask_tokens(batch["input_ids"], torch.Generator().manual_seed(3))
    assert (mlm_labels != -100).any()
    kwargs = dict(mlm_input_ids=mlm_input_ids, mlm_labels=mlm_labels)
    expected, actual = forward(albef, batch, **kwargs), forward(codis, batch, **kwargs)
    assert torch.equal(actual.loss_align, expected.loss_itc)
    assert torch.equal(actual.loss_itc, expected.loss_itc)
    assert torch.equal(actual.loss_itm, expected.loss_itm) and torch.equal(actual.loss_mlm, expected.loss_mlm)
    assert torch.equal(actual.loss, expected.loss)
    assert actual.loss_code is None and actual.loss_ot is None and actual.loss_i2i is None
