"""The ALBEF family's official optimizer parameter groups, the per-epoch learning-rate schedule (ALBEF's, kept by
SIMLA and CODIS, usable by any method) and the distillation-weight warm-up.

These re-implement what the official salesforce/ALBEF training scripts *actually run*, in a form that plugs into a
:class:`transformers.Trainer` (``Trainer(..., optimizers=(optimizer, scheduler))``) and that survives the Trainer's
checkpoint / resume cycle.

* :func:`albef_parameter_groups` / :func:`create_albef_optimizer`: AdamW whose weight decay follows ALBEF's
  ``optim_factory`` rule (no decay for 1-D tensors and ``*.bias``; everything else, 0-D ``temp`` included, is decayed).
* :func:`get_epoch_schedule`: a per-optimizer-step :class:`~torch.optim.lr_scheduler.LambdaLR` reproducing the
  staircase linear warm-up of epoch 0 and the per-epoch (constant within an epoch) cosine decay.
* :func:`albef_alpha`: the momentum-distillation weight ramp of the first epoch.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from ..models.modeling_albef import albef_alpha
from ..models.parameter_groups import albef_parameter_groups

__all__ = [
    "EpochScheduleLambda",
    "albef_alpha",
    "albef_parameter_groups",
    "create_albef_optimizer",
    "get_epoch_schedule",
    "with_temperature_learning_rate",
]


def create_albef_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over :func:`albef_parameter_groups` with ALBEF's hyper-parameters (torch-default betas and eps).

    ALBEF uses ``lr=1e-4, weight_decay=0.02`` for pretraining and ``lr=1e-5, weight_decay=0.02`` for retrieval
    fine-tuning. Pass the result (with :func:`get_epoch_schedule`) as ``Trainer(optimizers=(optimizer, scheduler))``.
    """
    groups = albef_parameter_groups(model, weight_decay)
    if not any(group["params"] for group in groups):
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def with_temperature_learning_rate(groups: list[dict], learning_rate: float) -> list[dict]:
    """`groups` with the learnable temperatures (0-D parameters: ALBEF's `temp`, FDT's `logit_scale`) moved to groups
    of their own at `learning_rate`, keeping their weight decay; these come after the given groups, so the optimizer's
    structure depends only on the model."""
    kept, moved = [], []
    for group in groups:
        names = group.get("param_names") or [""] * len(group["params"])
        split = {True: ([], []), False: ([], [])}
        for name, param in zip(names, group["params"], strict=True):
            split[param.ndim == 0][0].append(param)
            split[param.ndim == 0][1].append(name)
        for is_temperature, (params, param_names) in split.items():
            rebuilt = {**group, "params": params}
            if "param_names" in group:
                rebuilt["param_names"] = param_names
            if is_temperature and params:
                moved.append({**rebuilt, "lr": learning_rate})
            elif not is_temperature:
                kept.append(rebuilt)
    return kept + moved


class EpochScheduleLambda:
    """Picklable lr multiplier for :class:`~torch.optim.lr_scheduler.LambdaLR` (see :func:`get_epoch_schedule`).

    All state lives in plain ``int`` / ``float`` / ``None`` attributes, because ``LambdaLR.state_dict()`` stores
    ``self.__dict__`` of callable objects and the Trainer reloads it with ``torch.load(..., weights_only=True)``.
    ``warmup_ratio`` and ``min_ratio`` are ``warmup_lr / base_lr`` and ``min_lr / base_lr``.
    """

    def __init__(
        self,
        steps_per_epoch: int,
        num_epochs: int,
        warmup_steps: int,
        warmup_ratio: float,
        min_ratio: float,
        warmup_stages: int | None,
    ) -> None:
        self.steps_per_epoch = int(steps_per_epoch)
        self.num_epochs = int(num_epochs)
        self.warmup_steps = int(warmup_steps)
        self.warmup_ratio = float(warmup_ratio)
        self.min_ratio = float(min_ratio)
        self.warmup_stages = None if warmup_stages is None else int(warmup_stages)

    def cosine(self, epoch: int) -> float:
        """Multiplier of a whole epoch: ``min + (1 - min) * (1 + cos(pi * epoch / E)) / 2``, clamped at ``E``."""
        epoch = min(max(epoch, 0), self.num_epochs)
        return self.min_ratio + 0.5 * (1.0 - self.min_ratio) * (1.0 + math.cos(math.pi * epoch / self.num_epochs))

    def __call__(self, step: int) -> float:
        step = max(int(step), 0)
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        if epoch == 0 and step_in_epoch < self.warmup_steps:
            if self.warmup_stages is None:
                progress = step_in_epoch / self.warmup_steps
            else:
                # stage k covers steps [k * warmup_steps / stages, (k + 1) * warmup_steps / stages)
                progress = (step_in_epoch * self.warmup_stages // self.warmup_steps) / self.warmup_stages
            return self.warmup_ratio + progress * (1.0 - self.warmup_ratio)
        return self.cosine(epoch)

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in self.__dict__.items())
        return f"{type(self).__name__}({fields})"


def _reference_lr(optimizer: torch.optim.Optimizer) -> float:
    lr = optimizer.defaults.get("lr") if getattr(optimizer, "defaults", None) else None
    if lr is None:
        group = optimizer.param_groups[0]
        lr = group.get("initial_lr", group["lr"])
    return float(lr)


def get_epoch_schedule(
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    num_epochs: int,
    warmup_steps: int = 0,
    warmup_lr: float | None = None,
    min_lr: float = 1e-5,
    warmup_stages: int | None = 20,
    *,
    base_lr: float | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """ALBEF's learning-rate schedule as a per-optimizer-step :class:`~torch.optim.lr_scheduler.LambdaLR`.

    The official scripts drive timm's ``CosineLRScheduler`` by hand; what they run amounts to, for the optimizer
    step ``s`` (0-based, as ``LambdaLR`` counts: the Trainer steps the scheduler once after every optimizer step),
    with ``e, i = divmod(s, steps_per_epoch)`` and ``E = num_epochs``:

    * epoch 0, ``i < warmup_steps`` (warm-up): ``warmup_lr + floor(i / stage_len) * (lr - warmup_lr) / stages``
      with ``stage_len = warmup_steps / warmup_stages`` (the official ``scheduler.step(i // 100)`` every 100
      iterations, 20 stages over 2000 iterations), or the smooth ``warmup_lr + i / warmup_steps * (lr - warmup_lr)``
      when ``warmup_stages=None``. Warm-up never reaches beyond epoch 0 (the official loop only warms up there).
    * otherwise the lr is constant within epoch ``e``: ``min_lr + (lr - min_lr) * (1 + cos(pi * e / E)) / 2``,
      which is ``lr`` for epoch 0 after the warm-up. Steps past the last epoch (``e >= E``) stay at ``min_lr``.

    Recipes: pretraining ``lr=1e-4, warmup_lr=1e-5, min_lr=1e-5, E=30, warmup_steps=2000, warmup_stages=20``;
    retrieval fine-tuning ``lr=1e-5, min_lr=1e-6, E=5`` (COCO) or ``10`` (Flickr30k) with no warm-up (the official
    ``warmup_lr == lr``, i.e. ``warmup_steps=0``).

    ``steps_per_epoch`` and ``warmup_steps`` count *optimizer* steps (with gradient accumulation: the Trainer's
    update steps per epoch). The official code has no accumulation, so there one iteration is one step. The official
    loop applies each warm-up stage one iteration late (it calls ``scheduler.step`` after ``optimizer.step``); this
    schedule uses the clean formula above.

    Multiple parameter groups: ``warmup_lr`` and ``min_lr`` are absolute values relative to a reference base lr
    (``base_lr`` if given, else the optimizer's default ``lr``, i.e. the ``lr`` passed to its constructor / the
    Trainer's ``learning_rate``). They are converted into the ratios ``warmup_lr / base_lr`` and ``min_lr / base_lr``
    and the lambda returns a multiplier of each group's own initial lr, so a group whose lr is ``k * base_lr`` follows
    exactly ``k`` times the schedule of the reference group. ``warmup_lr=None`` means ``warmup_lr = min_lr`` (as in
    ALBEF pretraining, where both are 1e-5).

    The multiplier is an :class:`EpochScheduleLambda` instance (a top-level class holding plain numbers, not a closure), so
    ``scheduler.state_dict()`` contains it, survives ``torch.save`` / ``torch.load(weights_only=True)`` and a resumed
    run continues with identical learning rates.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if warmup_stages is not None and warmup_stages < 1:
        raise ValueError(f"warmup_stages must be None or >= 1, got {warmup_stages}")
    if min_lr < 0:
        raise ValueError(f"min_lr must be >= 0, got {min_lr}")
    reference = float(base_lr) if base_lr is not None else _reference_lr(optimizer)
    if reference <= 0:
        raise ValueError(f"the reference base lr must be > 0, got {reference}")
    if warmup_lr is None:
        warmup_lr = min_lr
    lr_lambda = EpochScheduleLambda(
        steps_per_epoch=steps_per_epoch,
        num_epochs=num_epochs,
        warmup_steps=warmup_steps,
        warmup_ratio=warmup_lr / reference,
        min_ratio=min_lr / reference,
        warmup_stages=warmup_stages,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


#: old names kept as deprecated aliases: the schedule serves every method, not ALBEF only
_DEPRECATED_NAMES = {"get_albef_schedule": "get_epoch_schedule", "AlbefLRLambda": "EpochScheduleLambda"}


def __getattr__(name: str):
    if name in _DEPRECATED_NAMES:
        new_name = _DEPRECATED_NAMES[name]
        warnings.warn(f"{name} is deprecated; use {new_name}.", FutureWarning, stacklevel=2)
        return globals()[new_name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
