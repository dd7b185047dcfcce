"""`AlignmentTrainer`: transformers' `Trainer` for every vlalign method.

What it adds to `Trainer`, the same for a fusion model (ALBEF) and a dual encoder (FDT):

* the model's per-step duties run around every optimizer step (`TrainingDutiesCallback`: ALBEF's EMA and queue
  update, CODIS's prototype re-normalisation, FDT's logit-scale clamp; schedules such as ALBEF's α warm-up or FDT's
  temperature read the step), whatever `optim` is;
* `on_nonfinite_loss="skip"` skips the whole optimizer step of a batch with a non-finite loss (`NonfiniteStepSkip`):
  weights, optimizer state, lr schedule, momentum encoders, queues, codebooks and random state stay as before it;
* each named loss the model's output carries (`loss_itc`, `loss_itm`, ...) and the model's own log values (α,
  temperatures) are logged;
* the method's official optimizer parameter groups (from the method registry), and ALBEF's per-epoch cosine
  schedule as an option;
* a streamed training set (`vlalign.data.streaming.ImageTextStream`: webdataset shards, streaming `datasets`) is
  read by the processes' own DataLoader workers, each on its own shards; the stream position of what was trained on
  is saved with every checkpoint (`stream_state.json`) and a resume continues with the next unseen sample; corrupt
  samples the stream skipped are counted in the logs (`skipped_samples`);
* checkpoints are written atomically: into a staging folder (`tmp-checkpoint-N`), renamed to `checkpoint-N` once
  every process has written its files, so a save killed halfway never leaves a checkpoint that looks complete (and
  `resume_from_checkpoint=True` takes the previous one); a resume checks the checkpoint's files first and refuses a
  truncated or corrupt one with an error naming the file;
* resuming a finished run (its last checkpoint at `max_steps`) trains no further step;
* one run per output folder: `train()` holds the folder's lock (`vlalign.files.folder_lock`), so a second run into it
  refuses at start instead of failing after training;
* `evaluate()` runs image-text retrieval (ITC ranking, ITM re-ranking where the model has ITM) on an
  evaluation-layout dataset (one row per image, `captions`).

Everything a resume needs lives in the model's state dict (momentum encoders, queues, codebooks) or is a function of
the step, and the Trainer checkpoints optimizer, scheduler, RNG states, data position and the count of skipped steps
(`TrainingDutiesCallback` in `trainer_state.json`), so resuming is exact.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import shutil
import warnings
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import datasets
import torch
from accelerate.state import GradientState
from accelerate.utils import broadcast_object_list, gather_object
from safetensors import safe_open
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME

from ..data.streaming import STREAM_POSITION, ImageTextStream, StreamDataLoader, StreamProgress
from ..evaluation import evaluate_retrieval
from ..files import FolderLockedError, folder_lock
from ..models.training_duties import TrainingDutiesCallback, TrainingDutiesMixin
from ..models.weights_check import CHECKSUMS_NAME, check_weights_files
from .optim import get_epoch_schedule, with_temperature_learning_rate

#: file of a checkpoint that holds the training stream's position
STREAM_STATE_NAME = "stream_state.json"
#: prefix of the staging folder a checkpoint is written into before its rename to `checkpoint-N`; neither
#: `get_last_checkpoint` nor checkpoint rotation sees it
STAGING_PREFIX = "tmp-"


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
    epoch_lr_schedule: bool = field(
        default=False,
        metadata={
            "help": "The official per-epoch schedule of ALBEF, SIMLA and CODIS: staircase warm-up from warmup_lr, "
            "then a cosine to min_lr that steps once per epoch."
        },
    )
    albef_lr_schedule: bool | None = field(default=None, metadata={"help": "Deprecated name of epoch_lr_schedule."})
    warmup_lr: float | None = field(default=None, metadata={"help": "Warm-up start lr of ALBEF's schedule."})
    min_lr: float = field(default=1e-5, metadata={"help": "Final lr of ALBEF's schedule."})
    warmup_stages: int | None = field(
        default=20,
        metadata={
            "help": "Stages of epoch_lr_schedule's staircase warm-up: the official scheduler steps once every 100 "
            "iterations (20 stages over pretraining's 2,000 steps, 4 over VQA's 400); None: a smooth ramp."
        },
    )
    k_test: int | None = field(default=None, metadata={"help": "ITM re-rank candidates (default: config.k_test)."})
    itc_only_eval: bool = field(default=False, metadata={"help": "Evaluate with ITC ranking only (no re-rank)."})
    temperature_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the learnable contrastive temperature (ALBEF's `temp`, FDT's `logit_scale`), "
            "scheduled like the others; default: learning_rate. From scratch at a high learning rate the temperature "
            "can fall to its floor within a few hundred steps, and ITC with it."
        },
    )
    on_nonfinite_loss: str = field(
        default="raise",
        metadata={
            "help": "A NaN/inf training loss: 'raise' stops with the step and every loss value; 'skip' skips the "
            "optimizer step of that batch (with gradient accumulation the whole step): no update, no duties, the lr "
            "schedule unchanged, as if the batches were not there; counted in the logs as `nonfinite_skipped`.",
            "choices": ["raise", "skip"],
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.albef_lr_schedule is not None:
            warnings.warn(
                "albef_lr_schedule is deprecated (the schedule serves every method); use epoch_lr_schedule.",
                FutureWarning,
                stacklevel=2,
            )
            self.epoch_lr_schedule = self.albef_lr_schedule
            self.albef_lr_schedule = None
        if self.on_nonfinite_loss not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite_loss must be 'raise' or 'skip', got {self.on_nonfinite_loss!r}.")
        if self.temperature_learning_rate is not None and not self.official_optimizer:
            raise ValueError(
                "temperature_learning_rate sets a parameter group of the method's optimizer; it needs "
                "official_optimizer=True."
            )


class NonfiniteStepSkip(TrainerCallback):
    """Skips the optimizer step of a batch whose training loss is not finite (`on_nonfinite_loss="skip"`), so that
    the run goes on as if the batch, and every batch accumulated into the same step, had not been there.

    `AlignmentTrainer` sets `pending` when a loss is non-finite (the step's later micro-batches then run no forward).
    At the step: the optimizer does not step (Accelerate's optimizer wrapper leaves `step()` alone while gradients
    are not synchronised), the step is reported skipped as for an fp16 overflow (so Trainer leaves the lr schedule
    alone and the model's duties do not run: no EMA step, no enqueue, the stashed features dropped), and torch's
    random state goes back to where it was before the step's forwards. Weights, optimizer state, momentum encoders,
    queues, codebooks and schedules are as before the batch. The batch still counts in `global_step` (the data
    position a resume skips to, `max_steps`, logging and saving); the model's step-dependent schedules (ALBEF's α
    warm-up, FDT's temperature) count applied steps only (`TrainingDutiesCallback.skipped_steps`).
    """

    def __init__(self):
        self.pending = False
        self._rng_state: tuple[torch.Tensor, list[torch.Tensor] | None] | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if getattr(args, "on_nonfinite_loss", "raise") == "skip":
            cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
            self._rng_state = (torch.get_rng_state(), cuda)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.pending:
            GradientState()._set_sync_gradients(False)  # Trainer's own switch: `optimizer.step()` does nothing
            optimizer._is_overflow = True  # Accelerate's "step was skipped", as its GradScaler sets it

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.pending:
            GradientState()._set_sync_gradients(True)
            cpu, cuda = self._rng_state
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if self.pending:
            optimizer._is_overflow = False
            self.pending = False


class AlignmentTrainer(Trainer):
    """`Trainer` for any vlalign training model (`<Method>ForPreTraining`, `<Method>ForImageTextRetrieval`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_dataset = images_read_by_the_collator(self.train_dataset, self.data_collator)
        if not any(isinstance(cb, TrainingDutiesCallback) for cb in self.callback_handler.callbacks):
            self.add_callback(TrainingDutiesCallback())  # unless the user passed `model.training_callback()`
        self._wire_duties_callback()
        self._skip = NonfiniteStepSkip()
        # before the duties, so that they see the step skipped
        callbacks = self.callback_handler.callbacks
        callbacks.insert(callbacks.index(self._duties_callback()), self._skip)
        self._loss_sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.args.device))
        self._loss_steps = 0
        self._nonfinite_skipped = 0
        self._staging_dir: str | None = None  # set while a checkpoint is being written (see `_save_checkpoint`)
        if self._streaming:
            self.stream_progress = self._new_stream_progress(epoch=self.train_dataset.epoch)
            self._resumed_stream_checkpoint: str | None = None

    def _duties_callback(self) -> TrainingDutiesCallback:
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, TrainingDutiesCallback))

    def _wire_duties_callback(self) -> None:
        duties = self._duties_callback()
        duties.data_collator = duties.data_collator or self.data_collator
        duties.steps_per_epoch = self.steps_per_epoch  # a stream's, which its DataLoader cannot tell

    def _load_callback_state(self) -> None:
        super()._load_callback_state()  # `restore_callback_states_from_checkpoint` builds the callbacks anew
        self._wire_duties_callback()

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
        """Trainer's `train`, holding the output folder's lock for the whole run (see `vlalign.files.folder_lock`)."""
        with self._output_dir_lock():
            return self._train(resume_from_checkpoint, trial, **kwargs)

    @contextlib.contextmanager
    def _output_dir_lock(self) -> Iterator[None]:
        """The output folder's lock (`vlalign.files.folder_lock`), taken by the main process for the whole run; every
        process refuses to start when another run holds it."""
        with contextlib.ExitStack() as stack:
            refusal = None
            if self.is_world_process_zero():
                try:
                    stack.enter_context(folder_lock(self.args.output_dir))
                except FolderLockedError as error:
                    refusal = str(error)
            if self.args.world_size > 1:
                refusal = broadcast_object_list([refusal])[0]
            if refusal is not None:
                raise FolderLockedError(refusal)
            yield

    def _train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        self._remove_staging_folders()
        if resume_from_checkpoint:
            resume_from_checkpoint = self._verified_checkpoint(resume_from_checkpoint)
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

    # ------------------------------------------------------------------ atomic checkpoints, verified resume
    def _get_output_dir(self, trial) -> str:
        return self._staging_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """Trainer's checkpoint, written into `tmp-checkpoint-N/checkpoint-N` and renamed to `checkpoint-N` by the
        main process once every process has written its files (model, optimizer, scheduler, RNG states, trainer
        state, stream position): a save killed halfway leaves only the staging folder, which resumes ignore."""
        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, STAGING_PREFIX + name)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # left by a save of this step that was killed
        self.accelerator.wait_for_everyone()
        self._staging_dir = staging
        try:
            if self._streaming:  # written before Trainer's files, so a checkpoint that looks complete has it
                state = self._merged_stream_progress().state_dict()
                if self.args.should_save:
                    folder = os.path.join(
                        self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
                    )
                    os.makedirs(folder, exist_ok=True)
                    with open(os.path.join(folder, STREAM_STATE_NAME), "w", encoding="utf-8") as handle:
                        json.dump(state, handle, indent=1)
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()
        checkpoint = os.path.join(run_dir, name)
        if self.args.should_save:
            self._publish_checkpoint(os.path.join(staging, name), checkpoint)
            shutil.rmtree(staging)
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub:
            self._push_from_checkpoint(checkpoint)

    def _publish_checkpoint(self, written: str, checkpoint: str) -> None:
        """Rename the complete staged checkpoint `written` to `checkpoint` (one `os.replace`)."""
        if self.state.best_model_checkpoint == written:  # Trainer recorded the staging path
            self.state.best_model_checkpoint = checkpoint
            self.state.save_to_json(os.path.join(written, TRAINER_STATE_NAME))
        if os.path.isdir(checkpoint):  # a checkpoint of this step from an earlier run into the same folder
            os.replace(checkpoint, os.path.join(os.path.dirname(written), "replaced"))
        os.replace(written, checkpoint)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self._staging_dir is None:  # pushed from its final folder, after the rename (the upload runs async)
            super()._push_from_checkpoint(checkpoint_folder)

    def _remove_staging_folders(self) -> None:
        """Remove what saves killed halfway left in the output folder (main process)."""
        if self.args.should_save:
            pattern = os.path.join(glob.escape(self.args.output_dir), f"{STAGING_PREFIX}{PREFIX_CHECKPOINT_DIR}-*")
            for folder in glob.glob(pattern):
                shutil.rmtree(folder, ignore_errors=True)

    def _verified_checkpoint(self, checkpoint: str | bool) -> str | bool:
        """The checkpoint a resume starts from (the last complete one for `True`), its files verified."""
        if checkpoint is True:
            if not os.path.isdir(self.args.output_dir) or get_last_checkpoint(self.args.output_dir) is None:
                return checkpoint  # Trainer raises its own error for a missing checkpoint
            checkpoint = get_last_checkpoint(self.args.output_dir)
        needs_optimizer = not (self.args.save_only_model or self.is_deepspeed_enabled or self.is_fsdp_enabled)
        verify_checkpoint(checkpoint, needs_optimizer=needs_optimizer)
        return checkpoint

    # ------------------------------------------------------------------ steps
    def _run_epoch(self, *args, **kwargs):
        """Trainer's epoch, unless the run is complete: resumed from its last checkpoint (at `max_steps`), Trainer
        would still run the epoch's next batch, and its EMA step and enqueue would change the finished model."""
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return
        super()._run_epoch(*args, **kwargs)

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
            groups = model.optimizer_parameter_groups(self.args.weight_decay)
            if self.args.temperature_learning_rate is not None:
                groups = with_temperature_learning_rate(groups, self.args.temperature_learning_rate)
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
        if self.lr_scheduler is None and getattr(self.args, "epoch_lr_schedule", False):
            steps_per_epoch = self.steps_per_epoch()
            if steps_per_epoch is None:
                raise ValueError(
                    "epoch_lr_schedule decays per epoch, but the training stream's size is unknown; pass "
                    "ImageTextStream(num_samples=...) or use another lr_scheduler_type."
                )
            self.lr_scheduler = get_epoch_schedule(
                self.optimizer if optimizer is None else optimizer,
                steps_per_epoch=steps_per_epoch,
                num_epochs=max(1, math.ceil(num_training_steps / steps_per_epoch)),
                warmup_steps=self.args.get_warmup_steps(num_training_steps),
                warmup_lr=self.args.warmup_lr,
                min_lr=self.args.min_lr,
                warmup_stages=self.args.warmup_stages,
            )
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        positions = inputs.pop(STREAM_POSITION, None)
        if positions is not None and model.training:
            self.stream_progress.update(positions)
        if model.training and self._skip.pending:  # a micro-batch of a step already skipped
            return self._zero_loss(None, return_outputs)
        try:
            outputs = model(**inputs)
        except FloatingPointError as error:  # the models refuse a non-finite loss, naming it
            if not model.training:
                raise
            return self._nonfinite_loss(str(error), None, return_outputs)
        if model.training and not torch.isfinite(outputs.loss):
            names = ("loss", *self._loss_names())
            values = ", ".join(f"{n}={outputs[n].item():.4g}" for n in names if outputs.get(n) is not None)
            advice = "Lower the learning rate, set max_grad_norm or check the batch's inputs."
            return self._nonfinite_loss(f"{values}. {advice}", outputs, return_outputs)
        if model.training:
            for name in self._loss_names():
                if outputs.get(name) is not None:
                    self._loss_sums[name] += outputs[name].detach()
            self._loss_steps += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _nonfinite_loss(self, problem: str, outputs, return_outputs: bool):
        """Stop, naming the step and the loss values (`on_nonfinite_loss="raise"`), or skip the optimizer step this
        batch belongs to (`"skip"`, see `NonfiniteStepSkip`), warn and count it."""
        step = self.state.global_step + 1
        if self.args.on_nonfinite_loss == "raise":
            raise FloatingPointError(
                f"Non-finite training loss at step {step}: {problem} Or pass on_nonfinite_loss='skip' to skip such "
                "steps."
            )
        accumulated = " (and every batch accumulated into it)" if self.args.gradient_accumulation_steps > 1 else ""
        warnings.warn(
            f"Skipping the update of step {step}{accumulated}: non-finite training loss ({problem})", stacklevel=2
        )
        self._nonfinite_skipped += 1
        self._skip.pending = True
        return self._zero_loss(outputs, return_outputs)

    def _zero_loss(self, outputs, return_outputs: bool):
        """A loss without gradient for a batch whose step is skipped."""
        loss = torch.zeros((), device=self.args.device, requires_grad=True)
        return (loss, outputs) if return_outputs else loss

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
        if "loss" in logs and self._nonfinite_skipped:
            logs["nonfinite_skipped"] = self._nonfinite_skipped
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


def images_read_by_the_collator(dataset, collator):
    """`dataset` with its image column (the collator's `image_column`) read undecoded when `datasets` would decode it:
    the collator then opens each image itself and names a file it cannot read with its batch row and the fix, where
    `datasets`' own decoding inside the DataLoader raises PIL's bare error. The pixels are the same."""
    column = getattr(collator, "image_column", None)
    feature = getattr(dataset, "features", {}).get(column) if isinstance(dataset, datasets.Dataset) else None
    if not (isinstance(feature, datasets.Image) and feature.decode):
        return dataset
    return dataset.cast_column(column, datasets.Image(decode=False))


def verify_checkpoint(folder: str, needs_optimizer: bool = True) -> None:
    """Raise a `ValueError` naming the file when the Trainer checkpoint `folder` lacks a file a resume reads
    (trainer state, model weights, optimizer and scheduler when `needs_optimizer`) or holds a truncated or corrupt
    one: JSON that does not parse, a safetensors file its header does not cover, a torch archive (`.pt`, `.pth`,
    `.bin`) that is cut short or fails its CRC check, a shard its index lists but the folder lacks, weights that differ
    from the sha256 `weights_checksums.json` recorded when they were saved."""
    if not os.path.isdir(folder):
        return  # Trainer raises its own error for a missing folder

    def refuse(name: str, problem: str) -> None:
        raise ValueError(f"Cannot resume from {folder}: {name} {problem}. {_previous_checkpoint_hint(folder)}")

    names = sorted(
        os.path.relpath(os.path.join(root, file), folder) for root, _, files in os.walk(folder) for file in files
    )
    required = [TRAINER_STATE_NAME] + ([OPTIMIZER_NAME, SCHEDULER_NAME] if needs_optimizer else [])
    for name in required:
        if name not in names:
            refuse(name, "is missing")
    if not any(
        name.startswith(("model.safetensors", "pytorch_model", "adapter_model.")) for name in os.listdir(folder)
    ):
        refuse(SAFE_WEIGHTS_NAME, "is missing (the folder holds no model weights)")
    for name in names:
        path = os.path.join(folder, name)
        if name.endswith(".json"):
            try:
                with open(path, encoding="utf-8") as handle:
                    content = json.load(handle)
            except (ValueError, UnicodeDecodeError) as error:
                refuse(name, f"is truncated or corrupt (not valid JSON: {error})")
            if name in (SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME):
                for shard in sorted(set(content.get("weight_map", {}).values())):
                    if shard not in names:
                        refuse(shard, f"is missing (listed in {name})")
        elif name.endswith(".safetensors"):
            try:
                with safe_open(path, framework="pt"):
                    pass
            except Exception as error:  # safetensors raises its own SafetensorError
                refuse(name, f"is truncated or corrupt ({error})")
        elif name.endswith((".pt", ".pth", ".bin")):
            try:
                with zipfile.ZipFile(path) as archive:
                    damaged = archive.testzip()
            except (zipfile.BadZipFile, OSError) as error:
                refuse(name, f"is truncated or corrupt (not a complete torch archive: {error})")
            if damaged is not None:
                refuse(name, f"is corrupt (CRC mismatch in its record {damaged})")
    if CHECKSUMS_NAME in names:  # the weights' sha256 recorded by `save_pretrained`: catches flipped bytes
        try:
            check_weights_files(folder, {})
        except OSError as error:
            refuse("the model weights", f"differ from what was saved ({error})")


def _previous_checkpoint_hint(folder: str) -> str:
    """How to resume instead: from the newest checkpoint before `folder` in the same output folder, if any."""
    parent, name = os.path.split(os.path.normpath(folder))
    pattern = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")
    if (match := pattern.fullmatch(name)) is not None:
        steps = [int(m.group(1)) for other in os.listdir(parent or ".") if (m := pattern.fullmatch(other))]
        if earlier := [step for step in steps if step < int(match.group(1))]:
            previous = os.path.join(parent, f"{PREFIX_CHECKPOINT_DIR}-{max(earlier)}")
            return (
                f"Resume from {previous}, the previous checkpoint (or delete {folder} and resume with "
                "resume_from_checkpoint=True)."
            )
    return "No earlier checkpoint is left: start the training again without resume_from_checkpoint."


#: ALBEF names of the generic classes, kept for existing scripts
AlbefTrainer = AlignmentTrainer
AlbefTrainingArguments = AlignmentTrainingArguments

__all__ = [
    "AlbefTrainer",
    "AlbefTrainingArguments",
    "AlignmentTrainer",
    "AlignmentTrainingArguments",
    "verify_checkpoint",
]
