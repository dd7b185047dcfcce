"""Streaming training data (`vlalign.data.streaming`): webdataset tar shards and streaming `datasets`, split by shard
over processes and DataLoader workers, every sample once per epoch, a resume that continues with the next unseen
sample (bitwise the uninterrupted run), and corrupt samples skipped, counted and reported."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch
import webdataset as wds

from vlalign.data.collator import AlignmentCollator
from vlalign.data.streaming import (
    STREAM_POSITION,
    ImageTextStream,
    StreamProgress,
    datasets_shards,
    webdataset_shards,
)
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.methods import get_method, method_names
from vlalign.training.trainer import AlignmentTrainer, AlignmentTrainingArguments

WORKER = Path(__file__).parent / "stream_worker.py"
NUM_SHARDS, PER_SHARD = 4, 8


def jpeg_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    """4 tar shards of 8 synthetic JPEG + caption samples (keys `SSSIII`), and the captions for a tokenizer."""
    folder = tmp_path_factory.mktemp("shards")
    rows = make_synthetic_dataset(NUM_SHARDS * PER_SHARD, 0, 0, image_size=32, seed=5)["train"]
    captions = []
    for shard in range(NUM_SHARDS):
        with wds.TarWriter(str(folder / f"shard-{shard:03d}.tar")) as writer:
            for item in range(PER_SHARD):
                row = rows[shard * PER_SHARD + item]
                writer.write(
                    {"__key__": f"{shard:03d}{item:03d}", "jpg": jpeg_bytes(row["image"]), "txt": row["captions"][0]}
                )
                captions.append(row["captions"][0])
    (folder / "captions.json").write_text(json.dumps(captions))
    return folder


def tar_paths(folder: Path) -> list[str]:
    return sorted(str(path) for path in folder.glob("*.tar"))


def keys_of(rows) -> list[str]:
    return [row["image_id"] for row in rows]


def read_as(stream: ImageTextStream, process: int, processes: int, worker: int, workers: int) -> list[dict]:
    return [row for shard in stream.shards_of(process, processes, worker, workers) for row in stream.read_shard(shard)]


def test_webdataset_shards_decode_lazily_to_rgb_rows_with_positions(shard_dir):
    stream = ImageTextStream(webdataset_shards(tar_paths(shard_dir)), shuffle_shards=False)
    rows = list(stream)
    assert len(rows) == NUM_SHARDS * PER_SHARD
    assert keys_of(rows) == [f"{s:03d}{i:03d}" for s in range(NUM_SHARDS) for i in range(PER_SHARD)]
    assert rows[0]["image"].mode == "RGB" and rows[0]["image"].size == (32, 32)
    assert isinstance(rows[0]["caption"], str) and rows[0]["caption"]
    assert [row[STREAM_POSITION] for row in rows[:2]] == [(0, 0, 0, 0), (0, 0, 1, 0)]
    # a brace pattern names the same shards
    pattern = str(shard_dir / "shard-{000..003}.tar")
    assert [shard.name for shard in webdataset_shards(pattern)] == tar_paths(shard_dir)


@pytest.mark.parametrize("processes,workers", [(1, 1), (1, 3), (2, 1), (2, 2)])
def test_every_sample_is_read_by_exactly_one_worker_of_one_process_per_epoch(shard_dir, processes, workers):
    stream = ImageTextStream(webdataset_shards(tar_paths(shard_dir)), seed=1, shuffle_buffer=3)
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        keys = Counter(
            key
            for process in range(processes)
            for worker in range(workers)
            for key in keys_of(read_as(stream, process, processes, worker, workers))
        )
        assert set(keys.values()) == {1} and len(keys) == NUM_SHARDS * PER_SHARD
    assert stream.epoch_shard_order(0) != stream.epoch_shard_order(1) or stream.epoch_shard_order(0) != list(
        range(NUM_SHARDS)
    )


def test_shuffle_buffer_is_a_seeded_permutation_of_each_shard(shard_dir):
    def shard_keys(seed, epoch):
        stream = ImageTextStream(webdataset_shards(tar_paths(shard_dir)), seed=seed, shuffle_buffer=4)
        stream.set_epoch(epoch)
        return keys_of(stream.read_shard(2))

    stored = [f"002{i:03d}" for i in range(PER_SHARD)]
    assert sorted(shard_keys(0, 0)) == stored and shard_keys(0, 0) != stored
    assert shard_keys(0, 0) == shard_keys(0, 0)
    assert shard_keys(0, 0) != shard_keys(0, 1)


def test_a_resumed_stream_yields_exactly_the_unconsumed_samples(shard_dir):
    stream = ImageTextStream(webdataset_shards(tar_paths(shard_dir)), seed=4, shuffle_buffer=3)
    stream.set_epoch(2)
    rows = read_as(stream, 0, 1, 0, 2) + read_as(stream, 0, 1, 1, 2)
    progress = StreamProgress(epoch=2)
    consumed = rows[:5] + rows[16:19]  # worker 0's first 5 samples, worker 1's first 3
    for start in range(0, len(consumed), 4):
        progress.update(torch.tensor([row[STREAM_POSITION] for row in consumed[start : start + 4]]))
    resumed = ImageTextStream(webdataset_shards(tar_paths(shard_dir)), seed=4, shuffle_buffer=3)
    resumed.load_state_dict(json.loads(json.dumps(progress.state_dict())))
    assert resumed.epoch == 2
    rest = read_as(resumed, 0, 1, 0, 2) + read_as(resumed, 0, 1, 1, 2)
    assert sorted(keys_of(consumed) + keys_of(rest)) == sorted(keys_of(rows))
    assert keys_of(rest) == keys_of(rows[5:16] + rows[19:])
    resumed.set_epoch(3)  # the next epoch starts from the beginning
    assert len(list(resumed)) == NUM_SHARDS * PER_SHARD


def test_progress_merges_processes_idempotently_and_rejects_garbage():
    first, second = StreamProgress(process_index=0), StreamProgress(process_index=1)
    first.update(torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1]]))
    second.update(torch.tensor([[0, 3, 4, 2]]))
    merged = StreamProgress.merged([first, second, first])
    assert merged.consumed == {0: 2, 3: 5} and merged.num_skipped == 3 and merged.batches == {0: 1, 1: 1}
    second.update(torch.tensor([[1, 2, 0, 0]]))  # a new epoch starts counting afresh and keeps the old skips
    assert (second.epoch, second.consumed, second.num_skipped) == (1, {2: 1}, 2)
    with pytest.raises(ValueError, match="Not a stream position"):
        StreamProgress.from_state_dict({"consumed": {}})
    stream = ImageTextStream(webdataset_shards(["a.tar"]))
    with pytest.raises(ValueError, match="names shard 3, but this stream has 1 shards"):
        stream.load_state_dict(merged.state_dict())


def test_corrupt_and_captionless_samples_are_skipped_counted_or_refused(tmp_path, shard_dir):
    image = make_synthetic_dataset(2, 0, 0, image_size=32, seed=1)["train"][0]["image"]
    path = tmp_path / "bad.tar"
    with wds.TarWriter(str(path)) as writer:
        writer.write({"__key__": "good0", "jpg": jpeg_bytes(image), "txt": "a red circle"})
        writer.write({"__key__": "truncated", "jpg": jpeg_bytes(image)[:40], "txt": "a blue star"})
        writer.write({"__key__": "blank", "jpg": jpeg_bytes(image), "txt": "   "})
        writer.write({"__key__": "nocaption", "jpg": jpeg_bytes(image)})
        writer.write({"__key__": "good1", "jpg": jpeg_bytes(image), "txt": "a green square"})
    stream = ImageTextStream(webdataset_shards([str(path)]))
    with pytest.warns(UserWarning, match="Skipping sample 'truncated' of shard"):
        rows = list(stream)
    assert keys_of(rows) == ["good0", "good1"]
    assert rows[-1][STREAM_POSITION] == (0, 0, 4, 3)  # offset 4, three skipped before it
    progress = StreamProgress()
    progress.update(torch.tensor([row[STREAM_POSITION] for row in rows]))
    assert progress.num_skipped == 3
    with pytest.raises(ValueError, match=r"Sample 'truncated' \(offset 1\) of shard .*bad.tar is unusable"):
        list(ImageTextStream(webdataset_shards([str(path)]), on_error="raise"))


def test_bad_arguments_get_clear_errors(shard_dir):
    with pytest.raises(ValueError, match="No shards"):
        webdataset_shards([])
    with pytest.raises(ValueError, match="needs at least one shard"):
        ImageTextStream([])
    with pytest.raises(ValueError, match="on_error must be"):
        ImageTextStream(webdataset_shards(tar_paths(shard_dir)), on_error="ignore")
    stream = ImageTextStream(webdataset_shards(tar_paths(shard_dir)[:1]))
    with pytest.raises(ValueError, match="1 shards cannot feed 2 processes"):
        stream.check_split(2)
    with pytest.warns(UserWarning, match="do not split evenly over 3 processes"):
        ImageTextStream(webdataset_shards(tar_paths(shard_dir))).check_split(3)
    with pytest.raises(TypeError, match="needs a datasets.IterableDataset"):
        datasets_shards(datasets.Dataset.from_dict({"image": [], "caption": []}))


def test_streaming_datasets_from_parquet_files(tmp_path):
    rows = make_synthetic_dataset(12, 0, 0, image_size=32, seed=2)["train"]
    for part in range(3):
        chunk = rows.select(range(part * 4, part * 4 + 4))
        table = datasets.Dataset.from_dict(
            {
                "jpg": [{"bytes": jpeg_bytes(image), "path": None} for image in chunk["image"]],
                "text": [captions[0] for captions in chunk["captions"]],
                "key": [f"p{part}-{i}" for i in range(4)],
            },
            features=datasets.Features(
                {"jpg": datasets.Image(), "text": datasets.Value("string"), "key": datasets.Value("string")}
            ),
        )
        table.to_parquet(str(tmp_path / f"part-{part}.parquet"))
    files = sorted(str(path) for path in tmp_path.glob("*.parquet"))
    streamed = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
    shards = datasets_shards(streamed, image_column="jpg", text_column="text", key_column="key")
    assert len(shards) == 3
    stream = ImageTextStream(shards, seed=0)
    keys = Counter(key for worker in range(2) for key in keys_of(read_as(stream, 0, 1, worker, 2)))
    assert set(keys.values()) == {1} and len(keys) == 12
    assert next(iter(stream))["image"].mode == "RGB"
    with pytest.raises(KeyError, match="Columns \\['caption'\\] are not in the dataset"):
        datasets_shards(streamed, image_column="jpg")


def run_worker(
    shard_dir: Path, output: Path, processes: int, max_steps: int, save_steps: int, resume: Path | None = None
):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), str(WORKER), str(shard_dir), str(output)]
    command += [str(max_steps), str(save_steps)] + ([str(resume)] if resume else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return [
        (step, tuple(row))
        for rank in range(processes)
        for step, rows in json.loads((output / f"positions_rank{rank}.json").read_text())
        for row in rows
    ]


def assert_each_epoch_covers_every_sample_once(seen: list[tuple[int, tuple[int, int, int]]], epochs: int) -> None:
    every = {(shard, offset) for shard in range(NUM_SHARDS) for offset in range(PER_SHARD)}
    for epoch in range(epochs):
        samples = Counter((shard, offset) for _, (e, shard, offset) in seen if e == epoch)
        assert set(samples) == every and set(samples.values()) == {1}, f"epoch {epoch}: {samples}"


def test_trainer_streams_each_epoch_exactly_once_and_resumes_bitwise(tmp_path, shard_dir):
    """One process, 2 DataLoader workers: 8 steps of 4 = one epoch; resuming from step 3 continues with the unseen
    samples in the uninterrupted order and ends with the same weights, bit for bit."""
    full = run_worker(shard_dir, tmp_path / "full", 1, max_steps=16, save_steps=3)
    assert_each_epoch_covers_every_sample_once(full, epochs=2)
    resumed = run_worker(shard_dir, tmp_path / "resumed", 1, 16, 100, resume=tmp_path / "full" / "checkpoint-3")
    assert [row for step, row in full if step < 3] + [row for _, row in resumed] == [row for _, row in full]
    final_full = torch.load(tmp_path / "full" / "final_state.pt", weights_only=True)
    final_resumed = torch.load(tmp_path / "resumed" / "final_state.pt", weights_only=True)
    for name, tensor in final_full.items():
        assert torch.equal(tensor, final_resumed[name]), name
    state = json.loads((tmp_path / "full" / "checkpoint-3" / "stream_state.json").read_text())
    assert state["epoch"] == 0 and sum(state["consumed"].values()) == 12 and state["layout"] == [1, 2]


def test_two_processes_see_every_sample_once_per_epoch_also_across_a_resume(tmp_path, shard_dir):
    """2 gloo processes × 2 workers × batch 4: an epoch is 4 steps. A run to step 6 (checkpoint at step 3, mid-epoch)
    and a resume from that checkpoint together cover both epochs exactly once."""
    first = run_worker(shard_dir, tmp_path / "first", 2, max_steps=8, save_steps=3)
    assert_each_epoch_covers_every_sample_once(first, epochs=2)
    resumed = run_worker(shard_dir, tmp_path / "resumed", 2, 8, 100, resume=tmp_path / "first" / "checkpoint-3")
    combined = [(step, row) for step, row in first if step < 3] + resumed
    assert_each_epoch_covers_every_sample_once(combined, epochs=2)
    assert sorted(row for _, row in combined) == sorted(row for _, row in first)


def test_resuming_a_stream_from_a_checkpoint_without_its_position_is_refused(tmp_path, shard_dir):
    run_worker(shard_dir, tmp_path / "run", 1, max_steps=2, save_steps=2)
    (tmp_path / "run" / "checkpoint-2" / "stream_state.json").unlink()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(WORKER), str(shard_dir), str(tmp_path / "again"), "4", "100"]
    result = subprocess.run(
        [*command, str(tmp_path / "run" / "checkpoint-2")], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode != 0
    assert "has no stream_state.json, so the stream's position is unknown" in result.stderr


@pytest.mark.parametrize("method_name", method_names())
def test_every_method_pretrains_on_a_stream_through_its_registry_collator(tmp_path, shard_dir, method_name):
    method = get_method(method_name)
    captions = json.loads((shard_dir / "captions.json").read_text())
    processor = method.build_processor(method.build_tokenizer(captions), 32)
    stream = ImageTextStream(webdataset_shards(tar_paths(shard_dir)), seed=2)
    torch.manual_seed(0)
    config = method.tiny_config(processor.tokenizer, 32, **{**method.test_overrides, "queue_size": 16})
    extra = method.pretraining_collator_kwargs(config, processor, stream)  # SIMLA fits its image codes on the stream
    args = AlignmentTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = AlignmentTrainer(
        model=method.pretraining_class(config),
        args=args,
        train_dataset=stream,
        data_collator=AlignmentCollator(processor, preset="pretrain", **extra),
        processing_class=processor,
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    assert sum(trainer.stream_progress.consumed.values()) == 12
    assert trainer.state.log_history[0]["skipped_samples"] == 0


def test_a_stream_of_known_size_gives_epoch_schedules_their_epoch(tmp_path, shard_dir):
    """ALBEF's α ramps over the first epoch: with `num_samples` the stream's epoch (32 samples / batch 4 = 8 steps);
    without, a warning says every step counts as an epoch."""
    method = get_method("albef")
    captions = json.loads((shard_dir / "captions.json").read_text())
    processor = method.build_processor(method.build_tokenizer(captions), 32)

    def alpha_after_two_steps(**stream_kwargs) -> float:
        config = method.tiny_config(processor.tokenizer, 32, **{**method.test_overrides, "queue_size": 16})
        args = AlignmentTrainingArguments(
            output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, logging_steps=1,
            save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
        )  # fmt: skip
        trainer = AlignmentTrainer(
            model=method.pretraining_class(config),
            args=args,
            train_dataset=ImageTextStream(webdataset_shards(tar_paths(shard_dir)), **stream_kwargs),
            data_collator=AlignmentCollator(processor, preset="pretrain"),
            processing_class=processor,
        )
        trainer.train()
        return trainer.state.log_history[1]["alpha"]

    assert alpha_after_two_steps(num_samples=NUM_SHARDS * PER_SHARD) == pytest.approx(0.4 * 1 / 8)
    with pytest.warns(UserWarning, match="take every step as an epoch"):
        assert alpha_after_two_steps() == pytest.approx(0.4)


def test_sixteen_bit_images_are_scaled_not_saturated(tmp_path):
    """A 16-bit greyscale PNG (mode I;16) at mid-grey decodes to mid-grey RGB, not white."""
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(buffer, "PNG")
    with wds.TarWriter(str(tmp_path / "deep.tar")) as writer:
        writer.write({"__key__": "grey16", "png": buffer.getvalue(), "txt": "a grey square"})
    (row,) = list(ImageTextStream(webdataset_shards([str(tmp_path / "deep.tar")])))
    assert row["image"].mode == "RGB" and row["image"].getpixel((0, 0)) == (128, 128, 128)
