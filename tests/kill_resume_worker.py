"""Train a registered method's tiny pretraining model with AlignmentTrainer on the synthetic data, for the kill-and-resume
test: 8 steps of 4 samples (24 training rows, so an epoch ends at step 6), a checkpoint every 3 steps, and the final
state dict (weights, momentum encoders, queues and their pointer, codebooks) saved to `OUTPUT/final_state.pt`.

    python kill_resume_worker.py METHOD OUTPUT [--resume] [--handshake] [--slow-save STEP]

(or under `torchrun --nproc_per_node 2`, 4 samples per process).

`--resume` resumes from the last complete checkpoint in OUTPUT. `--handshake` prints `KILLRESUME step N` after every
optimizer step and waits for a line on stdin before going on, so the test decides when a kill lands. `--slow-save STEP`
prints `KILLRESUME saving STEP` halfway through that step's checkpoint (model and optimizer written, trainer state not
yet) and then hangs, so the test can kill a save.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from transformers import TrainerCallback

from vlalign.data.collator import AlignmentCollator
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.methods import get_method
from vlalign.recipes import dataset_captions
from vlalign.training.trainer import AlignmentTrainer, AlignmentTrainingArguments

IMAGE_SIZE = 32
MAX_STEPS = 8
SAVE_STEPS = 3
MARKER = "KILLRESUME"


class StepHandshake(TrainerCallback):
    """Announces each finished optimizer step and waits for the test's go-ahead."""

    def on_step_end(self, args, state, control, **kwargs):
        print(f"{MARKER} step {state.global_step}", flush=True)
        sys.stdin.readline()


def build_trainer(method_name: str, output: str, callbacks: list[TrainerCallback] | None = None) -> AlignmentTrainer:
    """The seeded tiny model, its pretraining collator and the Trainer settings every run of the test shares."""
    method = get_method(method_name)
    dataset = make_synthetic_dataset(num_train=24, num_validation=0, num_test=2, image_size=IMAGE_SIZE, seed=5)
    processor = method.build_processor(method.build_tokenizer(dataset_captions(dataset)), IMAGE_SIZE)
    config = method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides)
    torch.manual_seed(0)
    model = method.pretraining_class(config)
    extra = method.pretraining_collator_kwargs(config, processor, dataset["train"])
    args = AlignmentTrainingArguments(
        output_dir=output, per_device_train_batch_size=4, max_steps=MAX_STEPS, learning_rate=1e-3, warmup_steps=1,
        save_strategy="steps", save_steps=SAVE_STEPS, report_to="none", use_cpu=True, disable_tqdm=True, seed=3,
        dataloader_num_workers=0, logging_steps=2,
    )  # fmt: skip
    return AlignmentTrainer(
        model=model,
        args=args,
        train_dataset=dataset["train"],
        data_collator=AlignmentCollator(processor, preset="pretrain", text_column="captions", **extra),
        processing_class=processor,
        callbacks=callbacks,
    )


def hang_in_save(trainer: AlignmentTrainer, step: int) -> None:
    """Make the checkpoint of `step` hang after its RNG state, before its trainer state is written."""
    save_rng_state = trainer._save_rng_state

    def slow(output_dir: str) -> None:
        save_rng_state(output_dir)
        if trainer.state.global_step == step:
            print(f"{MARKER} saving {step}", flush=True)
            time.sleep(600)

    trainer._save_rng_state = slow


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("method")
    parser.add_argument("output")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--handshake", action="store_true")
    parser.add_argument("--slow-save", type=int)
    options = parser.parse_args()
    trainer = build_trainer(options.method, options.output, [StepHandshake()] if options.handshake else None)
    if options.slow_save is not None:
        hang_in_save(trainer, options.slow_save)
    trainer.train(resume_from_checkpoint=True if options.resume else None)
    if trainer.is_world_process_zero():
        state = {name: tensor.detach().clone() for name, tensor in trainer.model.state_dict().items()}
        torch.save(state, f"{options.output}/final_state.pt")
    if torch.distributed.is_initialized():  # a clean shutdown: gloo threads torn down at exit can abort the process
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    from worker_exit import exit_after_success  # tests/ is the script folder, first on sys.path

    main()
    exit_after_success()
