"""Real file formats, built offline, through loading, training and evaluation for every registered method: a folder
of JPEGs with COCO Karpathy json files as ALBEF/LAVIS ship them (`coco_karpathy_train.json`: one caption per entry
with an `image_id`; `coco_karpathy_test.json`: caption lists), and a parquet file in the Hub layout of
nlphuji/flickr30k (images stored inside, caption lists, a Karpathy `split` column), read with
`datasets.load_dataset("parquet", ...)`. Each source holds a corrupt JPEG and an empty caption, counted and skipped.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image, ImageDraw

from vlalign.data.collator import AlignmentCollator
from vlalign.data.loaders import load_image_text_dataset, load_karpathy_json
from vlalign.evaluation import evaluate_retrieval
from vlalign.methods import get_method, method_names
from vlalign.training.trainer import AlignmentTrainer, AlignmentTrainingArguments

IMAGE_SIZE = 32
COLORS = ("red", "green", "blue", "yellow", "purple", "white")
NUM_IMAGES = 12  # images 0-7 train, 8-11 test
TRAIN_IMAGES, TEST_IMAGES = range(8), range(8, NUM_IMAGES)
BAD_TRAIN_IMAGE, BAD_TEST_IMAGE = 3, 9  # garbage bytes under a .jpg name


def captions_of(image: int) -> list[str]:
    color, shape = COLORS[image % len(COLORS)], ("circle", "square")[image % 2]
    return [f"a {color} {shape}", f"one {shape} that is {color}"]


def jpeg_bytes(image: int) -> bytes:
    if image in (BAD_TRAIN_IMAGE, BAD_TEST_IMAGE):
        return b"<html>404 not found</html>"
    canvas = Image.new("RGB", (48, 40), "black")
    draw = ImageDraw.Draw(canvas)
    box = (8 + image, 6, 30 + image, 30)
    (draw.ellipse if image % 2 == 0 else draw.rectangle)(box, fill=COLORS[image % len(COLORS)])
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """`val2014/*.jpg`, `coco_karpathy_{train,test}.json` and `flickr30k.parquet` under one folder."""
    root = tmp_path_factory.mktemp("real_formats")
    (root / "val2014").mkdir()
    for image in range(NUM_IMAGES):
        (root / "val2014" / f"COCO_val2014_{image:012d}.jpg").write_bytes(jpeg_bytes(image))
    name = "val2014/COCO_val2014_{:012d}.jpg".format
    train = [
        {"caption": caption, "image": name(image), "image_id": f"coco_{image}"}
        for image in TRAIN_IMAGES
        for caption in captions_of(image)
    ]
    train[0]["caption"] = "  "  # an empty caption: its pair is skipped, the image keeps its other caption
    (root / "coco_karpathy_train.json").write_text(json.dumps(train))
    test = [{"image": name(image), "caption": captions_of(image)} for image in TEST_IMAGES]
    (root / "coco_karpathy_test.json").write_text(json.dumps(test))

    rows = [
        {
            "image": {"bytes": jpeg_bytes(image), "path": f"{image}.jpg"},
            "caption": captions_of(image),
            "split": "train" if image in TRAIN_IMAGES else "test",
            "img_id": str(image),
        }
        for image in range(NUM_IMAGES)
    ]
    rows[0]["caption"] = ["", rows[0]["caption"][1]]
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.List(datasets.Value("string")),
            "split": datasets.Value("string"),
            "img_id": datasets.Value("string"),
        }
    )
    datasets.Dataset.from_list(rows, features=features).to_parquet(root / "flickr30k.parquet")
    return root


# what every source loads to: the bad image drops its 2 pairs, the empty caption 1 pair; the bad test image its row
TRAIN_PAIRS, TEST_ROWS = 2 * len(TRAIN_IMAGES) - 3, len(TEST_IMAGES) - 1


def load_json(files: Path) -> tuple[datasets.Dataset, datasets.Dataset]:
    with pytest.warns(UserWarning, match="skipped 3 of 16 samples: 1 unreadable image.*1 empty caption"):
        train = load_karpathy_json(files / "coco_karpathy_train.json", files, on_error="skip")
    with pytest.warns(UserWarning, match="skipped 1 of 4 samples: 1 unreadable image"):
        test = load_karpathy_json(files / "coco_karpathy_test.json", files, on_error="skip")
    return train, test


def load_parquet(files: Path) -> tuple[datasets.Dataset, datasets.Dataset]:
    source = datasets.load_dataset(
        "parquet", data_files=str(files / "flickr30k.parquet"), split="train", cache_dir=str(files / "cache")
    )
    columns = dict(image_id_column="img_id", on_error="skip")
    with pytest.warns(UserWarning, match="skipped 3 of 16 samples: 1 unreadable image.*1 empty caption"):
        train = load_image_text_dataset(source, split="train", layout="train", **columns)
    with pytest.warns(UserWarning, match="skipped 1 of 4 samples: 1 unreadable image"):
        test = load_image_text_dataset(source, split="test", **columns)
    return train, test


LOADERS = {"json": load_json, "parquet": load_parquet}


@pytest.mark.parametrize("source", LOADERS)
def test_sources_load_to_the_same_layouts(files, source):
    train, test = LOADERS[source](files)
    assert train.column_names == ["image", "caption", "image_id", "idx"]
    assert train.num_rows == TRAIN_PAIRS
    assert train["idx"] == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]  # contiguous over the 7 good images
    assert train["caption"][:3] == [captions_of(0)[1], *captions_of(1)]
    assert test.column_names == ["image", "captions", "image_id"]
    assert test["captions"] == [captions_of(i) for i in TEST_IMAGES if i != BAD_TEST_IMAGE]
    image = test[0]["image"]
    assert image.mode == "RGB" and image.size == (48, 40)


@pytest.mark.parametrize("source", LOADERS)
@pytest.mark.parametrize("method_name", method_names())
def test_train_and_evaluate_every_method(files, tmp_path, method_name, source):
    """A few Trainer steps on the train layout through the method's registry collator, then retrieval evaluation
    (ITC ranking, and the ITM re-rank where the method has one) on the eval layout."""
    method = get_method(method_name)
    train, test = LOADERS[source](files)
    processor = method.build_processor(method.build_tokenizer(train["caption"]), IMAGE_SIZE)
    torch.manual_seed(0)
    config = method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides)
    args = AlignmentTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = AlignmentTrainer(
        model=method.pretraining_class(config),
        args=args,
        train_dataset=train,
        data_collator=AlignmentCollator(
            processor, preset="pretrain", **method.pretraining_collator_kwargs(config, processor, train)
        ),
        processing_class=processor,
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)

    metrics = evaluate_retrieval(trainer.model, processor, test, k_test=2, show_progress=False)
    assert (metrics["num_images"], metrics["num_texts"]) == (TEST_ROWS, 2 * TEST_ROWS)
    assert (metrics["num_itm_pairs"] > 0) == method.supports_itm_rerank
    for key in ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean"):
        assert 0.0 <= metrics[key] <= 100.0, key
    assert metrics["txt_r10"] == metrics["img_r10"] == 100.0  # 3 images, 6 captions: everything is in the top 10


def test_unchecked_corrupt_image_fails_in_the_collator_naming_it_and_the_fix(files):
    """With check_images='none' the corrupt JPEG is kept; read undecoded, the collator's error names its row, its
    image_id and how to find such images at load time."""
    with pytest.warns(UserWarning, match="skipped 1 of 16 samples: 1 empty caption"):  # images not checked
        train = load_karpathy_json(files / "coco_karpathy_train.json", files, check_images="none", on_error="skip")
    train = train.cast_column("image", datasets.Image(mode="RGB", decode=False))
    get = get_method("albef")
    collator = AlignmentCollator(get.build_processor(get.build_tokenizer(train["caption"]), IMAGE_SIZE))
    rows = [train[i] for i in range(4, 8)]
    assert rows[1]["image_id"] == f"coco_{BAD_TRAIN_IMAGE}"
    with pytest.raises(ValueError, match=rf"row 1 \(image_id='coco_{BAD_TRAIN_IMAGE}'\).*check_images='decode'"):
        collator(rows)
