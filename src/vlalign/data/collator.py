"""Batch collation for training and evaluation of every vlalign method with ``transformers.Trainer`` or a plain
``DataLoader``.

:class:`AlignmentCollator` turns a list of raw dataset rows (as ``datasets.Dataset.__getitem__`` returns them) into
the tensors vlalign's models take: ``pixel_values``, ``input_ids``, ``attention_mask`` and, for retrieval fine-tuning,
``idx`` (the contiguous image index the loaders add). Use it with ``TrainingArguments(remove_unused_columns=False)``:
otherwise the Trainer drops the ``image`` and ``caption`` columns before they reach the collator.

Both dataset layouts work:

* **train layout** (``image``, ``caption`` str, ``image_id``, ``idx``): the caption is used as is.
* **eval layout** (``image``, ``captions`` list, ``image_id``; :func:`~vlalign.data.synthetic.make_synthetic_dataset`),
  with ``text_column="captions"``: every call picks one caption per row uniformly at random, as the official
  pretraining dataset does for its caption lists.

Randomness (caption choice here, augmentations in the image transform) uses the global torch RNG unless a
``torch.Generator`` is given, so Trainer seeding, resuming and DataLoader per-worker seeding reproduce it. An explicit
generator is copied into every DataLoader worker with the *same* state, so all workers would make the same choices;
prefer ``generator=None`` with ``num_workers > 0``.

With ``teacher_view=True`` the collator also returns ``pixel_values_teacher``, a second, independently drawn
augmentation of each image for the momentum (teacher) image encoder (TCL's recipe; CODIS with
``teacher_image_view="augmented"``).

With ``masked_image_modeling`` (a :class:`~vlalign.data.masked_image.MaskedImageModelingInputs`) the collator also
returns SIMLA's masked image modelling inputs ``bool_masked_pos`` and ``mim_labels``, each row's block mask and
tokenizer view drawn from that row's own seeds.
"""

from __future__ import annotations

import hashlib
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ..models.input_checks import check_image, image_file, open_image, to_rgb
from .streaming import STREAM_POSITION

if TYPE_CHECKING:
    from .masked_image import MaskedImageModelingInputs

__all__ = ["AlbefCollator", "AlignmentCollator"]

_LOADER_HINT = (
    "Repair or remove this image, or find every such image before training: load the data with vlalign.data.loaders "
    "(load_karpathy_json / load_image_text_dataset) with check_images='decode' (the default 'header' only opens each "
    "image, 'none' not even that) and on_error='skip' to drop them, counted and reported."
)


def _row_label(position: int, row: Mapping[str, Any], capital: bool = False) -> str:
    label = f"{'B' if capital else 'b'}atch row {position}"
    if "image_id" in row:
        label += f" (image_id={row['image_id']!r})"
    return label


#: margin, in image ranges, around [0, 1] of the pixel values a normalisation may produce (resampling overshoot)
_PIXEL_MARGIN = 1.0


def _add_note(err: BaseException, note: str) -> None:
    if hasattr(err, "add_note"):  # Python >= 3.11
        err.add_note(note)


@dataclass
class AlignmentCollator:
    """Collate raw image–caption rows into model inputs, for any method's processor.

    Args:
        processor: the method's processor, e.g. :class:`~vlalign.AlbefProcessor` (its tokenizer, caption cleaning
            and, without ``image_transform``, its deterministic image processor are used).
        preset: text preset of the processor (``processor.text_presets``): ``"pretrain"``, ``"train"`` or
            ``"eval"``; for ALBEF ≤ 25 tokens, untruncated, and padded/truncated to 30.
        image_transform: callable mapping one image to a ``[3, H, W]`` tensor, e.g.
            :func:`~vlalign.data.transforms.albef_train_transform`; applied per image and stacked. When ``None``,
            ``processor.image_processor`` (square bicubic resize + normalisation) processes the batch.
        image_column: column holding the image: a PIL image (converted to RGB by
            :func:`~vlalign.models.input_checks.to_rgb`: 16-bit scaled to 8 bits, 32-bit int and float refused), a
            ``{"bytes", "path"}`` dict (a ``datasets.Image(decode=False)`` column), a file path, or anything the
            image processor / transform accepts.
        text_column: column holding a caption string, or a list of captions of which one is drawn per call.
        idx_column: column returned as ``idx`` (``torch.long``) — the image index of
            ``AlbefForImageTextRetrieval``. Left out of the output when the rows do not have it (e.g. an eval split).
        generator: ``torch.Generator`` for the caption choice (the transform then uses the global RNG). When
            ``None`` (the default), each row's caption choice and augmentation are drawn from a seed made of the
            global seed (``torch.initial_seed()``, set by the Trainer's ``seed``), ``epoch`` and the row's
            identity. The draws are reproducible, new every epoch, never shift the global RNG stream (which the
            model's masking and hard-negative sampling use), and do not depend on when or with which other rows a
            sample is collated. That makes a Trainer resume exact (Accelerate collates the next batch before a
            checkpoint is written) and a run split over N processes equal to one process with the same global
            batch.
        epoch: the current epoch; `AlignmentTrainer` sets it through `set_epoch`.
        teacher_view: also return ``pixel_values_teacher``: ``image_transform`` applied a second time to each image,
            with its own draw (a seed of the same scheme under another purpose, so it is as reproducible and
            resumable as ``pixel_values`` and leaves ``pixel_values`` exactly as without it; with a ``generator``,
            the next draws of the global RNG). Needs ``image_transform``: without one both views would be the image
            processor's identical deterministic output. The transform must be random for the views to differ; the
            collator cannot check that.
        masked_image_modeling: a :class:`~vlalign.data.masked_image.MaskedImageModelingInputs` (image tokenizer,
            ViT patch grid, masking settings, optional random tokenizer view); when given, each row gets a block
            mask drawn from its own seed (purpose ``"image_mask"``) and the tokenizer's codes of its tokenizer view
            (the deterministic ``view``, or ``view_transform`` under the seed of purpose ``"codebook_image"``), so
            they are as reproducible and resumable as ``pixel_values``, which stay exactly as without it. With a
            ``generator``, the seeds are drawn from it instead.

    Images are opened with :func:`~vlalign.models.input_checks.open_image` (the pixel limit applies) and decoded
    here, so an unreadable or truncated image is named by its batch row, ``image_id`` and file. Arrays and tensors
    in the image column are checked as the processors check them (finite; float in [0, 1], integer in [0, 255]).
    What ``image_transform`` returns (both views) must be finite and within what normalising an image in [0, 1]
    with the processor's mean and std gives, widened by one image range on each side (for CLIP statistics about
    [-5.6, 5.9]): anything beyond is a transform that did not scale to [0, 1] or normalised twice, refused with the
    row named.

    Rows streamed by :class:`~vlalign.data.streaming.ImageTextStream` carry a ``stream_position``, returned as
    ``"stream_position"`` (long ``[B, 4]``) for `AlignmentTrainer`, which records it and drops it before the model.

    Returns (when called with a list of row dicts):
        ``{"pixel_values": float32 [B, 3, H, W], "input_ids": long [B, L], "attention_mask": long [B, L]}`` plus
        ``"idx": long [B]`` when configured and present, and ``"pixel_values_teacher"`` (float32, the shape of
        ``pixel_values``) with ``teacher_view``, and with ``masked_image_modeling`` ``"bool_masked_pos"`` (bool
        ``[B, N]``, N = ViT patches, row-major; True = masked) and ``"mim_labels"`` (long ``[B, N]``: the image
        tokenizer's code of each masked patch, -100 where not masked). ``token_type_ids`` is never returned.
    """

    processor: Any
    preset: str = "pretrain"
    image_transform: Callable[[Any], torch.Tensor] | None = None
    image_column: str = "image"
    text_column: str = "caption"
    idx_column: str | None = None
    generator: torch.Generator | None = None
    epoch: int = 0
    teacher_view: bool = False
    masked_image_modeling: MaskedImageModelingInputs | None = None

    def __post_init__(self) -> None:
        presets = getattr(self.processor, "text_presets", None)
        if presets is not None and self.preset not in presets:
            raise ValueError(f"Unknown preset {self.preset!r}; choose one of {sorted(presets)}.")
        if self.image_transform is not None and not callable(self.image_transform):
            raise TypeError(f"image_transform must be callable or None, got {type(self.image_transform).__name__}.")
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(self.generator).__name__}.")
        if self.teacher_view and self.image_transform is None:
            raise ValueError(
                "teacher_view=True needs a random image_transform (e.g. vlalign.data.transforms."
                "albef_train_transform): the teacher view is a second augmentation of each image, and without a "
                "transform both views would be the image processor's identical deterministic output."
            )
        if self.masked_image_modeling is not None:
            from .masked_image import MaskedImageModelingInputs

            if not isinstance(self.masked_image_modeling, MaskedImageModelingInputs):
                raise TypeError(
                    "masked_image_modeling must be a vlalign.data.masked_image.MaskedImageModelingInputs or None, "
                    f"got {type(self.masked_image_modeling).__name__}."
                )

    # ------------------------------------------------------------------ public API
    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return self._collate(self._check_rows(features))

    def set_epoch(self, epoch: int) -> None:
        """Called by `AlignmentTrainer` at every epoch start, so each epoch draws new captions and augmentations."""
        self.epoch = epoch

    def _row_seed(self, row: Mapping[str, Any], purpose: str) -> int:
        """A seed from the global seed, the epoch and the row's identity (its image id and caption text)."""
        identity = (row.get("image_id"), row[self.text_column])  # per caption: pair rows of one image differ
        epoch = row[STREAM_POSITION][0] if STREAM_POSITION in row else self.epoch  # a stream knows its own epoch
        key = f"{torch.initial_seed()}|{epoch}|{purpose}|{identity!r}"
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1

    def _collate(self, rows: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [self._pick_caption(position, row) for position, row in enumerate(rows)]
        self._check_texts(texts, rows)
        images = [self._load_image(position, row) for position, row in enumerate(rows)]
        encoded = self.processor(text=texts, preset=self.preset, return_tensors="pt")
        pixel_values = self._pixel_values(images, rows)
        batch = {
            "pixel_values": pixel_values,
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
        }
        if self.teacher_view:
            teacher = self._transform_images(images, rows, "teacher_image")
            if teacher.shape != pixel_values.shape:
                raise ValueError(
                    f"image_transform gave the teacher view shape {tuple(teacher.shape)} but the student view "
                    f"{tuple(pixel_values.shape)}; use a fixed output size."
                )
            self._check_pixel_values(teacher, rows, "pixel_values_teacher")
            batch["pixel_values_teacher"] = teacher.to(torch.float32)
        if self.masked_image_modeling is not None:
            batch.update(self._masked_image_modeling_inputs(images, rows))
        idx = self._collect_idx(rows)
        if idx is not None:
            batch["idx"] = idx
        if STREAM_POSITION in rows[0]:  # streamed rows: the trainer records what each batch consumed
            batch[STREAM_POSITION] = torch.tensor([row[STREAM_POSITION] for row in rows], dtype=torch.long)
        return batch

    # ------------------------------------------------------------------ rows and columns
    def _check_rows(self, features: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        if isinstance(features, Mapping) or not isinstance(features, Sequence):
            raise TypeError(
                f"AlignmentCollator expects a list of row dicts (one per sample), got {type(features).__name__}."
            )
        rows = list(features)
        if not rows:
            raise ValueError("AlignmentCollator got an empty batch; it needs at least one row.")
        for position, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise TypeError(f"Batch row {position} is a {type(row).__name__}, expected a dict of columns.")
            for column, role in ((self.image_column, "image_column"), (self.text_column, "text_column")):
                if column not in row:
                    raise KeyError(self._missing_column_message(column, role, position, row))
        return rows

    def _missing_column_message(self, column: str, role: str, position: int, row: Mapping[str, Any]) -> str:
        available = sorted(map(str, row))
        message = f"Column {column!r} ({role}) is missing from batch row {position}; available columns: {available}."
        alternatives = {"caption": "captions", "captions": "caption"}
        if role == "text_column" and alternatives.get(column) in row:
            message += f" Pass text_column={alternatives[column]!r} for this layout."
        message += (
            " With transformers.Trainer, set TrainingArguments(remove_unused_columns=False) so the raw columns "
            "reach the collator."
        )
        return message

    def _pick_caption(self, position: int, row: Mapping[str, Any]) -> Any:
        text = row[self.text_column]
        if isinstance(text, (str, bytes, bytearray)):  # not a list of captions; bytes: processor.clean says decode
            return text
        if isinstance(text, Sequence):
            if len(text) == 0:
                raise ValueError(
                    f"{_row_label(position, row, capital=True)} has an empty caption list in column "
                    f"{self.text_column!r}; remove such rows (the data loaders report them)."
                )
            generator = self.generator or torch.Generator().manual_seed(self._row_seed(row, "caption"))
            choice = int(torch.randint(len(text), (1,), generator=generator).item())
            return text[choice]
        return text  # not a caption: processor.clean raises a TypeError naming it, with the row added below

    def _check_texts(self, texts: list[Any], rows: list[Mapping[str, Any]]) -> None:
        """Run the processor's caption validation first, so that its error can name the row and image."""
        clean = getattr(self.processor, "clean", None)
        if clean is None:
            return
        try:
            clean(texts)
        except (ValueError, TypeError) as err:
            if type(err) not in (ValueError, TypeError):
                raise
            for position, text in enumerate(texts):
                try:
                    clean([text])
                except (ValueError, TypeError):
                    raise type(err)(
                        f"{err} [caption of {_row_label(position, rows[position])}, column {self.text_column!r}]"
                    ) from err
            raise

    # ------------------------------------------------------------------ images
    def _load_image(self, position: int, row: Mapping[str, Any]) -> Any:
        image = row[self.image_column]
        where = f"{_row_label(position, row, capital=True)}, column {self.image_column!r}"
        file = image_file(image)
        if file:
            where += f" (file {file})"
        if image is None:
            raise ValueError(f"{where}: the image is None (missing or unreadable). {_LOADER_HINT}")
        if isinstance(image, (np.ndarray, torch.Tensor)):
            try:
                return check_image(image, "the image")
            except (ValueError, TypeError) as err:
                raise type(err)(f"{where}: {err}") from err
        try:
            if isinstance(image, Mapping) and ("bytes" in image or "path" in image):
                if image.get("bytes") is None and image.get("path") is None:
                    raise ValueError("the image entry has neither bytes nor a path")
                image = open_image(image, "the image")
            elif isinstance(image, (str, os.PathLike, Image.Image)):
                image = open_image(image, "the image")  # the pixel limit applies to PIL images too
            if isinstance(image, Image.Image):
                image = to_rgb(image, "the image")
                image.load()  # a truncated file fails here, named with its row and file
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises SyntaxError for some malformed files
            raise ValueError(f"{where}: the image could not be read ({err}). {_LOADER_HINT}") from err
        return image

    def _pixel_values(self, images: list[Any], rows: list[Mapping[str, Any]]) -> torch.Tensor:
        """float32 `pixel_values` of the loaded images: the image processor's, or `image_transform`'s (checked; the
        processor's own output is in range because its inputs are checked)."""
        if self.image_transform is None:
            return self.processor(images=images, return_tensors="pt")["pixel_values"].to(torch.float32)
        pixel_values = self._transform_images(images, rows)
        self._check_pixel_values(pixel_values, rows, "pixel_values")
        return pixel_values.to(torch.float32)

    def _check_pixel_values(self, pixel_values: torch.Tensor, rows: list[Mapping[str, Any]], view: str) -> None:
        """Refuse non-finite or absurd pixel values from `image_transform` (one that does not scale to [0, 1] before
        normalising, or normalises twice) with the row named: outside what normalising an image in [0, 1] with the
        processor's mean and std gives, widened by one image range on each side (resampling overshoot, other
        normalisations), or outside [-1, 2] when the processor has no statistics. The processor's own output needs
        no check: its inputs are (PIL images are 8-bit, arrays are checked by `check_image`)."""
        image_processor = getattr(self.processor, "image_processor", None)
        mean = torch.tensor(getattr(image_processor, "image_mean", None) or [0.0], dtype=torch.float32)
        std = torch.tensor(getattr(image_processor, "image_std", None) or [1.0], dtype=torch.float32)
        low = float(((-_PIXEL_MARGIN - mean) / std).min())
        high = float(((1 + _PIXEL_MARGIN - mean) / std).max())
        values = pixel_values.detach().float()
        smallest, largest = values.aminmax()  # one pass (NaN propagates); ~15 ms for 32 images of 256 px
        if low <= smallest.item() and largest.item() <= high:
            return
        bad = ~torch.isfinite(values) | (values < low) | (values > high)
        position = int(bad.flatten(1).any(1).nonzero()[0, 0])
        row_values = values[position]
        finite = row_values[torch.isfinite(row_values)]
        found = (
            "NaN or infinite values"
            if finite.numel() < row_values.numel()
            else f"values in [{finite.min().item():.4g}, {finite.max().item():.4g}]"
        )
        raise ValueError(
            f"{view} of {_row_label(position, rows[position])} has {found}, outside [{low:.3g}, {high:.3g}], what "
            f"normalising any image in [0, 1] with the processor's mean and std can give: the model would return NaN "
            "or meaningless features. Check image_transform: it must scale pixels to [0, 1] (e.g. "
            "v2.ToDtype(torch.float32, scale=True)) and normalise once."
        )

    def _transform_images(
        self, images: list[Any], rows: list[Mapping[str, Any]], purpose: str = "image"
    ) -> torch.Tensor:
        """`image_transform` of every image, each under its own seed for `purpose` ("image": the student view,
        "teacher_image": the teacher's second view), or the global RNG with an explicit `generator`."""
        view = " (teacher view)" if purpose == "teacher_image" else ""
        tensors = []
        for position, image in enumerate(images):
            try:
                if self.generator is not None:
                    tensor = self.image_transform(image)
                else:
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(self._row_seed(rows[position], purpose))
                        tensor = self.image_transform(image)
            except Exception as err:
                _add_note(
                    err,
                    f"AlignmentCollator: while transforming the image of {_row_label(position, rows[position])}{view}",
                )
                raise
            if not isinstance(tensor, torch.Tensor) or tensor.ndim != 3:
                found = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise TypeError(
                    f"image_transform must return a [C, H, W] tensor, got {found} for batch row {position}."
                )
            tensors.append(tensor)
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise ValueError(
                f"image_transform returned images of different shapes {sorted(shapes)}; use a fixed size."
            )
        return torch.stack(tensors)

    def _masked_image_modeling_inputs(self, images: list[Any], rows: list[Mapping[str, Any]]) -> dict[str, Any]:
        """`bool_masked_pos` and `mim_labels`: per-row seeds (or draws of `generator`) for mask and tokenizer view."""
        if self.generator is not None:
            draws = torch.randint(2**62, (len(rows), 2), generator=self.generator).tolist()
            mask_seeds, view_seeds = [d[0] for d in draws], [d[1] for d in draws]
        else:
            mask_seeds = [self._row_seed(row, "image_mask") for row in rows]
            view_seeds = [self._row_seed(row, "codebook_image") for row in rows]
        for position, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise TypeError(
                    f"masked_image_modeling needs PIL images, but the image of {_row_label(position, rows[position])} "
                    f"is a {type(image).__name__}; give the column PIL images, {{'bytes', 'path'}} dicts or paths."
                )
        return self.masked_image_modeling(images, mask_seeds, view_seeds=view_seeds)

    # ------------------------------------------------------------------ idx
    def _collect_idx(self, rows: list[Mapping[str, Any]]) -> torch.Tensor | None:
        if self.idx_column is None:
            return None
        present = [self.idx_column in row for row in rows]
        if not any(present):
            return None
        if not all(present):
            position = present.index(False)
            raise KeyError(
                self._missing_column_message(self.idx_column, "idx_column", position, rows[position])
                + " Some rows of this batch have it and some do not."
            )
        values = []
        for position, row in enumerate(rows):
            value = row[self.idx_column]
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(
                    f"Column {self.idx_column!r} of {_row_label(position, row)} is {value!r}; expected an int."
                )
            values.append(int(value))
        return torch.tensor(values, dtype=torch.long)


#: the collator's name before it served every method
AlbefCollator = AlignmentCollator
