"""One CODIS pretraining forward and backward on a fixed global batch, for the 2-process test.

Run under `torchrun --nproc_per_node 2 codis_ddp_worker.py OUT GLOBAL_BATCH` (gloo on CPU; rank r holds rows
[r·B, (r+1)·B)), or as `python codis_ddp_worker.py OUT GLOBAL_BATCH` (one process holds the whole batch; the test
calls `compute` in its own process instead, which is the same and saves an interpreter start). Every process builds the same seeded
model and data. For each configuration variant it saves, on rank 0: the teacher transport plans of the global batch
(each rank's local rows gathered in rank order), the alignment, code and OT losses averaged over the processes, and the
gradients of their sum averaged over the processes (what DDP would apply). No optimizer step: the comparison is about
how CODIS splits, gathers and slices, nothing else.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

import vlalign
from vlalign.methods import get_method
from vlalign.recipes.codis import build_codis_tokenizer, tiny_codis_config

IMAGE_SIZE = 32
CAPTIONS = ["a red square at the top left", "a blue circle in the middle", "a green triangle at the bottom right"]
#: configuration variants compared between 1 and 2 processes (all with ITC over the global batch)
VARIANTS = {
    "swapped_prediction": {},
    "assignment_contrast": {"code_loss_type": "assignment_contrast"},
    "joint_queue_teacher_ot": {
        "sinkhorn_joint": True,
        "sinkhorn_use_queue": True,
        "sinkhorn_queue_rows": 4,
        "ot_plan_source": "teacher",
    },
}
LOSSES = ("loss_align", "loss_code", "loss_t2p", "loss_i2p", "loss_ot")


def global_batch_data(tokenizer, global_batch: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, len(tokenizer), (global_batch, 7), generator=generator)
    input_ids[:, 0] = tokenizer.cls_token_id
    lengths = torch.randint(3, 8, (global_batch,), generator=generator)
    attention_mask = (torch.arange(7)[None] < lengths[:, None]).long()
    input_ids = input_ids.masked_fill(attention_mask == 0, tokenizer.pad_token_id)
    pixel_values = torch.randn(global_batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


def mean_over_processes(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    tensor = tensor.detach().clone()
    if world_size > 1:
        dist.all_reduce(tensor)
        tensor /= world_size
    return tensor


def gather_rows(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size == 1:
        return tensor.detach().clone()
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.detach().contiguous())
    return torch.cat(parts)


def run_variant(overrides: dict, tokenizer, data: dict, rows: slice, world_size: int) -> dict:
    config = tiny_codis_config(
        tokenizer, IMAGE_SIZE, **{**get_method("codis").test_overrides, "itc_global_negatives": True, **overrides}
    )
    torch.manual_seed(0)
    model = vlalign.CodisForPreTraining(config).train()
    out = model(**{k: v[rows] for k, v in data.items()}, generator=torch.Generator().manual_seed(2))
    (out.loss_align + out.loss_code + out.loss_ot).backward()
    grads = {
        name: mean_over_processes(p.grad, world_size) for name, p in model.named_parameters() if p.grad is not None
    }
    return {
        "losses": {name: mean_over_processes(getattr(out, name), world_size) for name in LOSSES},
        "transport_i2p": gather_rows(out.transport_i2p, world_size),
        "transport_t2p": gather_rows(out.transport_t2p, world_size),
        "teacher_scores_image": gather_rows(model.base_model.codebook.scores(out.image_feat_m), world_size),
        "grads": grads,
    }


def compute(global_batch: int, world_size: int = 1, rank: int = 0) -> dict[str, dict]:
    """Every variant's results; with `world_size` 1 (no process group) the single-process reference, which the test
    computes in its own process."""
    tokenizer = build_codis_tokenizer(CAPTIONS)
    data = global_batch_data(tokenizer, global_batch)
    local_batch = global_batch // world_size
    rows = slice(rank * local_batch, (rank + 1) * local_batch)
    return {name: run_variant(overrides, tokenizer, data, rows, world_size) for name, overrides in VARIANTS.items()}


def main(output: str, global_batch: int) -> None:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size > 1:
        dist.init_process_group("gloo")
    torch.set_num_threads(1)
    results = compute(global_batch, world_size, rank)
    if rank == 0:
        torch.save({"world_size": world_size, "variants": results}, f"{output}/result.pt")
    if world_size > 1:  # a clean shutdown: gloo threads torn down at exit can abort the process
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    from worker_exit import exit_after_success  # tests/ is the script folder, first on sys.path

    main(sys.argv[1], int(sys.argv[2]))
    exit_after_success()
