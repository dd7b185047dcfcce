"""Train a registered method's tiny pretraining model for 4 steps at a nonzero learning rate with AlignmentTrainer and
save what the every-method 2-process test compares: every named loss at every step (averaged over the processes), the
final state dict (weights, momentum encoders, queues, codebooks) and, where the model reports them, the codebook
assignments of every sample at every step (argmax of the transport plans, gathered in rank order).

Run as `python distributed_all_worker.py OUT BATCH METHOD` (one process) or under `torchrun --nproc_per_node 2` (gloo
on CPU), with BATCH the per-process batch size. ITC uses the global batch's negatives (`itc_global_negatives`; FDT's
loss always gathers). The optimizer steps on `TRAINED_LOSSES[method]` only: the terms that do not depend on how the
global batch is split (see the test's docstring); the others are still computed and recorded.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from vlalign.data.collator import AlignmentCollator
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.methods import get_method
from vlalign.recipes import dataset_captions
from vlalign.training.trainer import AlignmentTrainer, AlignmentTrainingArguments

IMAGE_SIZE = 32
MAX_STEPS = 4
#: per method, the loss terms the optimizer steps on (their sum is the training loss of this comparison)
TRAINED_LOSSES = {
    "albef": ("loss_itc",),
    "codis": ("loss_align", "loss_code", "loss_ot"),
    "fdt": ("loss_itc",),
    "simla": ("loss_itc", "loss_mim"),
}
ASSIGNMENTS = ("transport_i2p", "transport_t2p")


class RecordingTrainer(AlignmentTrainer):
    """Steps on the method's split-invariant loss terms and records every term and codebook assignment per step."""

    def __init__(self, *args, trained: tuple[str, ...], **kwargs):
        super().__init__(*args, **kwargs)
        self.trained = trained
        self.losses: list[torch.Tensor] = []
        self.assignments: dict[str, list[torch.Tensor]] = {name: [] for name in ASSIGNMENTS}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        _, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        self.losses.append(torch.stack([outputs[name].detach() for name in self._loss_names()]))
        for name in ASSIGNMENTS:
            if outputs.get(name) is not None:
                self.assignments[name].append(outputs[name].detach().argmax(-1))
        loss = sum(outputs[name] for name in self.trained)
        # the other terms join with weight 0, so every parameter gets a gradient (zero) as in one process
        loss = loss + 0.0 * sum(outputs[name] for name in self._loss_names() if name not in self.trained)
        return (loss, outputs) if return_outputs else loss


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` [steps, local batch] of every process, concatenated in rank order along the batch."""
    if not dist.is_initialized():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=1)


def main(output: str, per_device_batch: int, method_name: str) -> None:
    method = get_method(method_name)
    dataset = make_synthetic_dataset(num_train=48, num_validation=0, num_test=2, image_size=IMAGE_SIZE, seed=5)
    processor = method.build_processor(method.build_tokenizer(dataset_captions(dataset)), IMAGE_SIZE)
    overrides = dict(method.test_overrides)
    if "queue_size" in overrides:
        overrides.update(queue_size=24, itc_global_negatives=True)  # 4 steps × 8 wrap the queue once
    config = method.tiny_config(processor.tokenizer, IMAGE_SIZE, **overrides)
    torch.manual_seed(0)
    model = method.pretraining_class(config)
    args = AlignmentTrainingArguments(
        output_dir=output, per_device_train_batch_size=per_device_batch, max_steps=MAX_STEPS, learning_rate=1e-3,
        adam_epsilon=1e-6, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
        seed=11, dataloader_num_workers=0,
    )  # fmt: skip
    extra = method.pretraining_collator_kwargs(config, processor, dataset["train"])
    trainer = RecordingTrainer(
        model=model,
        args=args,
        train_dataset=dataset["train"],
        data_collator=AlignmentCollator(processor, preset="pretrain", text_column="captions", **extra),
        processing_class=processor,
        trained=TRAINED_LOSSES[method_name],
    )
    trainer.train()
    losses = torch.stack(trainer.losses)
    if dist.is_initialized():
        dist.all_reduce(losses)
        losses /= dist.get_world_size()
    assignments = {name: gather_rows(torch.stack(rows)) for name, rows in trainer.assignments.items() if rows}
    if trainer.is_world_process_zero():
        state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        names = trainer._loss_names()
        torch.save(
            {
                "world_size": args.world_size,
                "losses": {name: losses[:, i] for i, name in enumerate(names)},
                "assignments": assignments,
                "state": state,
            },
            f"{output}/result.pt",
        )
    if dist.is_initialized():  # a clean shutdown: gloo threads torn down at exit can abort the process
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    from worker_exit import exit_after_success  # tests/ is the script folder, first on sys.path

    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
    exit_after_success()
