"""The official VE, VQA and NLVR2 forwards take their EMA step at their start, before the momentum pass; vlalign takes it after
each optimizer step and, once per run, before the first momentum pass (`prime_momentum`). With momentum copies away
from the online weights (a pretraining checkpoint's own momentum encoders) the teacher of every step must follow the
official sequence θ_m(k+1) = m·θ_m(k) + (1-m)·θ(k), computed here by hand."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_albef_config
from test_albef_vqa import build as build_vqa
from test_albef_vqa import training_batch as vqa_batch
from test_nlvr_modeling import batch as nlvr_batch
from test_nlvr_modeling import build as build_nlvr

import vlalign

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 3


def build_ve() -> vlalign.AlbefForVisualEntailment:
    torch.manual_seed(0)
    return vlalign.AlbefForVisualEntailment(tiny_albef_config())


def ve_batch(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 245, (3, 6), generator=generator)
    input_ids[:, 0] = 2
    return {
        "pixel_values": torch.randn(3, 3, 32, 32, generator=generator),
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": torch.tensor([0, 1, 2]),
    }


def shift_momentum(model) -> None:
    """Momentum copies away from the online weights, as a pretraining checkpoint's momentum encoders are."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, momentum in model.momentum_parameter_pairs():
            momentum.add_(0.05 * torch.randn(momentum.shape, generator=generator))


def snapshot(tensors) -> list[torch.Tensor]:
    return [t.detach().clone() for t in tensors]


@pytest.mark.parametrize(
    ("build", "batch"),
    [(build_ve, ve_batch), (build_vqa, vqa_batch), (build_nlvr, lambda seed: nlvr_batch(seed=seed))],
    ids=["ve", "vqa", "nlvr2"],
)
def test_teacher_weights_follow_the_official_sequence(build, batch):
    model = build().train()
    shift_momentum(model)
    pairs = list(model.momentum_parameter_pairs())
    m = model.config.momentum
    expected = snapshot(momentum for _, momentum in pairs)  # θ_m(0)
    assert not all(torch.equal(o, t) for (o, _), t in zip(pairs, expected, strict=True))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for step in range(STEPS):
        model.set_training_progress(step, 100)
        online = snapshot(o for o, _ in pairs)  # θ(k), the weights the official forward k updates from
        expected = [m * t + (1 - m) * o for t, o in zip(expected, online, strict=True)]  # θ_m(k+1)
        output = model(**batch(step), alpha=0.4)  # the tiny config ramps α from 0
        # the teacher of forward k ran with θ_m(k+1), as the official forward's after its `_momentum_update()`
        for (_, momentum), value in zip(pairs, expected, strict=True):
            torch.testing.assert_close(momentum, value, atol=1e-6, rtol=0)
        assert output.logits_m is not None
        output.loss.backward()
        model.before_optimizer_step(step)
        optimizer.step()
        optimizer.zero_grad()
        model.after_optimizer_step(step)
    assert not torch.equal(*pairs[0])


def test_first_teacher_is_one_ema_step_from_the_loaded_momentum_weights():
    """Without priming the first teacher would run on θ_m(0): the logits differ by that step."""
    model = build_ve().train()
    shift_momentum(model)
    inputs = ve_batch(0)
    with torch.no_grad():  # no priming outside a training forward
        unprimed = model(**inputs, alpha=0.4).logits_m
    primed = model(**inputs, alpha=0.4).logits_m
    assert not torch.allclose(primed, unprimed, atol=1e-7)
    with torch.no_grad():
        fused_m, _ = model.encode(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], momentum=True)
        torch.testing.assert_close(primed, model.cls_head_m(fused_m[:, 0]), atol=0, rtol=0)


def test_priming_happens_once_per_run_and_not_on_resume():
    model = build_ve().train()
    shift_momentum(model)
    pairs = list(model.momentum_parameter_pairs())
    with torch.no_grad():
        model.eval()(**ve_batch(0))  # evaluation forwards leave the momentum copies alone
        model.train()(**ve_batch(0))  # so do forwards without gradients
    start = snapshot(momentum for _, momentum in pairs)
    assert all(torch.equal(momentum, value) for (_, momentum), value in zip(pairs, start, strict=True))
    model(**ve_batch(0))
    primed = snapshot(momentum for _, momentum in pairs)
    model(**ve_batch(1))  # a second forward of the same step (gradient accumulation): no second step
    assert all(torch.equal(momentum, value) for (_, momentum), value in zip(pairs, primed, strict=True))

    model.restart_training_duties_check()  # a trainer resumes at step 4: its checkpoint's teacher is already primed
    model.set_training_progress(4, 100)
    model(**ve_batch(2))
    assert all(torch.equal(momentum, value) for (_, momentum), value in zip(pairs, primed, strict=True))

    model.restart_training_duties_check()  # a new run from step 0 primes again
    model.set_training_progress(0, 100)
    model(**ve_batch(3))
    assert not all(torch.equal(momentum, value) for (_, momentum), value in zip(pairs, primed, strict=True))


def test_no_priming_without_distillation():
    torch.manual_seed(0)
    model = vlalign.AlbefForVisualEntailment(tiny_albef_config(distill=False)).train()
    before = snapshot(model.parameters())
    model(**ve_batch(0))
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
