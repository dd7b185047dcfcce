"""`AlignmentTrainer`: transformers' `Trainer` for every vlalign method.

What it adds to `Trainer`, the same for a fusion model (ALBEF) and a dual encoder (FDT):

* the model's per-step duties run around every optimizer step (`TrainingDutiesCallback`: ALBEF's EMA and queue
  update, FDT's logit-scale clamp; schedules such as ALBEF's α warm-up or FDT's temperature read the step);
* each named loss the model's output carries (`loss_itc`, `loss_itm`, ...) and the model's own log values (α,
  temperatures) are logged;
* the method's official optimizer parameter groups (from the method registry), and ALBEF's per-epoch cosine
  schedule as an option;
* `evaluate()` runs image-text retrieval (ITC ranking, ITM re-ranking where the model has ITM) on an
  evaluation-layout dataset (one row per image, `captions`).

Everything a resume needs lives in the model's state dict (momentum encoders, queues, codebooks) or is a function of
the step, and the Trainer checkpoints optimizer, scheduler, RNG states and data position, so resuming is exact.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainingArguments

from ..evaluation import evaluate_retrieval
from ..methods import method_of
from ..models.training_duties import TrainingDutiesCallback, TrainingDutiesMixin
from .optim import get_albef_schedule


@dataclass
class AlignmentTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults that suit alignment pretraining, and the official-recipe switches."""

    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep raw image/caption columns for the collator (it runs the processor)."}
    )
    dataloader_drop_last: bool = field(
        default=True, metadata={"help": "Every step sees a full global batch, as the official code assumes."}
    )
    ddp_broadcast_buffers: bool | None = field(
        default=False, metadata={"help": "Queues stay consistent through the gather; no need to re-broadcast them."}
    )
    official_optimizer: bool = field(
        default=True, metadata={"help": "AdamW over the method's official parameter groups (weight-decay rule)."}
    )
    albef_lr_schedule: bool = field(
        default=False,
        metadata={"help": "ALBEF's schedule: staircase warm-up from warmup_lr, then a per-epoch cosine to min_lr."},
    )
    warmup_lr: float | None = field(default=None, metadata={"help": "Warm-up start lr of ALBEF's schedule."})
    min_lr: float = field(default=1e-5, metadata={"help": "Final lr of ALBEF's schedule."})
    k_test: int | None = field(default=None, metadata={"help": "ITM re-rank candidates (default: config.k_test)."})
    itc_only_eval: bool = field(default=False, metadata={"help": "Evaluate with ITC ranking only (no re-rank)."})


class AlignmentTrainer(Trainer):
    """`Trainer` for any vlalign training model (`<Method>ForPreTraining`, `<Method>ForImageTextRetrieval`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        duties = [cb for cb in self.callback_handler.callbacks if isinstance(cb, TrainingDutiesCallback)]
        if duties:  # the user passed `model.training_callback()` already: the duties must run once per step
            duties[0].data_collator = duties[0].data_collator or self.data_collator
        else:
            self.add_callback(TrainingDutiesCallback(self.data_collator))
        self._loss_sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.args.device))
        self._loss_steps = 0

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch on each process."""
        global_batch = self.args.per_device_train_batch_size * self.args.world_size
        batches = len(self.train_dataset) // global_batch
        if not self.args.dataloader_drop_last:
            batches = math.ceil(len(self.train_dataset) / global_batch)
        return max(1, batches // self.args.gradient_accumulation_steps)

    def create_optimizer(self, model=None):
        if self.optimizer is None and getattr(self.args, "official_optimizer", False):
            model = self.model if model is None else model
            groups = method_of(model).parameter_groups(model, self.args.weight_decay)
            if not any(group["params"] for group in groups):
                raise ValueError("The model has no trainable parameters (all have requires_grad=False).")
            self.optimizer = torch.optim.AdamW(
                groups,
                lr=self.args.learning_rate,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
            )
            return self.optimizer
        return super().create_optimizer(model)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and getattr(self.args, "albef_lr_schedule", False):
            steps_per_epoch = self.steps_per_epoch()
            self.lr_scheduler = get_albef_schedule(
                self.optimizer if optimizer is None else optimizer,
                steps_per_epoch=steps_per_epoch,
                num_epochs=max(1, math.ceil(num_training_steps / steps_per_epoch)),
                warmup_steps=self.args.get_warmup_steps(num_training_steps),
                warmup_lr=self.args.warmup_lr,
                min_lr=self.args.min_lr,
            )
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if model.training:
            for name in self._loss_names():
                if outputs.get(name) is not None:
                    self._loss_sums[name] += outputs[name].detach()
            self._loss_steps += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _loss_names(self) -> tuple[str, ...]:
        return getattr(self.accelerator.unwrap_model(self.model), "loss_names", ())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._loss_steps:
            for name, total in self._loss_sums.items():
                logs[name] = round(self.accelerator.reduce(total / self._loss_steps, "mean").item(), 4)
            self._loss_sums.clear()
            self._loss_steps = 0
            model = self.accelerator.unwrap_model(self.model)
            if isinstance(model, TrainingDutiesMixin):
                logs.update({name: round(value, 5) for name, value in model.training_log_values().items()})
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Image-text retrieval (R@1/5/10, r_mean) when the dataset has one row per image with `captions`;
        otherwise Trainer's loss evaluation."""
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if isinstance(eval_dataset, str):  # Trainer evaluates a dict of eval datasets one name at a time
            dataset = self.eval_dataset[eval_dataset]
        if dataset is None or "captions" not in getattr(dataset, "column_names", []):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        results = evaluate_retrieval(
            self.accelerator.unwrap_model(self.model),
            self.processing_class,
            dataset,
            k_test=self.args.k_test,
            itc_only=self.args.itc_only_eval,
            batch_size=self.args.per_device_eval_batch_size,
            show_progress=not self.args.disable_tqdm and self.is_local_process_zero(),
        )
        metrics = {f"{metric_key_prefix}_{key}": value for key, value in results.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics


#: ALBEF names of the generic classes, kept for existing scripts
AlbefTrainer = AlignmentTrainer
AlbefTrainingArguments = AlignmentTrainingArguments

__all__ = ["AlbefTrainer", "AlbefTrainingArguments", "AlignmentTrainer", "AlignmentTrainingArguments"]
