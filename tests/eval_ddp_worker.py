"""Evaluate retrieval with a tiny seeded model of a registered method and save what the 2-process test compares.

Run as `python eval_ddp_worker.py OUT METHOD` (one process) or under `torchrun --nproc_per_node 2` (gloo on CPU): every
process builds the same model and data; `evaluate_retrieval` shards the ITM re-rank pairs over the processes and
gathers their scores. 6 test images with 2 captions each and `k_test=3` give an odd number of re-rank pairs, so the
shards are uneven; 4 pairs per fusion forward give each shard several batches and a partial last one.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.evaluation import evaluate_retrieval
from vlalign.methods import get_method
from vlalign.recipes import dataset_captions

IMAGE_SIZE = 32


def main(output: str, method_name: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    method = get_method(method_name)
    dataset = make_synthetic_dataset(num_train=0, num_validation=0, num_test=6, image_size=IMAGE_SIZE, seed=2)
    processor = method.build_processor(method.build_tokenizer(dataset_captions(dataset)), IMAGE_SIZE)
    torch.manual_seed(0)
    model = method.pretraining_class(method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides))
    metrics = evaluate_retrieval(
        model, processor, dataset["test"], k_test=3, rerank_batch_size=4, return_scores=True, show_progress=False
    )
    metrics["world_size"] = dist.get_world_size() if dist.is_initialized() else 1
    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save(metrics, f"{output}/result.pt")
    if dist.is_initialized():  # a clean shutdown: gloo threads torn down at exit can abort the process
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    from worker_exit import exit_after_success  # tests/ is the script folder, first on sys.path

    main(sys.argv[1], sys.argv[2])
    exit_after_success()
