"""Silent data problems turned into clear errors or counted, warned skips (issue 25, item 5): image ids shared by
different images, invisible-only captions, every PIL image extension in shards, malformed JSON annotations, truncated
images at collate and evaluation time, oversized images, absurd pixel values, duplicated evaluation rows."""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
import webdataset as wds
from PIL import Image
from transformers import pipeline

from vlalign.data.collator import AlignmentCollator
from vlalign.data.loaders import ImageIdConflictError, load_image_text_dataset, load_karpathy_json
from vlalign.data.streaming import IMAGE_EXTENSIONS, ImageTextStream, webdataset_shards
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.data.transforms import albef_train_transform
from vlalign.evaluation import embed_gallery, evaluate_retrieval, search_gallery
from vlalign.evaluation.duplicates import DuplicateEvaluationRowsWarning
from vlalign.evaluation.retrieval import _undecoded, load_images
from vlalign.methods import get_method
from vlalign.models.input_checks import MAX_IMAGE_PIXELS_ENV, ImageTooLargeError, is_blank, open_image
from vlalign.pipelines.retrieval import TASK, register_pipelines
from vlalign.recipes import dataset_captions
from vlalign.training.trainer import AlignmentTrainer, AlignmentTrainingArguments

IMAGE_SIZE = 32
INVISIBLE = ["\u200b", "\u200c\u200d", "\ufeff", "\u00ad", " \u2060\t\u180e "]


def encoded(image: Image.Image, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return buffer.getvalue()


def colour(value: int) -> Image.Image:
    return Image.new("RGB", (40, 40), (value, 255 - value, 90))


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares `width`×`height` pixels (the data is empty): PIL reads the size without decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic_dataset(num_train=4, num_validation=0, num_test=3, image_size=IMAGE_SIZE, seed=5)


@pytest.fixture(scope="module")
def albef(synthetic):
    """(processor, model) of a tiny ALBEF."""
    method = get_method("albef")
    processor = method.build_processor(method.build_tokenizer(dataset_captions(synthetic)), IMAGE_SIZE)
    config = method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides)
    torch.manual_seed(0)
    return processor, method.model_class(config).eval()


# ---------------------------------------------------------------------------------------------------------------------
# 1. one image_id, different images
# ---------------------------------------------------------------------------------------------------------------------


def test_an_image_id_shared_by_different_files_is_refused_warned_or_kept_as_the_official_code(tmp_path):
    for value, name in enumerate(["a.png", "b.png", "c.png"]):
        colour(60 * value).save(tmp_path / name)
    entries = [
        {"image": "a.png", "caption": "a red one", "image_id": "7"},
        {"image": "b.png", "caption": "a green one", "image_id": "7"},  # another file under the same id
        {"image": "a.png", "caption": "red again", "image_id": "7"},
        {"image": "c.png", "caption": "a blue one", "image_id": "8"},
    ]
    annotation = tmp_path / "train.json"
    annotation.write_text(json.dumps(entries))
    with pytest.raises(ImageIdConflictError, match=r"1 image_id\(s\) name more than one image: image_id '7': .*a\.png, "
                       r".*b\.png\. .*on_image_id_conflict='merge'"):  # fmt: skip
        load_karpathy_json(annotation, tmp_path)
    with pytest.warns(UserWarning, match=r"image_id '7': .*a\.png, .*b\.png.*Kept as one image each"):
        merged, report = load_karpathy_json(annotation, tmp_path, on_image_id_conflict="warn", return_report=True)
    assert merged["idx"] == [0, 0, 0, 1]  # the official keying: one idx per image_id
    assert [(i, len(files)) for i, files in report.shared_image_ids] == [("7", 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_karpathy_json(annotation, tmp_path, on_image_id_conflict="merge")["idx"] == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="on_image_id_conflict must be 'raise', 'warn' or 'merge'"):
        load_karpathy_json(annotation, tmp_path, on_image_id_conflict="split")


def test_shared_image_ids_are_listed_first_few_with_the_count_and_compared_by_content_for_bytes():
    images = [encoded(colour(40 * i)) for i in range(5)]
    source = datasets.Dataset.from_dict(
        {"image": images + [images[0]], "caption": [f"caption {i}" for i in range(6)], "image_id": [0, 0, 1, 1, 2, 0]},
        features=datasets.Features(
            {"image": datasets.Image(), "caption": datasets.Value("string"), "image_id": datasets.Value("int64")}
        ),
    )
    with pytest.raises(ImageIdConflictError, match=r"2 image_id\(s\) name more than one image: image_id '0': row 0, "
                       r"row 1; image_id '1': row 2, row 3\."):  # fmt: skip
        load_image_text_dataset(source)
    same_bytes = source.select([0, 5])  # one image, stored twice under one id: no conflict
    assert load_image_text_dataset(same_bytes)["idx"] == [0, 0]
    many = datasets.Dataset.from_dict(
        {"image": images[:4] * 2, "caption": [f"c{i}" for i in range(8)], "image_id": [0, 1, 2, 3, 1, 2, 3, 0]},
        features=source.features,
    )
    with pytest.raises(ImageIdConflictError, match=r"4 image_id\(s\) .*image_id '2': row 2, row 5; \.\.\."):
        load_image_text_dataset(many)


# ---------------------------------------------------------------------------------------------------------------------
# 2. invisible-only captions are empty
# ---------------------------------------------------------------------------------------------------------------------


def test_is_blank_treats_format_and_control_characters_as_invisible():
    assert all(is_blank(text) for text in ["", " ", *INVISIBLE])
    assert not any(is_blank(text) for text in ["a", "\u200ba", "👩\u200d🔬", "\u00e9"])


def test_invisible_only_captions_are_counted_as_empty_by_the_loaders_and_skipped_by_the_stream(tmp_path):
    colour(10).save(tmp_path / "a.png")
    entries = [{"image": "a.png", "caption": ["a red square", *INVISIBLE]}]
    (tmp_path / "eval.json").write_text(json.dumps(entries))
    with pytest.warns(UserWarning, match=r"5 empty caption\(s\): row 0 caption 1"):
        loaded, report = load_karpathy_json(tmp_path / "eval.json", tmp_path, on_error="skip", return_report=True)
    assert loaded["captions"] == [["a red square"]] and len(report.empty_captions) == len(INVISIBLE)

    shard = tmp_path / "blank.tar"
    with wds.TarWriter(str(shard)) as writer:
        writer.write({"__key__": "good", "png": encoded(colour(1)), "txt": "a red square"})
        writer.write({"__key__": "zwsp", "png": encoded(colour(2)), "txt": "\u200b\ufeff"})
    with pytest.warns(UserWarning, match=r"Skipping sample 'zwsp' .*the caption is empty .*invisible characters"):
        rows = list(ImageTextStream(webdataset_shards([str(shard)])))
    assert [row["image_id"] for row in rows] == ["good"]


def test_an_invisible_only_query_is_refused_by_gallery_search(albef, synthetic):
    processor, model = albef
    gallery = embed_gallery(model, processor, synthetic["test"].select_columns(["image"]), show_progress=False)
    with pytest.raises(ValueError, match=r"pass non-empty strings as queries \(not only whitespace or invisible"):
        search_gallery(model, processor, gallery, ["a red square", "\u200b\ufeff"])
    assert len(search_gallery(model, processor, gallery, ["a red square"], k=2)[0]) == 2


# ---------------------------------------------------------------------------------------------------------------------
# 3. every image extension PIL reads, in shards
# ---------------------------------------------------------------------------------------------------------------------


def test_shards_accept_every_image_extension_pil_reads_and_name_the_members_of_an_imageless_sample(tmp_path):
    readable = {ext.lstrip(".") for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    assert set(IMAGE_EXTENSIONS) == readable and {"tif", "tiff", "gif", "ppm", "jp2"} <= readable
    assert "pdf" not in IMAGE_EXTENSIONS  # PIL writes PDFs but does not read them
    shard = tmp_path / "formats.tar"
    with wds.TarWriter(str(shard)) as writer:
        writer.write({"__key__": "tif", "tif": encoded(colour(10), "TIFF"), "txt": "a tiff"})
        writer.write({"__key__": "bmp", "bmp": encoded(colour(20), "BMP"), "txt": "a bitmap"})
        writer.write({"__key__": "noimage", "json": b"{}", "txt": "a caption alone"})
    with pytest.warns(UserWarning, match=r"Skipping sample 'noimage' .*no image member \(its members: json, txt\)"):
        rows = list(ImageTextStream(webdataset_shards([str(shard)])))
    assert [row["image_id"] for row in rows] == ["tif", "bmp"]
    np.testing.assert_array_equal(np.asarray(rows[0]["image"]), np.asarray(colour(10)))
    with pytest.raises(ValueError, match=r"Sample 'noimage' \(offset 2\) .*no image member \(its members: json, txt\)"
                       r"; an image member needs an extension PIL reads .*image_extensions="):  # fmt: skip
        list(ImageTextStream(webdataset_shards([str(shard)]), on_error="raise"))


# ---------------------------------------------------------------------------------------------------------------------
# 4. malformed JSON annotations
# ---------------------------------------------------------------------------------------------------------------------


def test_malformed_and_non_utf8_annotations_name_the_file_the_place_and_the_fix(tmp_path):
    colour(0).save(tmp_path / "a.png")
    (tmp_path / "comma.json").write_text('[{"image": "a.png",\n "caption": "x",}]')
    with pytest.raises(ValueError, match=r"comma\.json: not valid JSON: Expecting property name enclosed in double "
                       r"quotes at line 2, column 17 \(character 36\)\. Fix the file there"):  # fmt: skip
        load_karpathy_json(tmp_path / "comma.json", tmp_path)
    (tmp_path / "latin1.json").write_bytes('[{"image": "a.png",\n "caption": "café"}]'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.json: not UTF-8 text \(invalid continuation byte\): byte b'\\xe9' "
                       r"at byte offset 36 \(line 2, column 17\)\. .*iconv -f latin1 -t utf-8"):  # fmt: skip
        load_karpathy_json(tmp_path / "latin1.json", tmp_path)
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + b'[{"image": "a.png", "caption": ["a cat"]}]')
    assert load_karpathy_json(tmp_path / "bom.json", tmp_path)["captions"] == [["a cat"]]  # a BOM is fine


# ---------------------------------------------------------------------------------------------------------------------
# 5. truncated images at collate and evaluation time
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def truncated(tmp_path):
    path = tmp_path / "cut.png"
    data = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_truncated_image_at_collate_time_names_the_row_the_file_and_the_fix(albef, truncated):
    processor, _ = albef
    collator = AlignmentCollator(processor, preset="pretrain")
    good = {"image": colour(5), "caption": "a cat", "image_id": "1"}
    fix = r"check_images='decode'.*on_error='skip'"
    for image in ({"bytes": None, "path": str(truncated)}, str(truncated), Image.open(truncated)):
        with pytest.raises(ValueError, match=rf"Batch row 1 \(image_id='2'\), column 'image' \(file .*cut\.png\): the "
                           rf"image could not be read \(image file is truncated.*{fix}"):  # fmt: skip
            collator([good, {"image": image, "caption": "a dog", "image_id": "2"}])
    with pytest.raises(
        ValueError, match=rf"Batch row 0 \(image_id='2'\), column 'image': the image .*truncated.*{fix}"
    ):
        collator([{"image": {"bytes": truncated.read_bytes(), "path": None}, "caption": "a dog", "image_id": "2"}])


def test_a_truncated_image_in_evaluation_names_the_dataset_row_and_file(albef, synthetic, truncated):
    processor, model = albef
    test = synthetic["test"]
    paths = datasets.Dataset.from_dict(
        {"image": [encoded(test[0]["image"]), str(truncated)], "captions": test[:2]["captions"]},
        features=datasets.Features({"image": datasets.Image(), "captions": datasets.List(datasets.Value("string"))}),
    )
    with pytest.raises(ValueError, match=r"Row 1 of the dataset, column 'image' \(file .*cut\.png\): the image could "
                       r"not be read \(image file is truncated.*check_images='decode' and on_error='skip'"):  # fmt: skip
        evaluate_retrieval(model, processor, paths, itc_only=True, show_progress=False)
    images = load_images(_undecoded(test), 0, 3)  # what evaluation encodes: the images datasets would decode, in RGB
    for image, expected in zip(images, test["image"], strict=True):
        np.testing.assert_array_equal(np.asarray(image), np.asarray(expected.convert("RGB")))


def test_a_truncated_image_in_training_names_the_row_and_the_file(synthetic, truncated, tmp_path):
    """`datasets` would decode the image column inside the DataLoader and raise PIL's bare error; `AlignmentTrainer`
    reads it undecoded, so the collator opens the file and names it."""
    method = get_method("albef")
    processor = method.build_processor(method.build_tokenizer(dataset_captions(synthetic)), IMAGE_SIZE)
    config = method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides)
    rows = datasets.Dataset.from_dict(
        {"image": [str(truncated)] * 2, "caption": ["a dog", "a cat"]},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    )
    args = AlignmentTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, report_to=[], use_cpu=True
    )
    trainer = AlignmentTrainer(
        model=method.pretraining_class(config), args=args, train_dataset=rows,
        data_collator=AlignmentCollator(processor, preset="pretrain"),
    )  # fmt: skip
    assert trainer.train_dataset.features["image"].decode is False and rows.features["image"].decode is True
    with pytest.raises(
        ValueError, match=r"Batch row 0, column 'image' \(file .*cut\.png\): the image could not be read"
    ):
        trainer.train()


# ---------------------------------------------------------------------------------------------------------------------
# 6. oversized images
# ---------------------------------------------------------------------------------------------------------------------


def test_an_oversized_image_is_refused_with_its_size_the_limit_and_how_to_raise_it(tmp_path, monkeypatch):
    monkeypatch.delenv(MAX_IMAGE_PIXELS_ENV, raising=False)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(20000, 20000))
    pil_limit = PIL.Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLargeError, match=rf"image is 20000×20000 = 400000000 pixels, more than the limit of "
                       rf"{pil_limit} pixels .*{MAX_IMAGE_PIXELS_ENV}=400000000 \(or 'none'\)"):  # fmt: skip
        open_image(bomb)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "none")
    assert open_image(bomb).size == (20000, 20000)  # the header only: nothing decoded
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "1000")
    with pytest.raises(ImageTooLargeError, match=r"is 40×40 = 1600 pixels, more than the limit of 1000 pixels"):
        open_image(encoded(colour(1)))
    assert open_image(encoded(colour(1)), max_pixels=1600).size == (40, 40)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=rf"{MAX_IMAGE_PIXELS_ENV}='lots' is not a number of pixels"):
        open_image(encoded(colour(1)))
    assert PIL.Image.MAX_IMAGE_PIXELS == pil_limit  # PIL's own setting is never changed


def test_every_image_reading_path_refuses_an_oversized_image(tmp_path, monkeypatch, albef):
    monkeypatch.delenv(MAX_IMAGE_PIXELS_ENV, raising=False)
    processor, model = albef
    (tmp_path / "bomb.png").write_bytes(png_header(20000, 20000))
    colour(3).save(tmp_path / "ok.png")
    too_large = "20000×20000 = 400000000 pixels, more than the limit"
    row = {"image": str(tmp_path / "bomb.png"), "caption": "a cat"}
    with pytest.raises(ValueError, match=rf"Batch row 0, column 'image' \(file .*bomb\.png\): .*{too_large}"):
        AlignmentCollator(processor)([row])
    entries = [{"image": name, "caption": ["a cat"]} for name in ("ok.png", "bomb.png")]
    (tmp_path / "eval.json").write_text(json.dumps(entries))
    with pytest.warns(UserWarning, match=rf"skipped 1 of 2 samples: 1 unreadable image\(s\): .*bomb\.png \("
                      rf"ImageTooLargeError: image is {too_large}"):  # fmt: skip
        loaded = load_karpathy_json(tmp_path / "eval.json", tmp_path, on_error="skip")
    assert len(loaded) == 1
    gallery = datasets.Dataset.from_dict(
        {"image": [str(tmp_path / "ok.png"), str(tmp_path / "bomb.png")]},
        features=datasets.Features({"image": datasets.Image()}),
    )
    with pytest.raises(ValueError, match=rf"Row 1 of the dataset, column 'image' \(file .*bomb\.png\): .*{too_large}"):
        load_images(_undecoded(gallery), 0, 2)
    register_pipelines()
    retriever = pipeline(TASK, model=model, processor=processor)  # `vlalign retrieve --images`
    with pytest.raises(ValueError, match=rf"candidate_images\[1\] could not be loaded as an image: .*bomb\.png is "
                       rf"{too_large}"):  # fmt: skip
        retriever("a cat", candidate_images=[str(tmp_path / "ok.png"), str(tmp_path / "bomb.png")])
    captions = datasets.Dataset.from_dict({"caption": ["a cat", "a dog"]})  # `vlalign retrieve --gallery`, image query
    caption_gallery = embed_gallery(model, processor, captions, column="caption", show_progress=False)
    with pytest.raises(ValueError, match=rf"Query 0 \(.*bomb\.png\) is {too_large}"):
        search_gallery(model, processor, caption_gallery, [str(tmp_path / "bomb.png")])
    with wds.TarWriter(str(tmp_path / "bomb.tar")) as writer:
        writer.write({"__key__": "bomb", "png": png_header(20000, 20000), "txt": "a cat"})
    with pytest.raises(ValueError, match=rf"Sample 'bomb' \(offset 0\) .*{too_large}"):
        list(ImageTextStream(webdataset_shards([str(tmp_path / "bomb.tar")]), on_error="raise"))


# ---------------------------------------------------------------------------------------------------------------------
# 7. non-finite and absurd pixel values
# ---------------------------------------------------------------------------------------------------------------------


def test_processors_refuse_absurd_arrays_naming_the_image_of_a_batch(albef):
    processor, _ = albef
    batch = torch.rand(3, 3, 8, 8)
    batch[1, 0, 2, 2] = 1e30
    with pytest.raises(ValueError, match=r"Image 1 of the batch is a float image with values in \[.*, 1e\+30\]; float "
                       r"images must be in \[0, 1\]\. Divide 0–255 values by 255"):  # fmt: skip
        processor(images=batch)
    batch[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"Image 1 of the batch contains NaN or infinite values"):
        processor(images=batch)
    sixteen_bit = np.full((8, 8, 3), 40000, dtype=np.int32)
    with pytest.raises(ValueError, match=r"Image 1 is an integer image with values in \[40000, 40000\]; integer images "
                       r"must be 8-bit, in \[0, 255\]\. Scale it to 8 bits"):  # fmt: skip
        processor(images=[np.zeros((8, 8, 3), np.uint8), sixteen_bit])


def test_the_collator_refuses_absurd_pixel_values_with_the_row_named(albef):
    processor, _ = albef
    rows = [{"image": colour(9), "caption": "a cat", "image_id": str(i)} for i in range(3)]
    tensor = torch.rand(3, 20, 20)
    tensor[0, 0, 0] = 1e30
    with pytest.raises(ValueError, match=r"Batch row 2 \(image_id='2'\), column 'image': the image is a float image "
                       r"with values in \[.*, 1e\+30\]"):  # fmt: skip
        AlignmentCollator(processor)([*rows[:2], dict(rows[2], image=tensor)])

    normalise = albef_train_transform("pretrain", image_size=IMAGE_SIZE)
    unscaled = lambda image: normalise(image) * 255  # noqa: E731 - a transform that forgot to scale to [0, 1]
    with pytest.raises(ValueError, match=r"pixel_values of batch row 0 \(image_id='0'\) has values in \[.*\], outside "
                       r"\[-5\.58, 5\.9\], .*Check image_transform: it must scale pixels to \[0, 1\]"):  # fmt: skip
        AlignmentCollator(processor, image_transform=unscaled)(rows)
    poisoned = lambda image: torch.full((3, IMAGE_SIZE, IMAGE_SIZE), float("nan"))  # noqa: E731
    with pytest.raises(ValueError, match=r"pixel_values of batch row 0 \(image_id='0'\) has NaN or infinite values"):
        AlignmentCollator(processor, image_transform=poisoned)(rows)
    extremes = [
        dict(row, image=Image.new("RGB", (20, 20), value)) for row, value in zip(rows, (0, 255, 128), strict=True)
    ]
    batch = AlignmentCollator(processor, image_transform=normalise)(extremes)  # black and white images pass
    assert torch.isfinite(batch["pixel_values"]).all() and batch["pixel_values"].abs().max() < 2.2


# ---------------------------------------------------------------------------------------------------------------------
# 8. duplicated evaluation rows
# ---------------------------------------------------------------------------------------------------------------------


def test_duplicated_evaluation_rows_are_warned_about_with_counts_examples_and_the_effect(albef, synthetic):
    processor, model = albef
    test = synthetic["test"].select_columns(["image", "captions", "image_id"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DuplicateEvaluationRowsWarning)
        clean = evaluate_retrieval(model, processor, test, itc_only=True, show_progress=False)
    doubled = datasets.concatenate_datasets([test, test])
    with pytest.warns(DuplicateEvaluationRowsWarning, match=r"3 row\(s\) repeat an earlier row's image \(rows 0, 3; "
                      r"rows 1, 4; rows 2, 5\); 6 caption\(s\) belong to more than one image, 12 of the 12 captions "
                      r".*R@1 by up to half with two copies"):  # fmt: skip
        halved = evaluate_retrieval(model, processor, doubled, itc_only=True, show_progress=False)
    assert halved["img_r1"] <= clean["img_r1"] / 2 + 1e-6  # every caption has two identical images, one counted wrong
    shared = test.map(lambda row, i: {"captions": ["the same caption", f"own caption {i}"]}, with_indices=True)
    with pytest.warns(DuplicateEvaluationRowsWarning, match=r"^The evaluation set has duplicates: 1 caption\(s\) belong "
                      r"to more than one image, 3 of the 6 captions \('the same caption': rows 0, 1, 2\)\."):  # fmt: skip
        evaluate_retrieval(model, processor, shared, itc_only=True, show_progress=False)
