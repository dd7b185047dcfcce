"""ALBEF's optimizer parameter groups, learning-rate schedule and distillation-weight warm-up.

These re-implement what the official salesforce/ALBEF training scripts *actually run*, in a form that plugs into a
:class:`transformers.Trainer` (``Trainer(..., optimizers=(optimizer, scheduler))``) and that survives the Trainer's
checkpoint / resume cycle.

* :func:`albef_parameter_groups` / :func:`create_albef_optimizer`: AdamW whose weight decay follows ALBEF's
  ``optim_factory`` rule (no decay for 1-D tensors and ``*.bias``; everything else, 0-D ``temp`` included, is decayed).
* :func:`get_albef_schedule`: a per-optimizer-step :class:`~torch.optim.lr_scheduler.LambdaLR` reproducing the
  staircase linear warm-up of epoch 0 and the per-epoch (constant within an epoch) cosine decay.
* :func:`albef_alpha`: the momentum-distillation weight ramp of the first epoch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..models.modeling_albef import albef_alpha

__all__ = [
    "AlbefLRLambda",
    "albef_alpha",
    "albef_parameter_groups",
    "create_albef_optimizer",
    "get_albef_schedule",
    "with_temperature_learning_rate",
]


def _is_no_decay(name: str, param: torch.Tensor) -> bool:
    """ALBEF's rule: 1-D tensors (LayerNorm weights, biases, ...) and anything named ``*.bias`` are not decayed.

    0-D tensors (the learnable contrastive temperature ``temp``) and N-D tensors (``cls_token``, position
    embeddings, projection matrices) are decayed. A top-level parameter literally called ``bias`` has no dot, so
    only its shape (1-D in practice) keeps it out of weight decay - exactly as in the official code.
    """
    return param.ndim == 1 or name.endswith(".bias")


def albef_parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split the trainable parameters of ``model`` into ALBEF's ``[decay, no_decay]`` AdamW parameter groups.

    The official ``optim_factory`` (inherited from timm's ``add_weight_decay``) puts a parameter in the no-decay group
    when ``param.ndim == 1`` or ``name.endswith(".bias")``; all other trainable parameters get ``weight_decay``.
    Parameters with ``requires_grad=False`` (the momentum encoders, frozen towers) are left out entirely. Shared
    (tied) parameters are listed once, under the first name ``named_parameters()`` yields.

    A model may exempt more parameters by name with a `no_weight_decay_suffixes` attribute (CODIS's prototypes, which
    are re-normalised after every step).

    Consequences worth knowing: the 0-D learnable temperature ``temp``, the ViT ``cls_token`` and the position
    embeddings **are** decayed; LayerNorm weights and all biases are **not**.

    Contrast with the :class:`transformers.Trainer` default (``Trainer.get_decay_parameter_names`` in
    transformers 5.x): it decides by *module type and name*, never by shape. It exempts every parameter inside an
    ``nn.LayerNorm`` and every parameter whose lower-cased full name contains ``bias``, ``layernorm``, ``rmsnorm``,
    a ``norm`` path component or ``_norm``. A 0-D parameter therefore gets weight decay there too (``temp`` is
    decayed by both rules), but the two rules disagree on e.g. a free-standing 1-D parameter that is not in a norm
    layer (decayed by the Trainer, not by ALBEF) or a multi-dimensional tensor whose name merely contains ``bias``,
    such as ``relative_position_bias_table`` (exempt in the Trainer, decayed by ALBEF).

    Returns two groups, always in the order ``[decay, no_decay]`` (either may be empty, so the structure of the
    optimizer - and therefore of its checkpoints - does not depend on the model). Each group is a dict with
    ``"params"`` (tensors), ``"weight_decay"`` and ``"param_names"``. ``param_names`` is the key torch (>= 2.6)
    itself uses for named parameter groups; it is carried through ``optimizer.state_dict()`` and older torch
    versions simply keep it as an extra group option, so it is kept for debuggability.
    """
    decay: list[torch.Tensor] = []
    decay_names: list[str] = []
    no_decay: list[torch.Tensor] = []
    no_decay_names: list[str] = []
    exempt = tuple(getattr(model, "no_weight_decay_suffixes", ()))
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if _is_no_decay(name, param) or name.endswith(exempt):
            no_decay.append(param)
            no_decay_names.append(name)
        else:
            decay.append(param)
            decay_names.append(name)
    return [
        {"params": decay, "weight_decay": float(weight_decay), "param_names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "param_names": no_decay_names},
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
    fine-tuning. Pass the result (with :func:`get_albef_schedule`) as ``Trainer(optimizers=(optimizer, scheduler))``.
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


class AlbefLRLambda:
    """Picklable lr multiplier for :class:`~torch.optim.lr_scheduler.LambdaLR` (see :func:`get_albef_schedule`).

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


def get_albef_schedule(
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

    The multiplier is an :class:`AlbefLRLambda` instance (a top-level class holding plain numbers, not a closure), so
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
    lr_lambda = AlbefLRLambda(
        steps_per_epoch=steps_per_epoch,
        num_epochs=num_epochs,
        warmup_steps=warmup_steps,
        warmup_ratio=warmup_lr / reference,
        min_ratio=min_lr / reference,
        warmup_stages=warmup_stages,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
