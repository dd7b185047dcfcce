"""AlbefCollator: raw dataset rows -> ALBEF model inputs (shapes, caption sampling, augmentation, errors)."""

from __future__ import annotations

import inspect
import io
import pickle

import datasets
import numpy as np
import pytest
import torch

from vlalign import AlbefForPreTraining, AlbefImageProcessor, AlbefProcessor, AlbefTokenizer
from vlalign.data.collator import AlbefCollator
from vlalign.data.synthetic import make_synthetic_dataset, to_pair_dataset
from vlalign.data.transforms import albef_train_transform
from vlalign.models.processing_albef import pre_caption

IMAGE_SIZE = 32
LONG_CAPTION = " ".join(["a red circle and a blue square on a white background"] * 5)  # 55 words


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic_dataset(num_train=16, num_validation=4, num_test=4, image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def processor(synthetic):
    words = {word for caps in synthetic["train"]["captions"] for cap in caps for word in pre_caption(cap).split()}
    words |= set(pre_caption(LONG_CAPTION).split())
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = AlbefTokenizer(vocab={w: i for i, w in enumerate([*specials, *sorted(words)])})
    image_processor = AlbefImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return AlbefProcessor(image_processor=image_processor, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def eval_rows(synthetic):
    return [synthetic["train"][i] for i in range(4)]


@pytest.fixture(scope="module")
def pair_dataset(synthetic):
    pairs = to_pair_dataset(synthetic["train"])
    first = min(pairs["image_id"])
    return pairs.add_column("idx", [image_id - first for image_id in pairs["image_id"]])


def _token_ids(processor, caption, preset="pretrain"):
    return processor(text=[caption], preset=preset)["input_ids"][0]


def test_eval_layout_shapes_dtypes_keys(processor, eval_rows):
    batch = AlbefCollator(processor, text_column="captions")(eval_rows)
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask"}  # no token_type_ids, no idx
    assert batch["pixel_values"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape[0] == 4
    assert batch["attention_mask"].shape == batch["input_ids"].shape
    assert (batch["input_ids"][:, 0] == processor.tokenizer.cls_token_id).all()
    assert (batch["input_ids"] != processor.tokenizer.unk_token_id).all()


def test_pair_layout_with_idx(processor, pair_dataset):
    rows = [pair_dataset[i] for i in (0, 1, 5, 6)]
    batch = AlbefCollator(processor, preset="train", idx_column="idx")(rows)
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "idx"}
    assert batch["idx"].dtype == torch.long
    assert batch["idx"].tolist() == [row["idx"] for row in rows]
    assert batch["pixel_values"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    # string captions are used as they are
    expected = processor(text=[row["caption"] for row in rows], preset="train")
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(batch["attention_mask"], expected["attention_mask"])
    # a configured idx column that the rows lack (e.g. an eval split) is left out
    without_idx = [{k: v for k, v in row.items() if k != "idx"} for row in rows]
    assert "idx" not in AlbefCollator(processor, idx_column="idx")(without_idx)


def test_random_caption_choice_reproducible_and_covers_all(processor, eval_rows):
    row = eval_rows[0]
    options = [_token_ids(processor, caption).tolist() for caption in row["captions"]]
    assert len(options) == 2 and options[0] != options[1]

    def draws(collator, n=40):
        return [collator([row])["input_ids"][0].tolist() for _ in range(n)]

    first = draws(AlbefCollator(processor, text_column="captions", generator=torch.Generator().manual_seed(7)))
    second = draws(AlbefCollator(processor, text_column="captions", generator=torch.Generator().manual_seed(7)))
    assert first == second
    assert all(ids in options for ids in first)
    assert options[0] in first and options[1] in first

    # without a generator the global torch RNG drives it, so torch.manual_seed reproduces it
    collator = AlbefCollator(processor, text_column="captions")
    torch.manual_seed(3)
    third = draws(collator, 10)
    torch.manual_seed(3)
    assert draws(collator, 10) == third


def test_train_transform_draws_are_per_row_per_epoch_and_leave_global_rng_alone(processor, eval_rows):
    transform = albef_train_transform("pretrain", image_size=IMAGE_SIZE)
    collator = AlbefCollator(processor, image_transform=transform, text_column="captions")
    plain = processor.image_processor([row["image"] for row in eval_rows], return_tensors="pt")["pixel_values"]
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    first = collator(eval_rows)
    assert torch.equal(torch.random.get_rng_state(), state), "collating must not advance the global RNG"
    assert first["pixel_values"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert first["pixel_values"].dtype == torch.float32
    assert not torch.equal(first["pixel_values"], plain)  # augmented
    assert torch.equal(collator(eval_rows)["pixel_values"], first["pixel_values"])  # same seed + batch: same draw
    # draws are per row: the same rows in another batch order get the same augmentation (split-invariance)
    assert torch.equal(collator(eval_rows[::-1])["pixel_values"], first["pixel_values"].flip(0))
    collator.set_epoch(1)
    assert not torch.equal(collator(eval_rows)["pixel_values"], first["pixel_values"])  # a new epoch redraws
    collator.set_epoch(0)
    torch.manual_seed(1)
    assert not torch.equal(collator(eval_rows)["pixel_values"], first["pixel_values"])  # other seed


def test_without_transform_matches_image_processor(processor, eval_rows):
    batch = AlbefCollator(processor, text_column="captions")(eval_rows)
    expected = processor.image_processor([row["image"] for row in eval_rows], return_tensors="pt")["pixel_values"]
    assert torch.equal(batch["pixel_values"], expected)


def test_non_rgb_and_undecoded_images(processor, eval_rows):
    gray = eval_rows[0]["image"].convert("L")
    buffer = io.BytesIO()
    eval_rows[1]["image"].save(buffer, format="PNG")
    rows = [
        {"image": gray, "caption": "a red circle"},
        {"image": {"bytes": buffer.getvalue(), "path": None}, "caption": "a blue square"},
    ]
    batch = AlbefCollator(processor)(rows)
    expected = processor.image_processor([gray.convert("RGB"), eval_rows[1]["image"]], return_tensors="pt")
    assert torch.equal(batch["pixel_values"], expected["pixel_values"])


def test_text_presets(processor, eval_rows):
    rows = [{"image": eval_rows[0]["image"], "caption": LONG_CAPTION}, eval_rows[1] | {"caption": "a red circle"}]
    sep = processor.tokenizer.sep_token_id
    pretrain = AlbefCollator(processor, preset="pretrain")(rows)
    assert pretrain["input_ids"].shape[1] <= 25
    assert not (pretrain["input_ids"] == sep).any()
    assert pretrain["attention_mask"][0].all() and not pretrain["attention_mask"][1].all()
    train = AlbefCollator(processor, preset="train")(rows)
    assert train["input_ids"].shape[1] > 25 and not (train["input_ids"] == sep).any()
    assert AlbefCollator(processor, preset="eval")(rows)["input_ids"].shape[1] == 30
    with pytest.raises(ValueError, match="Unknown preset"):
        AlbefCollator(processor, preset="finetune")


def test_dataloader_over_dataset(processor, pair_dataset):
    collator = AlbefCollator(processor, idx_column="idx")
    loader = torch.utils.data.DataLoader(pair_dataset, batch_size=8, shuffle=False, collate_fn=collator, num_workers=0)
    seen = []
    for batch in loader:
        assert batch["pixel_values"].shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE)
        assert batch["input_ids"].shape[0] == batch["pixel_values"].shape[0] == batch["idx"].shape[0]
        seen += batch["idx"].tolist()
    assert seen == pair_dataset["idx"]


def test_dataloader_over_eval_layout(processor, synthetic):
    split = synthetic["validation"]
    assert isinstance(split, datasets.Dataset)
    collator = AlbefCollator(processor, preset="eval", text_column="captions", idx_column="idx")
    loader = torch.utils.data.DataLoader(split, batch_size=3, collate_fn=collator, num_workers=0)
    batches = list(loader)
    assert [b["pixel_values"].shape[0] for b in batches] == [3, 1]
    assert all(set(b) == {"pixel_values", "input_ids", "attention_mask"} for b in batches)
    assert all(b["input_ids"].shape[1] == 30 for b in batches)


def test_picklable(processor, eval_rows):
    collator = AlbefCollator(
        processor,
        text_column="captions",
        image_transform=albef_train_transform("pretrain", image_size=IMAGE_SIZE),
        generator=torch.Generator().manual_seed(1),
    )
    clone = pickle.loads(pickle.dumps(collator))
    torch.manual_seed(5)
    original = collator(eval_rows)
    torch.manual_seed(5)
    copied = clone(eval_rows)
    for key in original:
        assert torch.equal(original[key], copied[key])


def test_missing_column_error(processor, eval_rows):
    with pytest.raises(KeyError, match="'caption'") as excinfo:
        AlbefCollator(processor)(eval_rows)
    message = str(excinfo.value)
    assert "available columns" in message and "'captions'" in message and "text_column='captions'" in message
    assert "remove_unused_columns=False" in message
    with pytest.raises(KeyError, match="'picture'"):
        AlbefCollator(processor, image_column="picture", text_column="captions")(eval_rows)


def test_none_image_error(processor, eval_rows):
    rows = [eval_rows[0], eval_rows[1] | {"image": None}]
    with pytest.raises(ValueError, match=r"(?is)batch row 1 \(image_id=1\).*None.*loaders"):
        AlbefCollator(processor, text_column="captions")(rows)
    corrupt = {"image": {"bytes": b"not an image", "path": None}, "caption": "a red circle"}
    with pytest.raises(ValueError, match=r"(?is)batch row 0.*could not be read.*loaders"):
        AlbefCollator(processor)([corrupt])


def test_empty_caption_and_batch_errors(processor, eval_rows):
    rows = [eval_rows[0] | {"caption": "a red circle"}, eval_rows[1] | {"caption": " ?! "}]
    with pytest.raises(ValueError, match=r"(?s)empty after cleaning.*batch row 1 \(image_id=1\)"):
        AlbefCollator(processor)(rows)
    with pytest.raises(ValueError, match="empty caption list"):
        AlbefCollator(processor, text_column="captions")([eval_rows[0] | {"captions": []}])
    with pytest.raises(ValueError, match="empty batch"):
        AlbefCollator(processor)([])


def _offset_transform(image):
    """A random transform whose draws are easy to see: the image as a tensor plus one random offset per call."""
    return torch.as_tensor(np.array(image), dtype=torch.float32).permute(2, 0, 1) / 255 + torch.rand(())


def test_teacher_view_is_a_second_seeded_draw_of_the_same_image(processor, eval_rows):
    transform = albef_train_transform("pretrain", image_size=IMAGE_SIZE)
    student_only = AlbefCollator(processor, image_transform=transform, text_column="captions")
    collator = AlbefCollator(processor, image_transform=transform, text_column="captions", teacher_view=True)
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    batch = collator(eval_rows)
    assert torch.equal(torch.random.get_rng_state(), state), "the second view must not advance the global RNG"
    assert set(batch) == {"pixel_values", "pixel_values_teacher", "input_ids", "attention_mask"}
    teacher = batch["pixel_values_teacher"]
    assert teacher.shape == batch["pixel_values"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert teacher.dtype == torch.float32
    for row in range(4):  # every row's two views differ
        assert not torch.equal(teacher[row], batch["pixel_values"][row])
    # the student view is exactly what it is without the teacher view; the text is untouched
    plain = student_only(eval_rows)
    for key in plain:
        assert torch.equal(batch[key], plain[key]), key
    # reproducible across collator instances with the same global seed, and per row (batch order does not matter)
    twin = AlbefCollator(processor, image_transform=transform, text_column="captions", teacher_view=True)
    assert torch.equal(twin(eval_rows)["pixel_values_teacher"], teacher)
    assert torch.equal(twin(eval_rows[::-1])["pixel_values_teacher"], teacher.flip(0))
    # redrawn every epoch and under another global seed
    twin.set_epoch(1)
    assert not torch.equal(twin(eval_rows)["pixel_values_teacher"], teacher)
    torch.manual_seed(1)
    assert not torch.equal(collator(eval_rows)["pixel_values_teacher"], teacher)


def test_teacher_view_transforms_the_same_image(processor, eval_rows):
    collator = AlbefCollator(processor, image_transform=_offset_transform, text_column="captions", teacher_view=True)
    torch.manual_seed(0)
    batch = collator(eval_rows)
    difference = batch["pixel_values_teacher"] - batch["pixel_values"]
    for row in range(4):  # same image, another draw: the views differ by one offset per row
        offset = difference[row].flatten()
        assert offset.abs().min() > 0
        assert torch.allclose(offset, offset[0].expand_as(offset), atol=1e-5)
    # with an explicit generator the transform draws from the global RNG: two draws per row, seeded by the caller
    seeded = AlbefCollator(processor, image_transform=_offset_transform, text_column="captions", teacher_view=True,
                           generator=torch.Generator().manual_seed(3))  # fmt: skip
    torch.manual_seed(5)
    first = seeded(eval_rows)
    assert not torch.equal(first["pixel_values_teacher"], first["pixel_values"])
    seeded.generator.manual_seed(3)
    torch.manual_seed(5)
    assert torch.equal(seeded(eval_rows)["pixel_values_teacher"], first["pixel_values_teacher"])


def test_teacher_view_off_by_default_and_needs_a_transform(processor, eval_rows):
    transform = albef_train_transform("pretrain", image_size=IMAGE_SIZE)
    assert "pixel_values_teacher" not in AlbefCollator(processor, text_column="captions")(eval_rows)
    assert "pixel_values_teacher" not in AlbefCollator(processor, image_transform=transform, text_column="captions")(
        eval_rows
    )
    with pytest.raises(ValueError, match="teacher_view=True needs a random image_transform"):
        AlbefCollator(processor, text_column="captions", teacher_view=True)
    # the models take the second view under this name
    assert "pixel_values_teacher" in inspect.signature(AlbefForPreTraining.forward).parameters


def test_teacher_view_of_another_size_is_an_error(processor, eval_rows):
    sizes = iter([IMAGE_SIZE, IMAGE_SIZE // 2])

    def shrinking(image):
        return torch.zeros(3, next(sizes), IMAGE_SIZE)

    collator = AlbefCollator(processor, image_transform=shrinking, text_column="captions", teacher_view=True)
    with pytest.raises(ValueError, match="teacher view shape"):
        collator(eval_rows[:1])
