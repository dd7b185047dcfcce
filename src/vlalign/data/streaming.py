"""Web-scale pretraining data: image–caption pairs streamed from shards, for CC3M/CC12M/LAION-sized training.

:class:`ImageTextStream` is a ``torch.utils.data.IterableDataset`` over *shards*: webdataset tar files
(:func:`webdataset_shards`, read with the ``webdataset`` package) or the shards of a streaming ``datasets``
``IterableDataset`` (:func:`datasets_shards`, e.g. ``load_dataset("parquet", ..., streaming=True)``). Nothing is read
when it is built; each DataLoader worker reads its own shards and decodes images as it goes.

* **Sharding.** Every epoch the shard list is shuffled with ``(seed, epoch)`` and dealt round-robin over all
  DataLoader workers of all processes, so each sample is read by exactly one worker of one process per epoch.
* **Order.** Each shard is read in its stored order, optionally through a seeded shuffle buffer
  (``shuffle_buffer``), so a shard's sample order is a fixed function of ``(seed, epoch, shard)``.
* **Resumable position.** Every row carries its ``stream_position`` (epoch, shard, offset within the shard's order,
  corrupt samples skipped so far in the shard). :class:`StreamProgress` folds the positions of the batches that were
  trained on into "how many samples of each shard are consumed"; `AlignmentTrainer` saves it with every checkpoint
  and a resumed stream skips exactly those samples (without decoding them), so training continues with the next
  unseen sample, even with another number of processes or workers.
* **Counted skips.** A sample whose image is missing (no member with an extension PIL reads), does not decode or
  is over the pixel limit (:func:`~vlalign.models.input_checks.open_image`), or whose caption is missing or blank
  (whitespace and invisible characters only), is skipped, counted in its position and reported by the trainer
  (``on_error="skip"``, the default), or raises (``on_error="raise"``), the message naming the sample.
"""

from __future__ import annotations

import hashlib
import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from PIL import Image

from ..models.input_checks import is_blank, open_image, to_rgb

__all__ = [
    "STREAM_POSITION",
    "ImageTextStream",
    "StreamDataLoader",
    "StreamProgress",
    "StreamShard",
    "datasets_shards",
    "webdataset_shards",
]

#: row key (and batch key, ``long [B, 4]``) of a streamed sample's position: epoch, shard, offset, skipped so far
STREAM_POSITION = "stream_position"


def _pil_image_extensions() -> tuple[str, ...]:
    """Every file extension PIL can open (its registered extensions of formats with an opener), common ones first."""
    readable = {ext.lstrip(".").lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    common = [ext for ext in ("jpg", "jpeg", "png", "webp") if ext in readable]
    return (*common, *sorted(readable.difference(common)))


#: sample members read as the image, in order of preference: every extension PIL opens (jpg, png, tif, ...)
IMAGE_EXTENSIONS = _pil_image_extensions()
TEXT_EXTENSIONS = ("txt", "caption", "text")


@dataclass(frozen=True)
class StreamShard:
    """One shard of a stream: a name for messages and a function that reads its raw samples in a fixed order.

    A raw sample is a dict with ``"__key__"`` (a unique id), ``"image"`` (encoded bytes, a ``{"bytes", "path"}``
    dict or a PIL image) and ``"caption"`` (str or UTF-8 bytes), and optionally ``"__members__"`` (the names of what
    the sample holds, for messages); a missing entry is skipped and counted."""

    name: str
    read: Callable[[], Iterable[Mapping[str, Any]]]


# ------------------------------------------------------------------------------------------------------------------
# shard sources
# ------------------------------------------------------------------------------------------------------------------


def _first_present(sample: Mapping[str, Any], extensions: Sequence[str]) -> Any:
    return next((sample[ext] for ext in extensions if ext in sample), None)


@dataclass(frozen=True)
class _TarShardReader:
    url: str
    image_extensions: tuple[str, ...]
    text_extensions: tuple[str, ...]

    def __call__(self) -> Iterator[dict[str, Any]]:
        from webdataset.tariterators import tarfile_samples

        for sample in tarfile_samples([{"url": self.url}]):
            yield {
                "__key__": sample["__key__"],
                "image": _first_present(sample, self.image_extensions),
                "caption": _first_present(sample, self.text_extensions),
                "__members__": tuple(sorted(name for name in sample if not name.startswith("__"))),
            }


def webdataset_shards(
    urls: str | Sequence[str],
    image_extensions: Sequence[str] = IMAGE_EXTENSIONS,
    text_extensions: Sequence[str] = TEXT_EXTENSIONS,
) -> list[StreamShard]:
    """Shards of webdataset tar files: a brace pattern (``"cc3m-{000000..000331}.tar"``, several joined with
    ``"::"``) or a list of paths/URLs (anything ``webdataset.gopen`` opens, e.g. ``pipe:curl -s ...``). The image is
    the first of `image_extensions` (default: every extension PIL opens) a sample has, the caption the first of
    `text_extensions`."""
    from webdataset.shardlists import expand_urls

    expanded = [url for item in ([urls] if isinstance(urls, str) else urls) for url in expand_urls(str(item))]
    if not expanded:
        raise ValueError(f"No shards in {urls!r}; pass tar paths or a brace pattern such as 'data-{{000..009}}.tar'.")
    image_ext, text_ext = tuple(image_extensions), tuple(text_extensions)
    return [StreamShard(url, _TarShardReader(url, image_ext, text_ext)) for url in expanded]


@dataclass(frozen=True)
class _DatasetsShardReader:
    dataset: Any  # one shard of a datasets.IterableDataset
    index: int
    image_column: str
    text_column: str
    key_column: str | None

    def __call__(self) -> Iterator[dict[str, Any]]:
        for position, row in enumerate(self.dataset):
            key = row[self.key_column] if self.key_column else f"shard{self.index}/{position}"
            yield {"__key__": str(key), "image": row.get(self.image_column), "caption": row.get(self.text_column)}


def datasets_shards(
    dataset: Any, image_column: str = "image", text_column: str = "caption", key_column: str | None = None
) -> list[StreamShard]:
    """The shards of a streaming ``datasets.IterableDataset`` (one per data file for ``load_dataset(...,
    streaming=True)``). An ``Image`` column is read undecoded (its bytes), so skipping consumed samples at resume
    costs no decoding; `key_column` (default: shard and position) names each sample in messages and seeds."""
    import datasets

    if not isinstance(dataset, datasets.IterableDataset):
        raise TypeError(
            f"datasets_shards needs a datasets.IterableDataset (load_dataset(..., streaming=True) or "
            f"Dataset.to_iterable_dataset(num_shards=...)), got {type(dataset).__name__}."
        )
    features = dataset.features or {}
    missing = [column for column in (image_column, text_column, key_column) if column and column not in features]
    if features and missing:
        raise KeyError(f"Columns {missing} are not in the dataset; its columns are {sorted(features)}.")
    if isinstance(features.get(image_column), datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    return [
        StreamShard(
            f"shard {index} of {dataset.n_shards}",
            _DatasetsShardReader(
                dataset.shard(num_shards=dataset.n_shards, index=index), index, image_column, text_column, key_column
            ),
        )
        for index in range(dataset.n_shards)
    ]


# ------------------------------------------------------------------------------------------------------------------
# the stream
# ------------------------------------------------------------------------------------------------------------------


def _seed(*parts: Any) -> int:
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _decode_image(image: Any, members: Sequence[str] | None = None) -> Image.Image:
    if image is None and members is not None:
        raise ValueError(
            f"it has no image member (its members: {', '.join(members) or 'none'}); an image member needs an "
            "extension PIL reads (jpg, png, tif, ...: vlalign.data.streaming.IMAGE_EXTENSIONS), or pass "
            "webdataset_shards(..., image_extensions=[...]) naming the sample's image member"
        )
    if image is None or isinstance(image, Mapping) and image.get("bytes") is None and image.get("path") is None:
        raise ValueError("it has no image (the image column is empty)")
    try:
        image = open_image(image)
    except TypeError as err:
        raise ValueError(str(err)) from err
    image.load()
    return to_rgb(image)


def _decode_caption(caption: Any) -> str:
    if isinstance(caption, (bytes, bytearray)):
        caption = caption.decode("utf-8")
    if not isinstance(caption, str):
        raise ValueError(f"expected a caption string, got {type(caption).__name__}")
    if is_blank(caption):
        raise ValueError(f"the caption is empty ({caption!r}: whitespace or invisible characters only)")
    return caption.strip()


class ImageTextStream(torch.utils.data.IterableDataset):
    """Image–caption pairs streamed from `shards` (see the module docstring).

    Args:
        shards: from :func:`webdataset_shards` or :func:`datasets_shards`.
        seed: seeds the per-epoch shard order and the shuffle buffer.
        shuffle_shards: shuffle the shard order every epoch (always the same order when False).
        shuffle_buffer: samples held by the within-shard shuffle buffer (0: the stored order).
        on_error: ``"skip"`` undecodable images and missing/empty captions (counted in `stream_position`, reported
            by the trainer) or ``"raise"`` a ``ValueError`` naming the shard and sample.
        process_index, num_processes: this process's place in distributed training; `AlignmentTrainer` sets them
            (default: ``torch.distributed``'s rank and world size, or a single process).
        num_samples: samples per epoch, when known (e.g. from the shards' index files). Schedules that count in
            epochs need it: ALBEF's α warm-up over the first epoch and its per-epoch cosine schedule.

    Yields rows ``{"image": PIL RGB image, "caption": str, "image_id": sample key, "stream_position": (epoch, shard,
    offset, skipped)}`` for :class:`~vlalign.data.collator.AlignmentCollator`, which passes the positions on.
    """

    def __init__(
        self,
        shards: Sequence[StreamShard],
        seed: int = 0,
        shuffle_shards: bool = True,
        shuffle_buffer: int = 0,
        on_error: Literal["skip", "raise"] = "skip",
        process_index: int | None = None,
        num_processes: int | None = None,
        num_samples: int | None = None,
    ) -> None:
        super().__init__()
        if not shards:
            raise ValueError("ImageTextStream needs at least one shard.")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}.")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}.")
        self.shards = list(shards)
        self.seed = seed
        self.shuffle_shards = shuffle_shards
        self.shuffle_buffer = shuffle_buffer
        self.on_error = on_error
        self.process_index = process_index
        self.num_processes = num_processes
        self.num_samples = num_samples
        self.epoch = 0
        self.resume_offsets: dict[int, int] = {}
        self.resume_skipped: dict[int, int] = {}
        self.resume_batches: dict[int, int] = {}
        self.resume_layout: tuple[int, int] | None = None

    # ------------------------------------------------------------------ position
    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning."""
        self.epoch = epoch
        self.resume_offsets, self.resume_skipped = {}, {}
        self.resume_batches, self.resume_layout = {}, None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue where a :meth:`StreamProgress.state_dict` left off: its epoch, minus its consumed samples."""
        progress = StreamProgress.from_state_dict(state)
        if progress.consumed and max(progress.consumed) >= len(self.shards):
            raise ValueError(
                f"The saved stream position names shard {max(progress.consumed)}, but this stream has "
                f"{len(self.shards)} shards; resume with the same shard list."
            )
        self.epoch = progress.epoch
        self.resume_offsets = dict(progress.consumed)
        self.resume_skipped = dict(progress.skipped.get(progress.epoch, {}))
        self.resume_batches, self.resume_layout = dict(progress.batches), progress.layout

    # ------------------------------------------------------------------ splitting
    def _process(self) -> tuple[int, int]:
        if self.num_processes is not None:
            return self.process_index or 0, self.num_processes
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def epoch_shard_order(self, epoch: int) -> list[int]:
        """Indices of the shards in the order they are dealt out in `epoch`."""
        order = list(range(len(self.shards)))
        if self.shuffle_shards:
            random.Random(_seed(self.seed, epoch, "shards")).shuffle(order)
        return order

    def shards_of(self, process_index: int, num_processes: int, worker_id: int, num_workers: int) -> list[int]:
        """The shards one DataLoader worker of one process reads this epoch (round-robin over all workers)."""
        slots = num_processes * num_workers
        slot = process_index * num_workers + worker_id
        return self.epoch_shard_order(self.epoch)[slot::slots]

    def check_split(self, num_processes: int) -> None:
        """Refuse a split that leaves a process without data, warn when processes get unequal shard counts."""
        if len(self.shards) < num_processes:
            raise ValueError(
                f"{len(self.shards)} shards cannot feed {num_processes} processes; every process needs at least one "
                "shard (write more, smaller shards)."
            )
        if len(self.shards) % num_processes:
            warnings.warn(
                f"{len(self.shards)} shards do not split evenly over {num_processes} processes: processes reach the "
                "end of an epoch at different steps. Use a multiple of the process count for exact epochs.",
                stacklevel=2,
            )

    # ------------------------------------------------------------------ reading
    def _shuffled(self, samples: Iterable[Mapping[str, Any]], shard: int) -> Iterator[Mapping[str, Any]]:
        if not self.shuffle_buffer:
            yield from samples
            return
        rng = random.Random(_seed(self.seed, self.epoch, "buffer", shard))
        buffer: list[Mapping[str, Any]] = []
        for sample in samples:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            slot = rng.randrange(self.shuffle_buffer)
            yield buffer[slot]
            buffer[slot] = sample
        rng.shuffle(buffer)
        yield from buffer

    def read_shard(self, shard: int) -> Iterator[dict[str, Any]]:
        """The rows of one shard this epoch, after the resume offset, skipping (and counting) bad samples."""
        start = self.resume_offsets.get(shard, 0)
        skipped = self.resume_skipped.get(shard, 0)  # positions count the shard's skips since the epoch began
        name = self.shards[shard].name
        for offset, sample in enumerate(self._shuffled(self.shards[shard].read(), shard)):
            if offset < start:
                continue
            key = sample.get("__key__", offset)
            try:
                image = _decode_image(sample.get("image"), sample.get("__members__"))
                caption = _decode_caption(sample.get("caption"))
            except (OSError, ValueError, SyntaxError, UnicodeDecodeError) as err:
                if self.on_error == "raise":
                    raise ValueError(
                        f"Sample {key!r} (offset {offset}) of shard {name} is unusable: {err}. Pass "
                        "on_error='skip' to skip and count such samples."
                    ) from err
                skipped += 1
                warnings.warn(f"Skipping sample {key!r} of shard {name}: {err}", stacklevel=2)
                continue
            yield {
                "image": image,
                "caption": caption,
                "image_id": str(key),
                STREAM_POSITION: (self.epoch, shard, offset, skipped),
            }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        process_index, num_processes = self._process()
        worker = torch.utils.data.get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        if self.resume_layout == (num_processes, num_workers):
            # DataLoader asks worker 0 first: give it the part of the worker whose batch was due next
            worker_id = (worker_id + self.resume_batches.get(process_index, 0)) % num_workers
        for shard in self.shards_of(process_index, num_processes, worker_id, num_workers):
            yield from self.read_shard(shard)


class StreamDataLoader(torch.utils.data.DataLoader):
    """A DataLoader over an :class:`ImageTextStream` that starts the stream's next epoch whenever it is iterated
    again (the first iteration continues the stream's current, possibly resumed, epoch). `after_first_iter` runs once,
    right after the first iterator is made: a resume restores the RNG states there, after the draw that making an
    iterator takes, exactly as they were at that point of the interrupted run."""

    def __init__(self, *args, after_first_iter: Callable[[], None] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.after_first_iter = after_first_iter
        self._iterated = False

    def __iter__(self):
        if self._iterated:
            self.dataset.set_epoch(self.dataset.epoch + 1)
        iterator = super().__iter__()
        if not self._iterated and self.after_first_iter is not None:
            self.after_first_iter()
        self._iterated = True
        return iterator


@dataclass
class StreamProgress:
    """What the batches trained on consumed: per shard of the current `epoch`, the samples up to and including the
    furthest offset seen (one worker reads a shard in order, so that is a prefix); per epoch and shard, the corrupt
    samples skipped within that; and per process, the batches of the epoch, which with the same `layout` (processes,
    DataLoader workers per process) tells a resumed stream which worker's batch comes next, so the resumed run sees
    the batches in the uninterrupted order. Merging is idempotent (maxima), so the processes' progresses combine
    into one however often they are merged."""

    epoch: int = 0
    consumed: dict[int, int] = field(default_factory=dict)
    skipped: dict[int, dict[int, int]] = field(default_factory=dict)
    batches: dict[int, int] = field(default_factory=dict)
    process_index: int = 0
    layout: tuple[int, int] | None = None

    def update(self, positions: torch.Tensor) -> None:
        """Fold in one batch's ``stream_position`` tensor (``long [B, 4]``)."""
        for epoch, shard, offset, skipped in positions.tolist():
            if epoch > self.epoch:
                self.epoch, self.consumed, self.batches = epoch, {}, {}
            if epoch == self.epoch:  # a lagging process's last batches of a closed epoch only add their skips
                self.consumed[shard] = max(self.consumed.get(shard, 0), offset + 1)
            epoch_skips = self.skipped.setdefault(epoch, {})
            epoch_skips[shard] = max(epoch_skips.get(shard, 0), skipped)
        if int(positions[:, 0].max()) == self.epoch:
            self.batches[self.process_index] = self.batches.get(self.process_index, 0) + 1

    @property
    def num_skipped(self) -> int:
        """Corrupt samples skipped, over all epochs, within what was trained on."""
        return sum(sum(shards.values()) for shards in self.skipped.values())

    @classmethod
    def merged(cls, parts: Sequence[StreamProgress]) -> StreamProgress:
        """One progress from several (the processes' own)."""
        merged = cls(epoch=max(part.epoch for part in parts), layout=parts[0].layout)
        for part in parts:
            if part.epoch == merged.epoch:
                for shard, count in part.consumed.items():
                    merged.consumed[shard] = max(merged.consumed.get(shard, 0), count)
                for process, count in part.batches.items():
                    merged.batches[process] = max(merged.batches.get(process, 0), count)
            for epoch, shards in part.skipped.items():
                epoch_skips = merged.skipped.setdefault(epoch, {})
                for shard, count in shards.items():
                    epoch_skips[shard] = max(epoch_skips.get(shard, 0), count)
        return merged

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "consumed": {str(shard): count for shard, count in sorted(self.consumed.items())},
            "skipped": {
                str(epoch): {str(shard): count for shard, count in sorted(shards.items())}
                for epoch, shards in sorted(self.skipped.items())
            },
            "batches": {str(process): count for process, count in sorted(self.batches.items())},
            "layout": list(self.layout) if self.layout else None,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> StreamProgress:
        try:
            return cls(
                epoch=int(state["epoch"]),
                consumed={int(shard): int(count) for shard, count in state["consumed"].items()},
                skipped={
                    int(epoch): {int(shard): int(count) for shard, count in shards.items()}
                    for epoch, shards in state.get("skipped", {}).items()
                },
                batches={int(process): int(count) for process, count in state.get("batches", {}).items()},
                layout=tuple(state["layout"]) if state.get("layout") else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"Not a stream position (expected 'epoch' and 'consumed' per shard): {err}") from err
