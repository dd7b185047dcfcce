"""Per-step training duties: the work an alignment model needs around every optimizer step.

Some objectives keep state that the optimizer does not update: ALBEF's momentum encoders take an EMA step and its
queues take the step's momentum features; FDT clamps its logit-scale parameter and follows a temperature schedule.
A model declares that work by implementing the hooks of [`TrainingDutiesMixin`]; [`TrainingDutiesCallback`] runs them
from any `transformers.Trainer`, and vlalign's `AlignmentTrainer` adds the callback by itself.

A model with duties refuses to train on weights that an optimizer changed without its duties having run (plain
`Trainer` without the callback, or a hand-written loop that forgot them), instead of silently training without them.

This file is shipped with saved models (remote code): it imports only torch and transformers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import has_length


class TrainingDutiesMixin:
    """Hooks a model overrides to declare its per-step duties and schedule inputs.

    * `set_training_progress(step, steps_per_epoch)`: called before each optimizer step's forward passes; schedules
      that depend on the step (ALBEF's α warm-up, FDT's temperature decay) read it, so a resumed run continues them.
    * `before_optimizer_step(step)` / `after_optimizer_step(step)`: run right before and after `optimizer.step()`.
    * `training_log_values()`: scalars worth logging next to the losses (α, temperatures, sparsity...).
    """

    #: names of the losses the model's training output carries, logged separately by `AlignmentTrainer`
    loss_names: tuple[str, ...] = ()
    #: whether training forwards check that the duties ran after every weight update (see `check_training_duties`)
    has_training_duties: bool = True

    def set_training_progress(self, step: int, steps_per_epoch: int) -> None:
        self._training_progress = (step, max(1, steps_per_epoch))

    def training_progress(self) -> tuple[int, int] | None:
        """(optimizer step, steps per epoch) as last set by the trainer, or None outside a trainer."""
        return getattr(self, "_training_progress", None)

    def before_optimizer_step(self, step: int) -> None:
        """Work between the backward pass and `optimizer.step()` (nothing by default)."""

    def after_optimizer_step(self, step: int) -> None:
        """Work right after `optimizer.step()`. Overrides must call `super().after_optimizer_step(step)`."""
        self._weights_version = self._duty_reference_version()

    def training_log_values(self) -> dict[str, float]:
        return {}

    def training_callback(self) -> TrainingDutiesCallback:
        """A callback that runs this model's duties from a plain `transformers.Trainer`:
        `Trainer(model, ..., callbacks=[model.training_callback()])`."""
        return TrainingDutiesCallback()

    def _duty_reference_version(self) -> tuple[int, int]:
        """(identity, version counter) of the largest trainable parameter: a weight matrix that only the optimizer
        writes (small parameters such as a temperature may be clamped in place by the forward pass)."""
        parameter = max((p for p in self.parameters() if p.requires_grad), key=lambda p: p.numel())
        return id(parameter), parameter._version

    @torch.compiler.disable  # bookkeeping on version counters, which a compiled graph would freeze as constants
    def check_training_duties(self) -> None:
        """Raise if an optimizer changed the weights since the duties last ran. Called by training forwards.

        Every in-place update of a parameter bumps its version counter; the duties record it after each step.
        """
        if not (self.has_training_duties and self.training and torch.is_grad_enabled()):
            return
        current = self._duty_reference_version()
        recorded = getattr(self, "_weights_version", None)
        if recorded is None or recorded[0] != current[0]:  # first training forward, or the parameter was replaced
            self._weights_version = current
        elif recorded[1] != current[1]:
            name = type(self).__name__
            raise RuntimeError(
                f"{name}'s weights were updated by an optimizer step but its per-step training duties did not run "
                f"({self.training_duties_description()}). Train with `vlalign.training.AlignmentTrainer`, or pass "
                f"`callbacks=[model.training_callback()]` to `transformers.Trainer`; in a hand-written loop call "
                "`model.before_optimizer_step(step)` and `model.after_optimizer_step(step)` around `optimizer.step()`."
            )

    def training_duties_description(self) -> str:
        return "per-step updates"


def duties_model(model: Any) -> TrainingDutiesMixin | None:
    """The model whose duties run: `model` itself, or the module inside a `torch.compile` wrapper (Trainer's
    `torch_compile=True` hands callbacks the compiled model); None when it has no duties."""
    model = getattr(model, "_orig_mod", model)
    return model if isinstance(model, TrainingDutiesMixin) else None


class TrainingDutiesCallback(TrainerCallback):
    """Runs a [`TrainingDutiesMixin`] model's duties from `transformers.Trainer` (which hands callbacks the unwrapped
    model). Also tells a collator with `set_epoch` the current epoch, for per-epoch random draws."""

    def __init__(self, data_collator: Any = None, steps_per_epoch: Callable[[], int | None] | None = None):
        self.data_collator = data_collator
        self.steps_per_epoch = steps_per_epoch

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.data_collator, "set_epoch"):  # state.epoch is fractional when resuming mid-epoch
            self.data_collator.set_epoch(int(state.epoch + 1e-6))

    def on_step_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        if model := duties_model(model):
            steps_per_epoch = state.max_steps // max(1, state.num_train_epochs) if state.max_steps else 1
            if train_dataloader is not None and has_length(train_dataloader):
                steps_per_epoch = len(train_dataloader) // max(1, args.gradient_accumulation_steps)
            elif self.steps_per_epoch is not None:  # a stream has no length, but may know its size
                steps_per_epoch = self.steps_per_epoch() or steps_per_epoch
            model.set_training_progress(state.global_step, steps_per_epoch)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model := duties_model(model):
            model.before_optimizer_step(state.global_step)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model := duties_model(model):
            model.after_optimizer_step(state.global_step)


__all__ = ["TrainingDutiesCallback", "TrainingDutiesMixin"]
