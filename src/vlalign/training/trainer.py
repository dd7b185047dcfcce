"""`Trainer` for ALBEF-family alignment pretraining and retrieval fine-tuning.

What it adds to transformers' `Trainer`:

* the distillation weight α warms up linearly over the first epoch, per optimizer step (official schedule);
* after every optimizer step, the momentum encoders take one EMA step and the step's momentum features — gathered
  from every process in rank order, as the official `concat_all_gather` does — enter the queues;
* each objective's loss (`loss_itc`, `loss_itm`, `loss_mlm`), α and the temperature are logged;
* the official optimizer parameter groups and per-epoch cosine schedule, next to Trainer's defaults;
* `evaluate()` runs the ALBEF retrieval protocol on an evaluation-layout dataset (one row per image, `captions`).

Everything a resume needs (weights, momentum encoders, queues and their pointer) lives in the model's state dict, and
the Trainer checkpoints the optimizer, scheduler, RNG states and data position, so resuming is exact.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..evaluation import evaluate_retrieval
from .optim import albef_alpha, create_albef_optimizer, get_albef_schedule

LOSS_NAMES = ("loss_itc", "loss_itm", "loss_mlm")


@dataclass
class AlbefTrainingArguments(TrainingArguments):
    """`TrainingArguments` with ALBEF's defaults and recipe switches."""

    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep raw image/caption columns for the collator (it runs the processor)."}
    )
    dataloader_drop_last: bool = field(
        default=True, metadata={"help": "Every step enqueues a full global batch, as the official code assumes."}
    )
    ddp_broadcast_buffers: bool | None = field(
        default=False, metadata={"help": "Queues stay consistent through the gather; no need to re-broadcast them."}
    )
    albef_optimizer: bool = field(
        default=True,
        metadata={"help": "Official parameter groups: decay everything but 1-D tensors and biases (temp included)."},
    )
    albef_lr_schedule: bool = field(
        default=False,
        metadata={"help": "Official schedule: staircase warm-up from warmup_lr, then a per-epoch cosine to min_lr."},
    )
    warmup_lr: float | None = field(default=None, metadata={"help": "Warm-up start lr of the official schedule."})
    min_lr: float = field(default=1e-5, metadata={"help": "Final lr of the official schedule."})
    k_test: int | None = field(default=None, metadata={"help": "ITM re-rank candidates (default: config.k_test)."})
    itc_only_eval: bool = field(default=False, metadata={"help": "Evaluate with ITC ranking only (no re-rank)."})


class MomentumQueueCallback(TrainerCallback):
    """Runs the momentum (EMA) update and the queue update once per optimizer step, and tells the collator the
    epoch (its random draws are keyed by epoch and row, see `AlbefCollator`)."""

    def __init__(self, trainer: AlbefTrainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        collator = self.trainer.data_collator
        if hasattr(collator, "set_epoch"):  # state.epoch is fractional when resuming mid-epoch
            collator.set_epoch(int(state.epoch + 1e-6))

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        model = self.trainer.accelerator.unwrap_model(model)
        model.momentum_update()
        self.trainer.flush_queue(model)


class AlbefTrainer(Trainer):
    """`Trainer` for `AlbefForPreTraining` / `AlbefForImageTextRetrieval` (and models with the same interface)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(MomentumQueueCallback(self))
        self._pending_features: list[dict[str, torch.Tensor]] = []
        self._loss_sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.args.device))
        self._loss_steps = 0
        self._last_alpha = 0.0

    # ---------------------------------------------------------------------------------------------- schedule helpers
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch on each process (the official α ramp and cosine count per-GPU iterations)."""
        global_batch = self.args.per_device_train_batch_size * self.args.world_size
        batches = len(self.train_dataset) // global_batch
        if not self.args.dataloader_drop_last:
            batches = math.ceil(len(self.train_dataset) / global_batch)
        return max(1, batches // self.args.gradient_accumulation_steps)

    def current_alpha(self, model) -> float:
        config = self.accelerator.unwrap_model(model).config
        return albef_alpha(self.state.global_step, self.steps_per_epoch(), config.alpha, config.alpha_warmup_epochs)

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.args.albef_optimizer:
            self.optimizer = create_albef_optimizer(
                self.model if model is None else model,
                lr=self.args.learning_rate,
                weight_decay=self.args.weight_decay,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
            )
            return self.optimizer
        return super().create_optimizer(model)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and self.args.albef_lr_schedule:
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

    # ------------------------------------------------------------------------------------------------ training step
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        alpha = self.current_alpha(model)
        outputs = model(**inputs, alpha=alpha)
        if model.training:
            self._last_alpha = alpha
            self._pending_features.append(self._gather_momentum_features(outputs))
            for name in LOSS_NAMES:
                if outputs.get(name) is not None:
                    self._loss_sums[name] += outputs[name].detach()
            self._loss_steps += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _gather_momentum_features(self, outputs) -> dict[str, torch.Tensor]:
        """The step's momentum features from every process, concatenated in rank order."""
        features = {"image_feats": outputs.image_feat_m.detach(), "text_feats": outputs.text_feat_m.detach()}
        if outputs.get("idx") is not None:
            features["idx"] = outputs.idx.detach()
        return self.accelerator.gather(features)

    def flush_queue(self, model) -> None:
        """Enqueue every micro-batch's momentum features of the optimizer step that just ran."""
        if not self._pending_features:
            return
        merged = {key: torch.cat([f[key] for f in self._pending_features]) for key in self._pending_features[0]}
        self._pending_features.clear()
        model.enqueue(merged["image_feats"], merged["text_feats"], merged.get("idx"))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._loss_steps:
            for name, total in self._loss_sums.items():
                logs[name] = round(self.accelerator.reduce(total / self._loss_steps, "mean").item(), 4)
            self._loss_sums.clear()
            self._loss_steps = 0
            logs["alpha"] = round(self._last_alpha, 4)
            logs["temp"] = round(self.accelerator.unwrap_model(self.model).base_model.temp.item(), 5)
        super().log(logs, start_time)

    # --------------------------------------------------------------------------------------------------- evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Image-text retrieval (R@1/5/10, r_mean) when the dataset has one row per image with `captions`;
        otherwise Trainer's loss evaluation."""
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if isinstance(eval_dataset, str):  # Trainer evaluates a dict of eval datasets one name at a time
            dataset = self.eval_dataset[eval_dataset]
        if dataset is None or "captions" not in getattr(dataset, "column_names", []):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        model = self.accelerator.unwrap_model(self.model)
        results = evaluate_retrieval(
            model,
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


__all__ = ["AlbefTrainer", "AlbefTrainingArguments", "MomentumQueueCallback"]
