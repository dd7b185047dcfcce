"""Train a tiny model of an ALBEF-family method for a few steps with FSDP2 (`fully_shard`), DDP or one process, and
save what tests/test_fsdp.py compares.

Run as `python fsdp_worker.py OUT MODE METHOD` (MODE `single`: one process, global batch 8) or under `torchrun
--nproc_per_node 2` (gloo on CPU, 4 per process) with MODE `ddp` or `fsdp`. FSDP shards the model as Accelerate's
FSDP2 plugin does: every `_no_split_modules` layer (online and momentum towers alike), then the root. The loop does a
Trainer step's work in the Trainer's order (training progress, forward, backward, the model's duties around
`optimizer.step()`: the momentum update runs on the sharded parameters in place).

Two findings this worker records (see the test):
* FSDP (1 and 2) refuses 0-dim parameters ("doesn't support scalar parameters"), and every vlalign model has one
  (ALBEF/CODIS/SIMLA `temp`, the official shape; FDT `logit_scale`). Stored as a 1-element tensor it would be sharded
  into an empty piece on the second process, where the temperature clamp's `.item()` fails. So the scalars stay out
  of the sharding (`ignored_params`: replicated, as under DDP) and their gradients are averaged by hand.
* Accelerate enables FSDP only on GPUs/accelerators: on CPU (`use_cpu`) the Trainer's `fsdp` arguments silently give
  plain DDP (`DistributedType.MULTI_CPU`). Hence the hand-written loop.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

from vlalign.data.collator import AlignmentCollator
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.methods import get_method
from vlalign.recipes import dataset_captions
from vlalign.training.trainer import AlignmentTrainer, AlignmentTrainingArguments

IMAGE_SIZE = 32
GLOBAL_BATCH = 8
STEPS = 4


def scalar_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [parameter for parameter in model.parameters() if parameter.dim() == 0]


def shard(model: nn.Module) -> None:
    """FSDP2 as Accelerate applies it (each `_no_split_modules` layer, then the root), the scalars left replicated."""
    for module in model.modules():
        if type(module).__name__ in model._no_split_modules:
            fully_shard(module)
    fully_shard(model, ignored_params=set(scalar_parameters(model)))


def average_scalar_gradients(model: nn.Module) -> None:
    """What DDP does for every parameter and FSDP does not for ignored ones."""
    for parameter in scalar_parameters(model):
        dist.all_reduce(parameter.grad, op=dist.ReduceOp.AVG)


def accelerate_distributed_type(output: str) -> str:
    """What the Trainer makes of `fsdp` arguments on CPU."""
    args = AlignmentTrainingArguments(
        output_dir=output,
        use_cpu=True,
        report_to="none",
        fsdp="full_shard auto_wrap",
        fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["AlbefVisionLayer", "AlbefTextLayer"]},
    )
    return AlignmentTrainer(model=nn.Linear(1, 1), args=args).accelerator.distributed_type.name


def main(output: str, mode: str, method_name: str) -> None:
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    if world_size > 1:
        dist.init_process_group("gloo")
    method = get_method(method_name)
    dataset = make_synthetic_dataset(num_train=48, num_validation=4, num_test=4, image_size=IMAGE_SIZE, seed=5)
    train = dataset["train"]
    processor = method.build_processor(method.build_tokenizer(dataset_captions(dataset)), IMAGE_SIZE)
    config = method.tiny_config(
        processor.tokenizer, IMAGE_SIZE, **{**method.test_overrides, "queue_size": 32, "itc_global_negatives": True}
    )
    torch.manual_seed(0)  # the same initial weights on every process
    model = method.pretraining_class(config)
    collator = AlignmentCollator(
        processor,
        preset="pretrain",
        text_column="captions",
        **method.pretraining_collator_kwargs(config, processor, train),
    )
    result = {"world_size": world_size}
    if mode == "fsdp":
        result["accelerate_distributed_type"] = accelerate_distributed_type(output)
        try:
            fully_shard(method.pretraining_class(config))
        except ValueError as error:
            result["unmodified_model_error"] = str(error)
        shard(model)
        wrapped = model
    elif mode == "ddp":
        wrapped = nn.parallel.DistributedDataParallel(model)
    else:
        wrapped = model
    optimizer = torch.optim.AdamW(model.optimizer_parameter_groups(0.02), lr=1e-3)

    model.train()
    torch.manual_seed(100)  # one global seed: the collator draws each row's caption from it and the row's id
    per_process = GLOBAL_BATCH // world_size
    names = ("loss", *method.loss_names)
    losses = []
    for step in range(STEPS):
        start = step * GLOBAL_BATCH + rank * per_process
        batch = collator([train[i] for i in range(start, start + per_process)])
        model.set_training_progress(step, len(train) // GLOBAL_BATCH)
        outputs = wrapped(**batch)
        outputs.loss.backward()
        if mode == "fsdp":
            average_scalar_gradients(model)
        model.before_optimizer_step(step)
        optimizer.step()
        optimizer.zero_grad()
        model.after_optimizer_step(step)  # the momentum update and the queue bookkeeping
        losses.append(torch.stack([outputs[name].detach() for name in names]))
    losses = torch.stack(losses)
    if dist.is_initialized():  # the mean over the global batch, as the Trainer logs it
        dist.all_reduce(losses, op=dist.ReduceOp.AVG)
    result["losses"] = dict(zip(names, losses.T, strict=True))

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options) if mode == "fsdp" else model.state_dict()
    if rank == 0:
        saved = method.pretraining_class(config)
        saved.load_state_dict(state)
        saved.save_pretrained(f"{output}/model")
        result["state_dict"] = state
        torch.save(result, f"{output}/result.pt")
    if dist.is_initialized():  # a clean shutdown: gloo threads torn down at exit can abort the process
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    from worker_exit import exit_after_success  # tests/ is the script folder, first on sys.path

    main(*sys.argv[1:4])
    exit_after_success()
