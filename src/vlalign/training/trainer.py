"""`AlignmentTrainer`: transformers' `Trainer` for every vlalign method.

What it adds to `Trainer`, the same for a fusion model (ALBEF) and a dual encoder (FDT):

* the model's per-step duties run around every optimizer step (`TrainingDutiesCallback`: ALBEF's EMA and queue
  update, FDT's logit-scale clamp; schedules such as ALBEF's α warm-up or FDT's temperature read the step);
* each named loss the model's output carries (`loss_itc`, `loss_itm`, ...) and the model's own log values (α,
  temperatures) are logged;
* the method's official optimizer parameter groups (from the method registry), and ALBEF's per-epoch cosine
  schedule as an option;
* a streamed training set (`vlalign.data.streaming.ImageTextStream`: webdataset shards, streaming `datasets`) is
  read by the processes' own DataLoader workers, each on its own shards; the stream position of what was trained on
  is saved with every checkpoint (`stream_state.json`) and a resume continues with the next unseen sample; corrupt
  samples the stream skipped are counted in the logs (`skipped_samples`);
* `evaluate()` runs image-text retrieval (ITC ranking, ITM re-ranking where the model has ITM) on an
  evaluation-layout dataset (one row per image, `captions`).

Everything a resume needs lives in the model's state dict (momentum encoders, queues, codebooks) or is a function of
the step, and the Trainer checkpoints optimizer, scheduler, RNG states and data position, so resuming is exact.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from accelerate.utils import gather_object
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..data.streaming import STREAM_POSITION, ImageTextStream, StreamDataLoader, StreamProgress
from ..evaluation import evaluate_retrieval
from ..methods import method_of
from ..models.training_duties import TrainingDutiesCallback, TrainingDutiesMixin
from .optim import get_albef_schedule

#: file of a checkpoint that holds the training stream's position
STREAM_STATE_NAME = "stream_state.json"


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
        if not duties:  # unless the user passed `model.training_callback()`: the duties must run once per step
            duties = [TrainingDutiesCallback()]
            self.add_callback(duties[0])
        duties[0].data_collator = duties[0].data_collator or self.data_collator
        duties[0].steps_per_epoch = self.steps_per_epoch  # a stream's, which its DataLoader cannot tell
        self._loss_sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.args.device))
        self._loss_steps = 0
        if self._streaming:
            self.stream_progress = self._new_stream_progress(epoch=self.train_dataset.epoch)
            self._resumed_stream_checkpoint: str | None = None

    @property
    def _streaming(self) -> bool:
        return isinstance(self.train_dataset, ImageTextStream)

    # ------------------------------------------------------------------ streamed training data
    def get_train_dataloader(self):
        """A stream shards itself over processes and DataLoader workers, so it skips Accelerate's dataloader
        preparation (which would shard it again, or read it on one process and dispatch); `Trainer` moves each
        batch to the device as usual."""
        if not self._streaming:
            return super().get_train_dataloader()
        if self.args.dataloader_persistent_workers:
            raise ValueError(
                "dataloader_persistent_workers=True cannot be used with a streamed training set: each epoch's "
                "workers must start from the stream's new epoch. Set it to False."
            )
        stream = self.train_dataset
        stream.process_index, stream.num_processes = self.args.process_index, self.args.world_size
        stream.check_split(self.args.world_size)
        if stream.num_samples is None and isinstance(self.model, TrainingDutiesMixin):
            warnings.warn(
                "The training stream's size is unknown, so schedules that count in epochs (ALBEF's alpha warm-up "
                "over the first epoch) take every step as an epoch. Pass ImageTextStream(num_samples=...).",
                stacklevel=2,
            )
        workers = self.args.dataloader_num_workers
        return StreamDataLoader(
            stream,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available(),
            drop_last=self.args.dataloader_drop_last,
            prefetch_factor=self.args.dataloader_prefetch_factor if workers else None,
            after_first_iter=self._restore_rng_of_resumed_stream,
        )

    def _restore_rng_of_resumed_stream(self) -> None:
        # Trainer restores RNG states only when it skips batches itself (or at an epoch start), not for a stream
        if self._resumed_stream_checkpoint is not None:
            self._load_rng_state(self._resumed_stream_checkpoint)

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        if self._streaming:
            # the stream resumes at its saved position itself; Trainer's batch skipping would skip twice
            self.args.ignore_data_skip = True
            if resume_from_checkpoint:
                self._resume_stream(resume_from_checkpoint)
        output = super().train(resume_from_checkpoint, trial, **kwargs)
        if self._streaming and (skipped := self._merged_stream_progress().num_skipped):
            warnings.warn(
                f"The training stream skipped {skipped} unusable samples (undecodable images or empty captions); "
                "the warnings above name them.",
                stacklevel=2,
            )
        return output

    def _resume_stream(self, checkpoint: str | bool) -> None:
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
            if checkpoint is None:
                return  # Trainer raises its own error for a missing checkpoint
        path = os.path.join(checkpoint, STREAM_STATE_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{checkpoint} has no {STREAM_STATE_NAME}, so the stream's position is unknown: it was not saved by "
                "a streamed run. Resume from a checkpoint of this run, or start without resume_from_checkpoint."
            )
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
        self.train_dataset.load_state_dict(state)
        self._resumed_stream_checkpoint = checkpoint
        saved = StreamProgress.from_state_dict(state)
        self.stream_progress = self._new_stream_progress(saved.epoch, saved.consumed, saved.skipped, saved.batches)

    def _new_stream_progress(self, epoch: int, *args) -> StreamProgress:
        layout = (self.args.world_size, max(1, self.args.dataloader_num_workers))
        return StreamProgress(epoch, *args, process_index=self.args.process_index, layout=layout)

    def _merged_stream_progress(self) -> StreamProgress:
        """The stream progress of all processes (a collective call: every process must make it)."""
        return StreamProgress.merged(gather_object([self.stream_progress]))

    def _save_checkpoint(self, model, trial):
        if self._streaming:  # written before Trainer's files, so a checkpoint that looks complete has it
            state = self._merged_stream_progress().state_dict()
            if self.args.should_save:
                folder = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, STREAM_STATE_NAME), "w", encoding="utf-8") as handle:
                    json.dump(state, handle, indent=1)
        super()._save_checkpoint(model, trial)

    # ------------------------------------------------------------------ steps
    def steps_per_epoch(self) -> int | None:
        """Optimizer steps per epoch on each process (None for a stream of unknown size)."""
        samples = self.train_dataset.num_samples if self._streaming else len(self.train_dataset)
        if samples is None:
            return None
        global_batch = self.args.per_device_train_batch_size * self.args.world_size
        batches = samples // global_batch if self.args.dataloader_drop_last else math.ceil(samples / global_batch)
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
            if steps_per_epoch is None:
                raise ValueError(
                    "albef_lr_schedule decays per epoch, but the training stream's size is unknown; pass "
                    "ImageTextStream(num_samples=...) or use another lr_scheduler_type."
                )
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
        positions = inputs.pop(STREAM_POSITION, None)
        if positions is not None and model.training:
            self.stream_progress.update(positions)
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
            if self._streaming:
                logs["skipped_samples"] = self._merged_stream_progress().num_skipped
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
