"""One FDT pretraining step (forward, backward, logit-scale clamp, AdamW with the official groups, clamp) on a fixed
global batch, for the 2-process test.

Run as `python fdt_ddp_worker.py OUT GLOBAL_BATCH` (one process holds the whole batch) or under
`torchrun --nproc_per_node 2` (gloo on CPU; rank r holds rows [r·B, (r+1)·B)). Every process builds the same seeded
model and data; DDP averages the gradients, and the contrastive loss gathers embeddings across processes.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from vlalign.models.modeling_fdt import FdtForPreTraining, fdt_parameter_groups
from vlalign.recipes.fdt import tiny_fdt_config


def main(output: str, global_batch: int) -> None:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size > 1:
        dist.init_process_group("gloo")
    config = tiny_fdt_config(
        60, image_size=16, patch_size=8, width=32, vision_layers=1, text_layers=1, context_length=8, fdt_num_tokens=32,
        fdt_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    model = FdtForPreTraining(config).train()
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(global_batch, 3, 16, 16, generator=generator)
    input_ids = torch.randint(1, 57, (global_batch, 8), generator=generator)
    lengths = torch.randint(3, 9, (global_batch,), generator=generator)
    attention_mask = (torch.arange(8)[None] < lengths[:, None]).long()
    input_ids = input_ids * attention_mask
    input_ids[torch.arange(global_batch), lengths - 1] = config.text_config.eos_token_id
    rows = slice(rank * global_batch // world_size, (rank + 1) * global_batch // world_size)

    optimizer = torch.optim.AdamW(fdt_parameter_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.98), eps=1e-8)
    wrapped = DistributedDataParallel(model) if world_size > 1 else model
    out = wrapped(pixel_values=pixels[rows], input_ids=input_ids[rows], attention_mask=attention_mask[rows])
    optimizer.zero_grad()
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.before_optimizer_step(0)
    optimizer.step()
    model.after_optimizer_step(0)

    loss = out.loss.detach().clone()
    if world_size > 1:
        dist.all_reduce(loss)
        loss /= world_size
    if rank == 0:
        state = {name: value.clone() for name, value in model.state_dict().items()}
        torch.save({"world_size": world_size, "loss": loss, "grads": grads, "state": state}, f"{output}/result.pt")
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    from worker_exit import exit_after_success  # tests/ is the script folder, first on sys.path

    main(sys.argv[1], int(sys.argv[2]))
    exit_after_success()
