"""Train a tiny ALBEF with AlignmentTrainer on webdataset shards and record which samples each step trained on.

Run as `python stream_worker.py SHARD_DIR OUT MAX_STEPS SAVE_STEPS [RESUME_CHECKPOINT]` (one process) or under
`torchrun --nproc_per_node 2` (gloo on CPU). Every process writes `positions_rank<R>.json`: for each training batch,
the global step before it and its rows' (epoch, shard, offset), so the test can check that an epoch covers every
sample exactly once, also across a resume.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from vlalign.data.collator import AlignmentCollator
from vlalign.data.streaming import STREAM_POSITION, ImageTextStream, webdataset_shards
from vlalign.methods import get_method
from vlalign.training.trainer import AlignmentTrainer, AlignmentTrainingArguments

IMAGE_SIZE = 32


class RecordingTrainer(AlignmentTrainer):
    """Keeps every training batch's stream positions with the step it belongs to."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[int, list[list[int]]]] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.seen.append((self.state.global_step, inputs[STREAM_POSITION][:, :3].tolist()))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def main(shard_dir: str, output: str, max_steps: int, save_steps: int, resume: str | None) -> None:
    method = get_method("albef")
    shards = webdataset_shards(sorted(str(path) for path in Path(shard_dir).glob("*.tar")))
    captions = json.loads((Path(shard_dir) / "captions.json").read_text())
    processor = method.build_processor(method.build_tokenizer(captions), IMAGE_SIZE)
    torch.manual_seed(0)
    config = method.tiny_config(processor.tokenizer, IMAGE_SIZE, **{**method.test_overrides, "queue_size": 16})
    args = AlignmentTrainingArguments(
        output_dir=output,
        per_device_train_batch_size=4,
        max_steps=max_steps,
        learning_rate=1e-3,
        logging_steps=1,
        save_steps=save_steps,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=3,
        dataloader_num_workers=2,
    )
    trainer = RecordingTrainer(
        model=method.pretraining_class(config),
        args=args,
        train_dataset=ImageTextStream(shards, seed=7, shuffle_buffer=3),
        data_collator=AlignmentCollator(processor, preset="pretrain"),
        processing_class=processor,
    )
    trainer.train(resume_from_checkpoint=resume)
    rank = trainer.args.process_index
    (Path(output) / f"positions_rank{rank}.json").write_text(json.dumps(trainer.seen))
    if rank == 0:
        torch.save(trainer.model.state_dict(), Path(output) / "final_state.pt")


if __name__ == "__main__":
    from worker_exit import exit_after_success  # tests/ is the script folder, first on sys.path

    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else None)
    exit_after_success()
