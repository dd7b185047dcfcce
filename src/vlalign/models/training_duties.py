"""Per-step training duties: the work an alignment model needs around every optimizer step.

Some objectives keep state that the optimizer does not update: ALBEF's momentum encoders take an EMA step and its
queues take the step's momentum features (SIMLA and CODIS too; CODIS also re-normalises its prototypes); FDT clamps
its logit-scale parameter and follows a temperature schedule. A model declares that work by implementing the hooks of
[`TrainingDutiesMixin`]; [`TrainingDutiesCallback`] runs them from any `transformers.Trainer`, and vlalign's
`AlignmentTrainer` adds the callback by itself.

A model with duties refuses to train on weights that an optimizer changed without its duties having run (plain
`Trainer` without the callback, or a hand-written loop that forgot them), instead of silently training without them:
after the duties it records a few elements of every trainable parameter, and the next training forward compares them
bitwise. Values, not version counters, so that no optimizer kernel (Trainer's default fused AdamW writes parameters
without bumping them) and no compiled step can slip past. The one blind spot, an update that changes none of the
recorded elements (learning rate 0), is described at `TrainingDutiesMixin.check_training_duties`.

A step the optimizer skipped (an fp16 overflow, a non-finite loss `AlignmentTrainer` skips) runs no duties, and the
step number the model's hooks and schedules see counts only the steps that were applied.

This file is shipped with saved models (remote code): it imports only torch and transformers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import has_length

#: elements of each trainable parameter the duties check compares between optimizer steps
FINGERPRINT_SAMPLES = 4


class TrainingDutiesMixin:
    """Hooks a model overrides to declare its per-step duties and schedule inputs.

    * `set_training_progress(step, steps_per_epoch)`: called before each optimizer step's forward passes; schedules
      that depend on the step (ALBEF's α warm-up, FDT's temperature decay) read it, so a resumed run continues them.
    * `before_optimizer_step(step)` / `after_optimizer_step(step)`: run right before and after `optimizer.step()`.
    * `optimizer_step_skipped(step)`: instead of both when the optimizer skipped the step.
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
        """Work right after `optimizer.step()`. Overrides must call `super().after_optimizer_step(step)` last: it
        records the weights the duties leave, which the next training forward compares against."""
        self._weights_fingerprint = self._trainable_weights_fingerprint()

    def optimizer_step_skipped(self, step: int) -> None:
        """The optimizer skipped step `step` (a skipped non-finite loss, an fp16 overflow): no duty runs for it, and
        whatever its forward passes left for the duties is dropped (nothing by default)."""

    def training_log_values(self) -> dict[str, float]:
        return {}

    def training_callback(self) -> TrainingDutiesCallback:
        """A callback that runs this model's duties from a plain `transformers.Trainer`:
        `Trainer(model, ..., callbacks=[model.training_callback()])`."""
        return TrainingDutiesCallback()

    def restart_training_duties_check(self) -> None:
        """Take the current weights as the ones the duties left: a trainer calls this when training starts, after
        it loaded a checkpoint into the model."""
        self._weights_fingerprint = None

    @torch.no_grad()
    def _trainable_weights_fingerprint(self) -> tuple[tuple, torch.Tensor]:
        """(key, bytes) of the trainable weights: `FINGERPRINT_SAMPLES` evenly spaced elements of every trainable
        parameter, as raw bytes (a NaN compares equal to itself), keyed by the parameters' identities and shapes.

        Only the values are read, so any writer is seen: fused and foreach optimizer kernels, compiled steps,
        `.data` assignments. A strided view per parameter and one concatenation (one kernel on an accelerator)."""
        parameters = [p for p in self.parameters() if p.requires_grad]
        key = tuple((id(p), p.shape) for p in parameters)
        samples = []
        for parameter in parameters:
            local = parameter.to_local() if hasattr(parameter, "to_local") else parameter  # a DTensor's own shard
            local = local if local.is_contiguous() else local.reshape(-1)
            count = local.numel()
            samples.append(
                local.as_strided((min(count, FINGERPRINT_SAMPLES),), (max(1, count // FINGERPRINT_SAMPLES),))
            )
        values = torch.cat(samples) if samples else torch.zeros(0)
        return key, values.view(torch.uint8)

    @torch.compiler.disable  # reads parameter values as data, which a compiled graph would bake in
    def check_training_duties(self) -> None:
        """Raise if the trainable weights changed since the duties last ran. Called by training forwards (`training`
        mode, gradients enabled): between two optimizer steps every forward sees the same weights, and after a step
        the duties record the new ones (`after_optimizer_step`).

        A changed parameter set (a replaced or resized parameter, a sharded or unsharded one under FSDP) records
        anew instead of raising. Blind spot: an optimizer step that changes none of the sampled elements (learning
        rate 0, e.g. the first step of a warm-up from 0) goes unseen; its duties (EMA step, enqueue) are then missing
        without an error, and the refusal comes at the first forward after a step that does change the weights.
        """
        if not (self.has_training_duties and self.training and torch.is_grad_enabled()):
            return
        key, values = self._trainable_weights_fingerprint()
        recorded = getattr(self, "_weights_fingerprint", None)
        if recorded is None or recorded[0] != key:  # first training forward, or another parameter set
            self._weights_fingerprint = key, values
        elif not torch.equal(recorded[1], values):
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


def optimizer_step_was_skipped(optimizer: Any) -> bool:
    """Whether the optimizer step that just ran left the weights alone: Accelerate's wrapper (what Trainer steps)
    reports a step its fp16 `GradScaler` skipped on an overflow, and a step `AlignmentTrainer` skips for a non-finite
    loss. Trainer then leaves the lr schedule alone too."""
    return bool(getattr(optimizer, "step_was_skipped", False))


class TrainingDutiesCallback(TrainerCallback, ExportableState):
    """Runs a [`TrainingDutiesMixin`] model's duties from `transformers.Trainer` (which hands callbacks the unwrapped
    model). Also tells a collator with `set_epoch` the current epoch, for per-epoch random draws.

    A step the optimizer skipped (see [`optimizer_step_was_skipped`]) runs no duties and does not count for the
    model: the step the hooks and schedules see is the number of optimizer steps applied so far (Trainer's
    `global_step` minus `skipped_steps`, which checkpoints keep), as the lr schedule, which does not step either.
    """

    def __init__(self, data_collator: Any = None, steps_per_epoch: Callable[[], int | None] | None = None):
        self.data_collator = data_collator
        self.steps_per_epoch = steps_per_epoch
        #: optimizer steps of this run that were skipped
        self.skipped_steps = 0

    def state(self) -> dict:
        return {"args": {}, "attributes": {"skipped_steps": self.skipped_steps}}

    def applied_steps(self, state) -> int:
        """Optimizer steps applied so far: the step number the model's hooks and schedules see."""
        return state.global_step - self.skipped_steps

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        saved = state.stateful_callbacks.get(type(self).__name__) if state.global_step else None
        self.skipped_steps = saved["attributes"]["skipped_steps"] if isinstance(saved, dict) else 0
        if model := duties_model(model):  # weights loaded from a checkpoint are where the duties left them
            model.restart_training_duties_check()

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
            model.set_training_progress(self.applied_steps(state), steps_per_epoch)

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if (model := duties_model(model)) and not optimizer_step_was_skipped(optimizer):
            model.before_optimizer_step(self.applied_steps(state))

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        model = duties_model(model)
        if optimizer_step_was_skipped(optimizer):
            if model:
                model.optimizer_step_skipped(self.applied_steps(state))
            self.skipped_steps += 1
        elif model:
            model.after_optimizer_step(self.applied_steps(state))


__all__ = ["TrainingDutiesCallback", "TrainingDutiesMixin", "optimizer_step_was_skipped"]
