"""Train a tiny model of a registered method for a few steps with AlignmentTrainer and save what the 2-process test
compares.

Run as `python ddp_worker.py OUT BATCH NEGATIVES METHOD` (one process) or under `torchrun --nproc_per_node 2` (gloo on
CPU), with BATCH the per-process batch size. The model is the method's tiny config under the registry's test size caps
and its pretraining collator (SIMLA's includes the MIM masks and targets). The learning rate is 0, so the weights stay
as initialised and every difference between the runs can only come from how batches are split, gathered and enqueued.
"""

from __future__ import annotations

import sys

import torch

from vlalign.data.collator import AlignmentCollator
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.methods import get_method
from vlalign.recipes import dataset_captions
from vlalign.training.trainer import AlignmentTrainer, AlignmentTrainingArguments

IMAGE_SIZE = 32


def main(output: str, per_device_batch: int, global_negatives: bool, method_name: str) -> None:
    method = get_method(method_name)
    dataset = make_synthetic_dataset(num_train=48, num_validation=4, num_test=4, image_size=IMAGE_SIZE, seed=5)
    processor = method.build_processor(method.build_tokenizer(dataset_captions(dataset)), IMAGE_SIZE)
    torch.manual_seed(0)
    config = method.tiny_config(
        processor.tokenizer,
        IMAGE_SIZE,
        **{**method.test_overrides, "queue_size": 32, "itc_global_negatives": global_negatives},
    )
    args = AlignmentTrainingArguments(
        output_dir=output,
        per_device_train_batch_size=per_device_batch,
        max_steps=5,
        learning_rate=0.0,
        weight_decay=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=11,
        dataloader_num_workers=0,
    )
    extra = method.pretraining_collator_kwargs(config, processor, dataset["train"])
    trainer = AlignmentTrainer(
        model=method.pretraining_class(config),
        args=args,
        train_dataset=dataset["train"],
        data_collator=AlignmentCollator(processor, preset="pretrain", text_column="captions", **extra),
        processing_class=processor,
    )
    trainer.train()
    if trainer.is_world_process_zero():
        model = trainer.model
        torch.save(
            {
                "world_size": args.world_size,
                "image_queue": model.image_queue,
                "text_queue": model.text_queue,
                "queue_ptr": model.queue_ptr,
                "loss_itc": torch.tensor([e["loss_itc"] for e in trainer.state.log_history if "loss_itc" in e]),
            },
            f"{output}/result.pt",
        )
    if torch.distributed.is_initialized():  # a clean shutdown: gloo threads torn down at exit can abort the process
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    from worker_exit import exit_after_success  # tests/ is the script folder, first on sys.path

    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "global", sys.argv[4])
    exit_after_success()
