"""Tests of the ALBEF json and generic datasets loaders, including how bad samples are reported."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import datasets
import pytest
import torch

from vlalign.data.loaders import DataValidationError, LoadReport, load_image_text_dataset, load_karpathy_json

FIXTURE = Path(__file__).parent / "fixtures" / "albef" / "retrieval"


@pytest.fixture
def broken_copy(tmp_path: Path) -> Path:
    """Copy of the fixture with img_1.png overwritten by garbage bytes and img_3.png deleted."""
    root = tmp_path / "retrieval"
    root.mkdir()
    shutil.copy(FIXTURE / "test.json", root / "test.json")
    shutil.copy(FIXTURE / "train.json", root / "train.json")
    shutil.copytree(FIXTURE / "images", root / "images")
    (root / "images" / "img_1.png").write_bytes(b"\x89PNG this is not really a png" * 10)
    (root / "images" / "img_3.png").unlink()
    return root


def _json(path: Path, entries: list) -> Path:
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------------
# load_karpathy_json on the clean fixture
# ----------------------------------------------------------------------------------------------------------------


def test_eval_layout():
    entries = json.loads((FIXTURE / "test.json").read_text())
    ds = load_karpathy_json(FIXTURE / "test.json", FIXTURE)
    assert ds.column_names == ["image", "captions", "image_id"]
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.num_rows == 6
    assert ds["captions"] == [e["caption"] for e in entries]  # raw text, untouched
    assert ds["image_id"] == [e["image"] for e in entries]
    image = ds[2]["image"]
    assert image.mode == "RGB" and image.size == (40, 40)


def test_train_layout():
    entries = json.loads((FIXTURE / "train.json").read_text())
    ds = load_karpathy_json(FIXTURE / "train.json", str(FIXTURE))
    assert ds.column_names == ["image", "caption", "image_id", "idx"]
    assert ds.num_rows == 12
    assert ds["caption"] == [e["caption"] for e in entries]
    assert ds["image_id"] == [e["image_id"] for e in entries]
    assert ds["idx"] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert ds[3]["image"].size == (40, 40)


def test_layout_detection_and_mismatch():
    ds, report = load_karpathy_json(FIXTURE / "train.json", FIXTURE, split_layout="train", return_report=True)
    assert report == LoadReport(str(FIXTURE / "train.json"), "train", 12, 12)
    assert report.ok and report.num_skipped == 0
    with pytest.raises(ValueError, match="split_layout='eval'"):
        load_karpathy_json(FIXTURE / "train.json", FIXTURE, split_layout="eval")
    with pytest.raises(ValueError, match="split_layout"):
        load_karpathy_json(FIXTURE / "train.json", FIXTURE, split_layout="pairs")
    with pytest.raises(ValueError, match="on_error"):
        load_karpathy_json(FIXTURE / "train.json", FIXTURE, on_error="ignore")


def test_malformed_annotations(tmp_path):
    mixed = _json(tmp_path / "mixed.json", [{"image": "a.png", "caption": "x"}, {"image": "b.png", "caption": ["y"]}])
    with pytest.raises(ValueError, match="mixes"):
        load_karpathy_json(mixed, FIXTURE)
    no_key = _json(tmp_path / "nokey.json", [{"image": "a.png"}])
    with pytest.raises(ValueError, match="'caption'"):
        load_karpathy_json(no_key, FIXTURE)
    not_list = _json(tmp_path / "dict.json", {"image": "a.png"})
    with pytest.raises(ValueError, match="json list"):
        load_karpathy_json(not_list, FIXTURE)


# ----------------------------------------------------------------------------------------------------------------
# corrupt images and empty captions
# ----------------------------------------------------------------------------------------------------------------


def test_corrupt_images_raise_by_default(broken_copy):
    with pytest.raises(DataValidationError) as info:
        load_karpathy_json(broken_copy / "test.json", broken_copy)
    message = str(info.value)
    assert "2 of 6 samples" in message and "2 unreadable image(s)" in message
    assert "img_1.png" in message and "img_3.png" in message and "file not found" in message
    assert "on_error='skip'" in message
    report = info.value.report
    assert [Path(ref).name for ref, _ in report.bad_images] == ["img_1.png", "img_3.png"]
    assert report.num_kept == 4


def test_corrupt_images_skipped_with_warning_eval(broken_copy):
    with pytest.warns(UserWarning, match="skipped 2 of 6 samples") as record:
        ds, report = load_karpathy_json(broken_copy / "test.json", broken_copy, on_error="skip", return_report=True)
    assert "img_1.png" in str(record[0].message)
    assert ds.num_rows == 4 and report.num_skipped == 2 and len(report.bad_images) == 2
    assert ds["image_id"] == ["images/img_0.png", "images/img_2.png", "images/img_4.png", "images/img_5.png"]
    assert all(image.size == (40, 40) for image in ds["image"])  # every kept image decodes


def test_corrupt_images_skipped_train_layout(broken_copy):
    with pytest.warns(UserWarning, match="skipped 4 of 12 samples: 2 unreadable image"):
        ds = load_karpathy_json(broken_copy / "train.json", broken_copy, on_error="skip")
    assert ds["image_id"] == ["img_0", "img_0", "img_2", "img_2", "img_4", "img_4", "img_5", "img_5"]
    assert ds["idx"] == [0, 0, 1, 1, 2, 2, 3, 3]  # contiguous again after dropping


def test_check_modes(tmp_path):
    """'header' (default) catches missing and unrecognised files, 'decode' also truncation, 'none' nothing."""
    shutil.copytree(FIXTURE / "images", tmp_path / "images")
    png = tmp_path / "images" / "img_2.png"
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    (tmp_path / "images" / "img_3.png").write_bytes(b"<html>not found</html>")
    entries = [{"image": f"images/img_{i}.png", "caption": ["a"]} for i in (0, 2, 3, 9)]
    ann = _json(tmp_path / "ann.json", entries)

    def problems(check_images) -> tuple[str, list[str]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, report = load_karpathy_json(
                ann, tmp_path, on_error="skip", check_images=check_images, return_report=True
            )
        return report.image_check, sorted(Path(ref).name for ref, _ in report.bad_images)

    assert problems("header") == ("header", ["img_3.png", "img_9.png"])
    assert problems("decode") == problems(True) == ("decode", ["img_2.png", "img_3.png", "img_9.png"])
    assert problems("none") == problems(False) == ("none", [])
    with pytest.raises(ValueError, match="check_images must be"):
        load_karpathy_json(ann, tmp_path, check_images="full")


def test_no_warning_when_clean():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_karpathy_json(FIXTURE / "test.json", FIXTURE, on_error="skip").num_rows == 6


def test_empty_captions(tmp_path):
    eval_ann = _json(
        tmp_path / "eval.json",
        [
            {"image": "images/img_0.png", "caption": ["a red square", "   "]},
            {"image": "images/img_1.png", "caption": [""]},
            {"image": "images/img_2.png", "caption": ["two stripes"]},
        ],
    )
    with pytest.raises(DataValidationError, match="2 empty caption"):
        load_karpathy_json(eval_ann, FIXTURE)
    with pytest.warns(UserWarning, match="skipped 1 of 3 samples: 2 empty caption"):
        ds, report = load_karpathy_json(eval_ann, FIXTURE, on_error="skip", return_report=True)
    assert ds["captions"] == [["a red square"], ["two stripes"]]  # empty captions removed, emptied image dropped
    assert report.empty_captions[0].startswith("row 0 caption 1")

    train_ann = _json(
        tmp_path / "train.json",
        [
            {"image": "images/img_0.png", "caption": "a red square", "image_id": "0"},
            {"image": "images/img_0.png", "caption": " \n", "image_id": "0"},
            {"image": "images/img_1.png", "caption": "a blue circle", "image_id": "1"},
        ],
    )
    with pytest.warns(UserWarning, match="skipped 1 of 3 samples: 1 empty caption"):
        ds = load_karpathy_json(train_ann, FIXTURE, on_error="skip")
    assert ds["caption"] == ["a red square", "a blue circle"] and ds["idx"] == [0, 1]


# ----------------------------------------------------------------------------------------------------------------
# load_image_text_dataset
# ----------------------------------------------------------------------------------------------------------------


def test_adapt_eval_layout_from_paths():
    entries = json.loads((FIXTURE / "test.json").read_text())
    source = datasets.Dataset.from_dict(
        {
            "file": [str(FIXTURE / e["image"]) for e in entries],
            "sentences": [e["caption"] for e in entries],
            "extra": list(range(6)),
        }
    )
    ds = load_image_text_dataset(source, image_column="file", text_column="sentences")
    assert ds.column_names == ["image", "captions", "image_id"]
    assert ds["image_id"] == list(range(6))  # no id column: the row index
    assert ds["captions"] == [e["caption"] for e in entries]
    assert ds[0]["image"].size == (40, 40) and ds[0]["image"].mode == "RGB"


def test_adapt_train_layout_keeps_image_ids():
    pairs = load_karpathy_json(FIXTURE / "train.json", FIXTURE).remove_columns("idx")
    pairs = pairs.rename_columns({"image": "picture", "caption": "text", "image_id": "img"})
    ds = load_image_text_dataset(pairs, image_column="picture", text_column="text", image_id_column="img")
    assert ds.column_names == ["image", "caption", "image_id", "idx"]
    assert ds["image_id"] == pairs["img"]
    assert ds["idx"] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def _bytes_dataset() -> datasets.Dataset:
    good = [(FIXTURE / "images" / f"img_{i}.png").read_bytes() for i in range(4)]
    images = [{"bytes": good[0], "path": None}, {"bytes": b"garbage" * 20, "path": None}]
    images += [{"bytes": good[2][:200], "path": "img_2.png"}, {"bytes": good[3], "path": None}]
    return datasets.Dataset.from_dict(
        {"image": images, "caption": ["first", "second", "third", "  "], "image_id": [10, 11, 12, 13]},
        features=datasets.Features(
            {"image": datasets.Image(), "caption": datasets.Value("string"), "image_id": datasets.Value("int64")}
        ),
    )


def test_adapt_reports_bad_bytes_and_empty_captions():
    source = _bytes_dataset()
    with pytest.raises(DataValidationError) as info:
        load_image_text_dataset(source, check_images="decode")  # row 2 is truncated: past its header
    message = str(info.value)
    assert "3 of 4 samples" in message and "2 unreadable image(s)" in message and "1 empty caption(s)" in message
    assert "row 1" in message and "row 2: img_2.png" in message
    with pytest.warns(UserWarning, match="skipped 3 of 4 samples"):
        ds, report = load_image_text_dataset(source, on_error="skip", check_images="decode", return_report=True)
    assert ds["image_id"] == [10] and ds["caption"] == ["first"] and ds["idx"] == [0]
    assert ds[0]["image"].size == (40, 40)
    assert report.layout == "train" and report.num_samples == 4 and report.num_kept == 1


def test_adapt_rejects_bad_columns():
    source = _bytes_dataset()
    with pytest.raises(ValueError, match=r"text_column='text' is not a column.*\['image', 'caption', 'image_id'\]"):
        load_image_text_dataset(source, text_column="text")
    with pytest.raises(ValueError, match="split_column='split' is not a column"):
        load_image_text_dataset(source, split="test")
    with pytest.raises(ValueError, match="layout='eval' needs a text column of caption lists"):
        load_image_text_dataset(source, layout="eval")
    with pytest.raises(TypeError, match="strings or lists of strings"):
        load_image_text_dataset(source, text_column="image_id")
    with pytest.raises(TypeError, match="image column"):
        load_image_text_dataset(source, image_column="image_id")


# ----------------------------------------------------------------------------------------------------------------
# Hub forms of the Karpathy splits
# ----------------------------------------------------------------------------------------------------------------


def _karpathy_hub_form(images_inside: bool) -> datasets.Dataset:
    """6 fixture images as nlphuji/flickr30k (images inside, `caption` lists) or yerevann/coco-karpathy (relative
    `filepath` + `filename`, `sentences` lists), with a Karpathy `split` column."""
    entries = json.loads((FIXTURE / "test.json").read_text())
    columns = {
        "split": ["train", "test", "train", "restval", "val", "test"],
        "cocoid": [100 + i for i in range(6)],
    }
    if images_inside:
        columns["image"] = [str(FIXTURE / e["image"]) for e in entries]
        columns["caption"] = [e["caption"] for e in entries]
        return datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())
    columns["filepath"] = [str(Path(e["image"]).parent) for e in entries]
    columns["filename"] = [Path(e["image"]).name for e in entries]
    columns["sentences"] = [e["caption"] for e in entries]
    return datasets.Dataset.from_dict(columns)


@pytest.mark.parametrize("images_inside", [True, False], ids=["flickr30k-style", "coco-karpathy-style"])
def test_hub_karpathy_forms(images_inside):
    entries = json.loads((FIXTURE / "test.json").read_text())
    source = _karpathy_hub_form(images_inside)
    columns = (
        dict(text_column="caption")
        if images_inside
        else dict(image_column=("filepath", "filename"), text_column="sentences", image_root=FIXTURE)
    )
    test = load_image_text_dataset(source, **columns, image_id_column="cocoid", split="test")
    assert test.column_names == ["image", "captions", "image_id"]
    assert test["image_id"] == [101, 105]
    assert test["captions"] == [entries[1]["caption"], entries[5]["caption"]]
    assert test[1]["image"].size == (40, 40) and test[1]["image"].mode == "RGB"

    train, report = load_image_text_dataset(
        source, **columns, image_id_column="cocoid", split=("train", "restval"), layout="train", return_report=True
    )
    captions = [c for i in (0, 2, 3) for c in entries[i]["caption"]]
    assert train.column_names == ["image", "caption", "image_id", "idx"]
    assert train["caption"] == captions and report.num_samples == report.num_kept == len(captions)
    assert train["idx"] == [i for i, e in enumerate(entries[j] for j in (0, 2, 3)) for _ in e["caption"]]
    assert train["image_id"] == [100 + j for j in (0, 2, 3) for _ in entries[j]["caption"]]
    assert train[len(captions) - 1]["image"].size == (40, 40)
    with pytest.raises(ValueError, match=r"no row has split=\['tset'\]; the column holds \['restval', 'test'"):
        load_image_text_dataset(source, **columns, split="tset")


def test_hub_train_layout_reports_bad_rows_of_the_split_only(tmp_path):
    """Pairs from a caption-list column: an image's bad file drops all its pairs, counted once; an image without
    captions is reported; rows outside the split are not checked."""
    shutil.copytree(FIXTURE / "images", tmp_path / "images")
    (tmp_path / "images" / "img_2.png").unlink()  # a training image
    (tmp_path / "images" / "img_1.png").unlink()  # a test image: not checked for the training split
    source = _karpathy_hub_form(images_inside=False)
    sentences = list(source["sentences"])
    sentences[3] = []
    source = source.remove_columns("sentences").add_column("sentences", sentences)
    with pytest.warns(UserWarning, match="skipped 3 of 5 samples: 1 unreadable image.*1 empty caption"):
        train, report = load_image_text_dataset(
            source, ("filepath", "filename"), "sentences", image_root=tmp_path, split=["train", "restval"],
            layout="train", on_error="skip", return_report=True,
        )  # fmt: skip
    assert [Path(ref).name for ref, _ in report.bad_images] == ["img_2.png"]
    assert report.empty_captions == (f"row 4 ({'row 3: ' + str(tmp_path / 'images' / 'img_3.png')})",)
    assert train["image_id"] == [0, 0] and train["idx"] == [0, 0]


def test_sixteen_bit_images_keep_their_mode_until_the_processor_scales_them(tmp_path):
    """The loaders no longer force RGB on decode (which saturates 16-bit images to white); the collator scales them."""
    import numpy as np
    from PIL import Image as PILImage

    from vlalign.data.collator import AlignmentCollator
    from vlalign.methods import get_method

    PILImage.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(tmp_path / "grey16.png")
    (tmp_path / "ann.json").write_text(json.dumps([{"image": "grey16.png", "caption": ["a grey square"]}]))
    dataset = load_karpathy_json(tmp_path / "ann.json", tmp_path, split_layout="eval")
    assert dataset[0]["image"].mode.startswith("I;16")
    method = get_method("albef")
    processor = method.build_processor(method.build_tokenizer(["a grey square"]), 16)
    batch = AlignmentCollator(processor, text_column="captions")([dataset[0]])
    mean = torch.tensor(processor.image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_processor.image_std).view(3, 1, 1)
    pixels = batch["pixel_values"][0] * std + mean
    assert torch.allclose(pixels, torch.full_like(pixels, 128 / 255), atol=0.01)
