"""NLVR2 data and evaluation: the official JSON loader (counted skips, errors naming the entry), the Hub layout, the
collator against the ALBEF fixture's official inputs (`../shared/fixtures/albef/downstream/nlvr`), and the accuracy
against the official `NLVR.evaluate()` result."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file
from transformers import AutoProcessor

from vlalign.data.loaders import DataValidationError
from vlalign.data.nlvr import NLVR_LABELS, NlvrCollator, load_nlvr_dataset, load_nlvr_json

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NLVR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "albef" / "downstream" / "nlvr"
DATA = NLVR / "data"
ANNOTATIONS = DATA / "nlvr_test.json"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    original, output = NLVR / "original", tmp_path_factory.mktemp("nlvr") / "albef"
    run_cli(
        "convert", "--method", "albef", "--task", "nlvr2", "--checkpoint", str(original / "checkpoint.pth"),
        "--config", str(original / "NLVR.yaml"), "--config", str(original / "config_bert.json"),
        "--tokenizer", str(original), "--output", str(output),
    )  # fmt: skip
    return output


def test_loader_reads_the_official_json():
    dataset = load_nlvr_json(ANNOTATIONS, DATA)
    rows = json.loads(ANNOTATIONS.read_text())
    assert len(dataset) == 3 and list(dataset.features["label"].names) == list(NLVR_LABELS)
    assert dataset["sentence"] == [row["sentence"] for row in rows]
    assert dataset["label"] == load_file(NLVR / "inputs.safetensors")["targets"].tolist()  # 'True' → 1
    undecoded = dataset.cast_column("image_left", datasets.Image(decode=False))
    undecoded = undecoded.cast_column("image_right", datasets.Image(decode=False))
    assert [Path(r["image_left"]["path"]).name for r in undecoded] == [row["images"][0] for row in rows]
    assert [Path(r["image_right"]["path"]).name for r in undecoded] == [row["images"][1] for row in rows]
    assert dataset[0]["image_left"].mode == "RGB"


def write(tmp_path: Path, entries) -> Path:
    file = tmp_path / "nlvr.json"
    file.write_text(json.dumps(entries))
    return file


def test_bad_rows_raise_or_are_counted(tmp_path):
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes((DATA / "img_0.png").read_bytes())
    (tmp_path / "broken.png").write_bytes(b"not an image")
    entries = [
        {"images": ["a.png", "b.png"], "sentence": "Two dogs.", "label": "True"},
        {"images": ["a.png", "b.png"], "sentence": "  ", "label": "False"},
        {"images": ["b.png", "a.png"], "sentence": "A cat.", "label": "true"},
        {"images": ["a.png", "broken.png"], "sentence": "A bird.", "label": "False"},
        {"images": ["missing.png", "a.png"], "sentence": "A car.", "label": "True"},
    ]
    file = write(tmp_path, entries)
    with pytest.raises(DataValidationError, match="4 of 5 samples") as raised:
        load_nlvr_json(file, tmp_path)
    assert raised.value.report.num_skipped == 4
    with pytest.warns(UserWarning, match="skipped 4 of 5"):
        dataset, report = load_nlvr_json(file, tmp_path, on_error="skip", return_report=True)
    assert len(dataset) == 1 and dataset[0]["label"] == 1
    assert [reason for _, reason in report.bad_rows] == [
        "blank sentence",
        "label 'true' is neither 'True' nor 'False'",
    ]
    assert [Path(path).name for path, _ in report.bad_images] == ["broken.png", "missing.png"]
    assert all("entry 3" in reason or "entry 4" in reason for _, reason in report.bad_images)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"images": []}, "expected a JSON list"),
        (["a"], "entry 0: expected an object"),
        ([{"images": ["a.png"], "sentence": "x", "label": "True"}], "entry 0: 'images' must be a list of two"),
        ([{"images": ["a", "b"], "sentence": "x"}], "'label' must be a string, it is missing"),
        ([{"images": ["a", "b"], "sentence": 3, "label": "True"}], "'sentence' must be a string, it is int 3"),
    ],
)
def test_malformed_files_name_the_entry_and_the_format(tmp_path, content, message):
    with pytest.raises(ValueError, match=message) as raised:
        load_nlvr_json(write(tmp_path, content), tmp_path)
    assert "official NLVR2 JSON" in str(raised.value) and "nlvr.json" in str(raised.value)


def hub_layout(labels, names=("True", "False")) -> datasets.Dataset:
    """The fixture's pairs as a Hub dataset would hold them: `left_image`/`right_image` Image columns and a
    ClassLabel in another order than the official one."""
    rows = json.loads(ANNOTATIONS.read_text())
    features = datasets.Features(
        {
            "left_image": datasets.Image(),
            "right_image": datasets.Image(),
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=names),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "left_image": [str(DATA / row["images"][0]) for row in rows],
            "right_image": [str(DATA / row["images"][1]) for row in rows],
            "sentence": [row["sentence"] for row in rows],
            "label": labels if labels is not None else [names.index(row["label"]) for row in rows],
        },
        features=features,
    )


def test_hub_layout_maps_labels_by_name():
    official = load_nlvr_json(ANNOTATIONS, DATA)
    adapted = load_nlvr_dataset(hub_layout(None))
    assert adapted["label"] == official["label"] and adapted["sentence"] == official["sentence"]
    assert list(adapted.features["label"].names) == list(NLVR_LABELS)
    assert set(adapted.column_names) == {"image_left", "image_right", "sentence", "label"}
    for side in ("image_left", "image_right"):
        assert [r[side].tobytes() for r in adapted] == [r[side].tobytes() for r in official]
    as_bool = hub_layout(None).cast_column("label", datasets.Value("bool"))
    as_bool = as_bool.map(lambda row, i: {"label": [True, False, True][i]}, with_indices=True)
    assert load_nlvr_dataset(as_bool)["label"] == official["label"]
    with pytest.warns(UserWarning, match="skipped 1 of 3"):
        dataset, report = load_nlvr_dataset(hub_layout([0, -1, 0]), on_error="skip", return_report=True)
    assert len(dataset) == 2 and report.bad_rows[0] == ("row 1", "label '-1' is neither 'True' nor 'False'")
    with pytest.raises(DataValidationError, match="1 of 3 samples"):
        load_nlvr_dataset(hub_layout([0, -1, 0]))
    with pytest.raises(ValueError, match="NLVR2 needs 'False' and 'True'"):
        load_nlvr_dataset(hub_layout([0, 1, 0], names=("yes", "no")))
    with pytest.raises(ValueError, match="is not a column"):
        load_nlvr_dataset(hub_layout(None), image_columns=("left", "right"))


def test_collator_gives_the_official_training_inputs(folder):
    """The fixture's pairs collate into the official tokens (pre_caption, padded to the longest), labels, and both
    images in the official order (all left images, then all right images)."""
    dataset = load_nlvr_json(ANNOTATIONS, DATA)
    processor = AutoProcessor.from_pretrained(folder)
    collator = NlvrCollator(processor)
    rows = [dataset[i] for i in range(len(dataset))]
    collated = collator(rows)
    inputs = load_file(NLVR / "inputs.safetensors")
    assert torch.equal(collated["input_ids"], inputs["input_ids"])
    assert torch.equal(collated["attention_mask"], inputs["attention_mask"])
    assert torch.equal(collated["labels"], inputs["targets"])
    left = processor(images=[r["image_left"] for r in rows], return_tensors="pt")["pixel_values"]
    right = processor(images=[r["image_right"] for r in rows], return_tensors="pt")["pixel_values"]
    assert torch.equal(collated["pixel_values"], torch.cat([left, right]))
    assert collator([{**rows[0], "label": "False"}])["labels"].tolist() == [0]
    assert collator([{**rows[0], "label": True}])["labels"].tolist() == [1]
    with pytest.raises(ValueError, match="row 0: label 'maybe' is not a class"):
        collator([{**rows[0], "label": "maybe"}])
    with pytest.raises(KeyError, match="image_right"):
        collator([{key: value for key, value in rows[0].items() if key != "image_right"}])
    with pytest.raises(KeyError, match="remove_unused_columns=False"):
        collator([{key: value for key, value in rows[0].items() if key != "label"}])


def test_augmentations_are_per_side_and_reproducible(folder):
    """With a random `image_transform` each side has its own row seed: left and right views differ even for the same
    image, and collating again (a resume, another process) gives the same tensors."""
    from torchvision.transforms import v2

    dataset = load_nlvr_json(ANNOTATIONS, DATA)
    to_tensor = v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Resize((32, 32))])

    def transform(image):  # the fixture's images are plain colours: a random shift shows the draw
        return to_tensor(image) + 0.1 * torch.rand(1)

    collator = NlvrCollator(AutoProcessor.from_pretrained(folder), image_transform=transform)
    same_image = {**dataset[0], "image_right": dataset[0]["image_left"]}
    first = collator([same_image])["pixel_values"]
    assert first.shape == (2, 3, 32, 32) and not torch.equal(first[0], first[1])
    assert torch.equal(collator([same_image])["pixel_values"], first)
