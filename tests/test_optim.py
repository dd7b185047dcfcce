"""Tests for ALBEF's optimizer parameter groups, learning-rate schedule and alpha ramp (vlalign.training.optim)."""

from __future__ import annotations

import io
import math
import pickle

import pytest
import torch
from torch import nn

from vlalign.training.optim import (
    EpochScheduleLambda,
    albef_alpha,
    albef_parameter_groups,
    create_albef_optimizer,
    get_epoch_schedule,
)

# ALBEF pretraining recipe (configs/Pretrain.yaml): lr 1e-4, warmup_lr 1e-5, min_lr 1e-5, 30 epochs, warm-up over
# the first 2000 iterations in 20 stages of 100. 2500 steps per epoch keeps the warm-up inside epoch 0.
PRETRAIN = dict(steps_per_epoch=2500, num_epochs=30, warmup_steps=2000, warmup_lr=1e-5, min_lr=1e-5)


class _OddBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(2, 3))  # 2-D, but named "*.bias": excluded by name
        self.relative_position_bias_table = nn.Parameter(torch.zeros(3, 2))  # contains "bias", not ".bias": decayed


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.temp = nn.Parameter(torch.tensor(0.07))  # 0-D: decayed
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))  # decayed
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))  # decayed
        self.scale = nn.Parameter(torch.ones(8))  # free-standing 1-D: not decayed
        self.norm = nn.LayerNorm(8)
        self.proj = nn.Linear(8, 4)
        self.odd = _OddBias()
        self.frozen = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))  # e.g. a momentum encoder
        self.frozen.requires_grad_(False)
        self.frozen_temp = nn.Parameter(torch.tensor(1.0), requires_grad=False)


EXPECTED_DECAY = ["temp", "cls_token", "pos_embed", "proj.weight", "odd.relative_position_bias_table"]
EXPECTED_NO_DECAY = ["scale", "norm.weight", "norm.bias", "proj.bias", "odd.bias"]


def _name_of(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


# ----------------------------------------------------------------------------------------------- parameter groups


def test_parameter_group_membership_is_exact():
    model = _Tiny()
    decay, no_decay = albef_parameter_groups(model, weight_decay=0.02)
    names = _name_of(model)
    assert [names[id(p)] for p in decay["params"]] == EXPECTED_DECAY
    assert [names[id(p)] for p in no_decay["params"]] == EXPECTED_NO_DECAY
    assert decay["param_names"] == EXPECTED_DECAY
    assert no_decay["param_names"] == EXPECTED_NO_DECAY
    assert decay["weight_decay"] == 0.02
    assert no_decay["weight_decay"] == 0.0
    assert decay["params"][0] is model.temp and model.temp.ndim == 0


def test_frozen_parameters_are_excluded():
    model = _Tiny()
    grouped = {id(p) for group in albef_parameter_groups(model, 0.02) for p in group["params"]}
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(frozen) == 5
    assert grouped.isdisjoint(frozen)
    assert grouped == trainable


def test_tied_parameters_are_listed_once():
    model = nn.Module()
    model.a = nn.Linear(4, 4)
    model.b = nn.Linear(4, 4)
    model.b.weight = model.a.weight
    decay, no_decay = albef_parameter_groups(model, 0.1)
    assert decay["param_names"] == ["a.weight"]
    assert no_decay["param_names"] == ["a.bias", "b.bias"]
    torch.optim.AdamW(albef_parameter_groups(model, 0.1), lr=1e-3)  # no "duplicate parameter" complaint


def test_contrast_with_trainer_default_decay_rule():
    """Both rules decay the 0-D `temp`; they disagree on free 1-D tensors and N-D tensors merely named like bias."""
    from transformers import Trainer

    model = _Tiny()
    trainer_decay = {n for n in Trainer.get_decay_parameter_names(None, model) if not n.startswith("frozen")}
    albef_decay = set(albef_parameter_groups(model, 0.02)[0]["param_names"])
    assert "temp" in trainer_decay and "temp" in albef_decay
    assert "norm.weight" not in trainer_decay and "norm.weight" not in albef_decay
    assert trainer_decay - albef_decay == {"scale"}  # free-standing 1-D tensor
    assert albef_decay - trainer_decay == {"odd.relative_position_bias_table"}  # N-D, name contains "bias"


def test_create_albef_optimizer_hyper_parameters():
    model = _Tiny()
    optimizer = create_albef_optimizer(model, lr=1e-4, weight_decay=0.02)
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["betas"] == (0.9, 0.999)
    assert optimizer.defaults["eps"] == 1e-8
    assert len(optimizer.param_groups) == 2
    decay, no_decay = optimizer.param_groups
    for group in optimizer.param_groups:
        assert group["lr"] == 1e-4
        assert group["betas"] == (0.9, 0.999)
        assert group["eps"] == 1e-8
        assert group["amsgrad"] is False
    assert decay["weight_decay"] == 0.02 and no_decay["weight_decay"] == 0.0
    assert decay["param_names"] == EXPECTED_DECAY and no_decay["param_names"] == EXPECTED_NO_DECAY

    custom = create_albef_optimizer(model, lr=3e-5, weight_decay=0.05, betas=(0.8, 0.99), eps=1e-6)
    assert custom.param_groups[0]["betas"] == (0.8, 0.99) and custom.param_groups[0]["eps"] == 1e-6
    assert custom.param_groups[0]["weight_decay"] == 0.05 and custom.param_groups[0]["lr"] == 3e-5


def test_weight_decay_is_applied_only_to_the_decay_group():
    """With zero gradients AdamW's update is pure decoupled decay: p <- p * (1 - lr * wd) for decayed tensors only."""
    torch.manual_seed(0)
    model = _Tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(0.5, 1.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = create_albef_optimizer(model, lr=0.1, weight_decay=0.5)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        factor = 0.95 if name in EXPECTED_DECAY else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, rtol=1e-6, atol=0, msg=name)


def test_optimizer_state_dict_round_trip_keeps_param_names():
    model = _Tiny()
    optimizer = create_albef_optimizer(model, lr=1e-4, weight_decay=0.02)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    optimizer.step()
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["param_groups"][0]["param_names"] == EXPECTED_DECAY
    restored = create_albef_optimizer(model, lr=1e-4, weight_decay=0.02)
    restored.load_state_dict(state)
    assert restored.param_groups[1]["param_names"] == EXPECTED_NO_DECAY
    torch.testing.assert_close(restored.state[model.temp]["exp_avg"], optimizer.state[model.temp]["exp_avg"])


def test_model_without_trainable_parameters_is_rejected():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        create_albef_optimizer(model, lr=1e-4, weight_decay=0.02)


# ----------------------------------------------------------------------------------------------------- schedule


def _optimizer(lrs=(1e-4,)) -> torch.optim.Optimizer:
    groups = [{"params": [nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs]
    return torch.optim.AdamW(groups, lr=lrs[0])


def _run(scheduler: torch.optim.lr_scheduler.LRScheduler, num_steps: int) -> list[list[float]]:
    """The lr each of the first `num_steps` optimizer steps runs with, stepping exactly as the Trainer does."""
    optimizer = scheduler.optimizer
    seen = []
    for _ in range(num_steps):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return seen


def _lr_at(scheduler, step: int, group: int = 0) -> float:
    return scheduler.lr_lambdas[group](step) * scheduler.base_lrs[group]


def test_pretraining_schedule_hand_computed_values():
    scheduler = get_epoch_schedule(_optimizer(), **PRETRAIN)
    lrs = [row[0] for row in _run(scheduler, 2502)]
    stage = 9e-5 / 20  # (lr - warmup_lr) / num_stages
    expected = {
        0: 1e-5,
        1: 1e-5,
        99: 1e-5,
        100: 1e-5 + stage,
        199: 1e-5 + stage,
        200: 1e-5 + 2 * stage,
        1000: 5.5e-5,
        1999: 1e-5 + 19 * stage,  # 9.55e-5
        2000: 1e-4,
        2499: 1e-4,  # last step of epoch 0
        2500: 9.97534852915723e-05,  # epoch 1: 1e-5 + 4.5e-5 * (1 + cos(pi / 30))
        2501: 9.97534852915723e-05,
    }
    for step, value in expected.items():
        assert lrs[step] == pytest.approx(value, rel=1e-9, abs=0), step
    assert lrs[1999] == pytest.approx(9.55e-5, rel=1e-9)
    # a staircase: exactly 20 distinct values during warm-up, then lr for the rest of epoch 0
    assert len(set(round(v, 15) for v in lrs[:2000])) == 20
    assert all(v == pytest.approx(1e-4, rel=1e-12) for v in lrs[2000:2500])

    spe = PRETRAIN["steps_per_epoch"]
    for step in (29 * spe, 29 * spe + 1234, 30 * spe - 1):  # the last epoch
        assert _lr_at(scheduler, step) == pytest.approx(1.0246514708427697e-05, rel=1e-9)
        assert _lr_at(scheduler, step) == pytest.approx(1.02e-5, rel=5e-3)
    for epoch in range(1, 30):
        value = 1e-5 + 0.5 * 9e-5 * (1 + math.cos(math.pi * epoch / 30))
        assert _lr_at(scheduler, epoch * spe) == pytest.approx(value, rel=1e-9)
        assert _lr_at(scheduler, (epoch + 1) * spe - 1) == pytest.approx(value, rel=1e-9)
    # past the last epoch the lr stays at min_lr instead of climbing back up the cosine
    assert _lr_at(scheduler, 30 * spe) == pytest.approx(1e-5, rel=1e-9)
    assert _lr_at(scheduler, 45 * spe) == pytest.approx(1e-5, rel=1e-9)


def test_coco_retrieval_schedule():
    spe = 7
    scheduler = get_epoch_schedule(_optimizer((1e-5,)), steps_per_epoch=spe, num_epochs=5, min_lr=1e-6)
    lrs = [row[0] for row in _run(scheduler, 5 * spe)]
    precise = [1e-05, 9.140576474687265e-06, 6.890576474687264e-06, 4.109423525312737e-06, 1.8594235253127369e-06]
    rounded = [1e-5, 9.14e-6, 6.89e-6, 4.11e-6, 1.86e-6]
    for epoch in range(5):
        for value in lrs[epoch * spe : (epoch + 1) * spe]:
            assert value == pytest.approx(precise[epoch], rel=1e-9), epoch
            assert value == pytest.approx(rounded[epoch], rel=1e-3), epoch


def test_flickr_retrieval_schedule_and_noop_warmup():
    spe = 3
    plain = get_epoch_schedule(_optimizer((1e-5,)), steps_per_epoch=spe, num_epochs=10, min_lr=1e-6)
    # the official retrieval config warms up from warmup_lr == lr, which must change nothing
    noop = get_epoch_schedule(
        _optimizer((1e-5,)), steps_per_epoch=spe, num_epochs=10, warmup_steps=2, warmup_lr=1e-5, min_lr=1e-6
    )
    a = [row[0] for row in _run(plain, 10 * spe)]
    b = [row[0] for row in _run(noop, 10 * spe)]
    assert a == pytest.approx(b, rel=1e-12)
    assert a[0] == pytest.approx(1e-5, rel=1e-12)
    assert a[5 * spe] == pytest.approx(5.5e-6, rel=1e-9)  # halfway: (lr + min_lr) / 2
    assert a[9 * spe] == pytest.approx(1.220245676671809e-06, rel=1e-9)


def test_two_param_groups_scale_consistently():
    single = get_epoch_schedule(_optimizer((1e-4,)), **PRETRAIN)
    double = get_epoch_schedule(_optimizer((1e-4, 2.5e-5)), **PRETRAIN)
    ref = _run(single, 2600)
    got = _run(double, 2600)
    for step in range(2600):
        assert got[step][0] == pytest.approx(ref[step][0], rel=1e-12)
        assert got[step][1] == pytest.approx(0.25 * got[step][0], rel=1e-12), step
    assert got[0][1] == pytest.approx(2.5e-6, rel=1e-12)  # warmup_lr scaled, not the absolute 1e-5
    assert _lr_at(double, 29 * 2500, group=1) == pytest.approx(0.25 * 1.0246514708427697e-05, rel=1e-9)


def test_reference_lr_override():
    optimizer = _optimizer((5e-5,))
    scheduler = get_epoch_schedule(optimizer, steps_per_epoch=10, num_epochs=2, min_lr=1e-5, base_lr=1e-4)
    # min_lr / base_lr = 0.1 is applied to the group's 5e-5 (step 20 is past the last epoch: min_lr)
    assert _lr_at(scheduler, 20) == pytest.approx(5e-6, rel=1e-12)
    assert _lr_at(scheduler, 10) == pytest.approx(0.5 * (5e-5 + 5e-6), rel=1e-12)
    default = get_epoch_schedule(_optimizer((5e-5,)), steps_per_epoch=10, num_epochs=2, min_lr=1e-5)
    assert _lr_at(default, 20) == pytest.approx(1e-5, rel=1e-12)


def test_smooth_warmup():
    scheduler = get_epoch_schedule(_optimizer(), warmup_stages=None, **PRETRAIN)
    lrs = [row[0] for row in _run(scheduler, 2001)]
    assert lrs[0] == pytest.approx(1e-5, rel=1e-12)
    assert lrs[1] == pytest.approx(1e-5 + 9e-5 / 2000, rel=1e-12)
    assert lrs[1000] == pytest.approx(5.5e-5, rel=1e-12)
    assert lrs[1999] == pytest.approx(1e-5 + 9e-5 * 1999 / 2000, rel=1e-12)
    assert lrs[2000] == pytest.approx(1e-4, rel=1e-12)
    assert all(b > a for a, b in zip(lrs[:2000], lrs[1:2001], strict=True))


def test_staircase_with_uneven_stages_and_defaults():
    # 50 steps in 20 stages: stage k starts at ceil(2.5 * k)
    scheduler = get_epoch_schedule(_optimizer(), steps_per_epoch=100, num_epochs=3, warmup_steps=50, min_lr=1e-5)
    stage = 9e-5 / 20  # warmup_lr defaults to min_lr
    assert _lr_at(scheduler, 0) == pytest.approx(1e-5, rel=1e-12)
    assert _lr_at(scheduler, 2) == pytest.approx(1e-5, rel=1e-12)
    assert _lr_at(scheduler, 3) == pytest.approx(1e-5 + stage, rel=1e-12)
    assert _lr_at(scheduler, 5) == pytest.approx(1e-5 + 2 * stage, rel=1e-12)
    assert _lr_at(scheduler, 49) == pytest.approx(1e-5 + 19 * stage, rel=1e-12)
    assert _lr_at(scheduler, 50) == pytest.approx(1e-4, rel=1e-12)


def test_warmup_is_cut_at_the_end_of_epoch_zero():
    scheduler = get_epoch_schedule(_optimizer(), steps_per_epoch=1000, num_epochs=30, warmup_steps=2000)
    assert _lr_at(scheduler, 999) == pytest.approx(1e-5 + 9 * 9e-5 / 20, rel=1e-12)
    assert _lr_at(scheduler, 1000) == pytest.approx(9.97534852915723e-05, rel=1e-9)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(steps_per_epoch=0, num_epochs=3),
        dict(steps_per_epoch=10, num_epochs=0),
        dict(steps_per_epoch=10, num_epochs=3, warmup_steps=-1),
        dict(steps_per_epoch=10, num_epochs=3, warmup_stages=0),
        dict(steps_per_epoch=10, num_epochs=3, min_lr=-1.0),
    ],
)
def test_invalid_schedule_arguments(kwargs):
    with pytest.raises(ValueError):
        get_epoch_schedule(_optimizer(), **kwargs)


def _save_load(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # what Trainer._load_optimizer_and_scheduler does


@pytest.mark.parametrize("resume_at", [0, 150, 1999, 2000, 2499, 2500, 3700])
def test_scheduler_state_dict_round_trip_and_resume(resume_at):
    model = _Tiny()
    optimizer = create_albef_optimizer(model, lr=1e-4, weight_decay=0.02)
    scheduler = get_epoch_schedule(optimizer, **PRETRAIN)
    assert isinstance(scheduler.lr_lambdas[0], EpochScheduleLambda)
    _run(scheduler, resume_at)
    scheduler_state = _save_load(scheduler.state_dict())
    optimizer_state = _save_load(optimizer.state_dict())
    assert scheduler_state["last_epoch"] == resume_at
    assert isinstance(scheduler_state["lr_lambdas"][0], dict)  # a closure would be dropped as None
    assert scheduler_state["lr_lambdas"][0]["warmup_steps"] == 2000

    # a fresh run, built from scratch as the Trainer does on resume_from_checkpoint
    resumed_optimizer = create_albef_optimizer(model, lr=1e-4, weight_decay=0.02)
    resumed = get_epoch_schedule(resumed_optimizer, **PRETRAIN)
    resumed_optimizer.load_state_dict(optimizer_state)
    resumed.load_state_dict(scheduler_state)
    assert resumed.last_epoch == resume_at
    assert resumed.get_last_lr() == scheduler.get_last_lr()
    assert _run(resumed, 700) == _run(scheduler, 700)


def test_lambda_state_is_restored_from_the_checkpoint():
    """The checkpointed schedule wins over the arguments the resumed scheduler was built with."""
    scheduler = get_epoch_schedule(_optimizer(), **PRETRAIN)
    _run(scheduler, 10)
    state = _save_load(scheduler.state_dict())
    optimizer_state = _save_load(scheduler.optimizer.state_dict())
    other = get_epoch_schedule(_optimizer(), steps_per_epoch=5, num_epochs=2, min_lr=1e-6)
    other.optimizer.load_state_dict(optimizer_state)
    other.load_state_dict(state)
    assert vars(other.lr_lambdas[0]) == vars(scheduler.lr_lambdas[0])
    assert _run(other, 3000) == _run(scheduler, 3000)


class _Regression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.temp = nn.Parameter(torch.tensor(0.07))
        self.linear = nn.Linear(4, 1)

    def forward(self, x, labels=None):
        return {"loss": ((self.linear(x).squeeze(-1) * self.temp - labels) ** 2).mean()}


class _Points(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict:
        generator = torch.Generator().manual_seed(index)
        return {"x": torch.randn(4, generator=generator), "labels": torch.tensor(float(index))}


def test_trainer_checkpoint_and_resume(tmp_path):
    """Through a real `Trainer`: lrs per step follow the schedule and resuming from a checkpoint reproduces them."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.lrs: dict[int, list[float]] = {}

        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            self.lrs[state.global_step] = [group["lr"] for group in optimizer.param_groups]

    def make_trainer() -> tuple[Trainer, Recorder]:
        torch.manual_seed(0)
        model = _Regression()
        optimizer = create_albef_optimizer(model, lr=1e-4, weight_decay=0.02)
        scheduler = get_epoch_schedule(
            optimizer, steps_per_epoch=4, num_epochs=3, warmup_steps=3, warmup_lr=1e-5, min_lr=1e-5, warmup_stages=3
        )
        args = TrainingArguments(
            output_dir=str(tmp_path),
            max_steps=12,
            per_device_train_batch_size=2,
            save_strategy="steps",
            save_steps=5,
            logging_steps=100,
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
        )
        recorder = Recorder()
        trainer = Trainer(
            model=model, args=args, train_dataset=_Points(), optimizers=(optimizer, scheduler), callbacks=[recorder]
        )
        return trainer, recorder

    trainer, recorder = make_trainer()
    trainer.train()
    mid = 1e-5 + 0.5 * 9e-5 * (1 + math.cos(math.pi / 3))  # epoch 1 of 3
    low = 1e-5 + 0.5 * 9e-5 * (1 + math.cos(2 * math.pi / 3))  # epoch 2 of 3
    expected = [1e-5, 4e-5, 7e-5, 1e-4] + [mid] * 4 + [low] * 4
    assert sorted(recorder.lrs) == list(range(12))
    for step, value in enumerate(expected):
        assert recorder.lrs[step] == pytest.approx([value, value], rel=1e-9), step
    assert (tmp_path / "checkpoint-5" / "scheduler.pt").is_file()

    resumed, resumed_recorder = make_trainer()
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-5"))
    assert sorted(resumed_recorder.lrs) == list(range(5, 12))
    assert resumed_recorder.lrs == {step: recorder.lrs[step] for step in range(5, 12)}


def test_lr_lambda_pickles():
    lam = get_epoch_schedule(_optimizer(), **PRETRAIN).lr_lambdas[0]
    clone = pickle.loads(pickle.dumps(lam))
    assert [clone(s) for s in (0, 100, 2000, 2500, 74999)] == [lam(s) for s in (0, 100, 2000, 2500, 74999)]
    assert all(isinstance(v, (int, float, type(None))) for v in vars(lam).values())


# -------------------------------------------------------------------------------------------------------- alpha


def test_albef_alpha():
    assert albef_alpha(0, 100) == 0.0
    assert albef_alpha(1, 100) == pytest.approx(0.004)
    assert albef_alpha(50, 100) == pytest.approx(0.2)
    assert albef_alpha(99, 100) == pytest.approx(0.396)
    assert albef_alpha(100, 100) == pytest.approx(0.4)
    assert albef_alpha(1234, 100) == pytest.approx(0.4)
    assert albef_alpha(50, 100, alpha=0.8) == pytest.approx(0.4)
    assert albef_alpha(100, 100, warmup_epochs=2.0) == pytest.approx(0.2)
    assert albef_alpha(25, 100, warmup_epochs=0.5) == pytest.approx(0.2)
    assert albef_alpha(0, 0) == pytest.approx(0.4)
    assert albef_alpha(3, 100, warmup_epochs=0.0) == pytest.approx(0.4)
    assert albef_alpha(3, -5) == pytest.approx(0.4)
    assert albef_alpha(3, 100, warmup_epochs=-1.0) == pytest.approx(0.4)
    assert albef_alpha(0, 100, alpha=0.0) == 0.0
    with pytest.raises(ValueError):
        albef_alpha(-1, 100)
