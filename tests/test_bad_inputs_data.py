"""The data and model half of the bad-input matrix (docs/bad_inputs.md, section "Data and models"): every bad image,
caption or tensor at every entry point — processor, collator, retrieval pipeline, loaders, stream, models — gives a
clear error naming the problem and the fix, or a documented conversion, for every registered method."""

from __future__ import annotations

import io
import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from vlalign.data.collator import AlignmentCollator
from vlalign.data.loaders import load_karpathy_json
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.data.transforms import albef_train_transform
from vlalign.data.transforms_fdt import fdt_train_transform
from vlalign.evaluation import evaluate_retrieval
from vlalign.methods import get_method, method_names
from vlalign.models.input_checks import NonFiniteInputError, to_rgb
from vlalign.pipelines.retrieval import TASK, register_pipelines
from vlalign.recipes import dataset_captions

IMAGE_SIZE = 32
METHODS = method_names()
GRADIENT = np.tile(np.linspace(0, 1, 40, dtype=np.float32), (40, 1))


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic_dataset(num_train=8, num_validation=0, num_test=3, image_size=IMAGE_SIZE, seed=5)


@pytest.fixture(scope="module", params=METHODS)
def setup(request, dataset):
    """(method, processor, config) for each registered method."""
    method = get_method(request.param)
    processor = method.build_processor(method.build_tokenizer(dataset_captions(dataset)), IMAGE_SIZE)
    config = method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides)
    return method, processor, config


@pytest.fixture(scope="module")
def model(setup):
    method, _, config = setup
    torch.manual_seed(0)
    return method.model_class(config).eval()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def sixteen_bit() -> Image.Image:
    """A 16-bit grayscale ramp (mode I;16), as PIL opens 16-bit PNG/TIFF files; `.convert("RGB")` turns it white."""
    return Image.fromarray(np.round(GRADIENT * 65535).astype(np.uint16))


def eight_bit_of(image: Image.Image) -> Image.Image:
    return Image.fromarray(np.round(np.asarray(image, dtype=np.float32) / 257).astype(np.uint8)).convert("RGB")


REFUSED_MODES = {
    "I": lambda: Image.fromarray(np.round(GRADIENT * 65535).astype(np.int32)),
    "F": lambda: Image.fromarray(GRADIENT),
}
CONVERTED_MODES = {
    "L": lambda: Image.fromarray(np.uint8(GRADIENT * 255)),
    "LA": lambda: Image.new("LA", (40, 40), (100, 0)),
    "P": lambda: Image.new("RGB", (40, 40), (200, 10, 10)).convert("P"),
    "RGBA": lambda: Image.new("RGBA", (40, 40), (200, 10, 10, 0)),
    "CMYK": lambda: Image.new("CMYK", (40, 40), (0, 255, 0, 0)),
}


# ---------------------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------------------


def test_to_rgb_converts_like_the_official_loaders_and_scales_16_bit():
    for make in CONVERTED_MODES.values():
        image = make()
        assert to_rgb(image).tobytes() == image.convert("RGB").tobytes()  # alpha dropped, not composited on white
    image = sixteen_bit()
    assert image.mode == "I;16" and (np.asarray(image.convert("RGB")) == 255).mean() > 0.9  # PIL saturates it
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.getextrema()[0] == (0, 255)
    assert np.array_equal(np.asarray(rgb)[..., 0], np.round(GRADIENT * 255).astype(np.uint8))
    big_endian = Image.frombytes("I;16B", image.size, np.asarray(image).astype(">u2").tobytes())
    assert to_rgb(big_endian).tobytes() == rgb.tobytes()


@pytest.mark.parametrize("mode", sorted(REFUSED_MODES))
def test_to_rgb_refuses_32_bit_int_and_float_images(mode):
    with pytest.raises(ValueError, match=rf"mode '{mode}'.*value range is unknown.*Convert it to 8 bits yourself"):
        to_rgb(REFUSED_MODES[mode]())
    with pytest.raises(ValueError, match=r"is empty \(0×5 pixels\)"):
        to_rgb(Image.new("RGB", (0, 5)))


def test_processor_converts_every_mode_as_the_official_loaders(setup):
    _, processor, _ = setup
    for make in CONVERTED_MODES.values():
        image = make()
        expected = processor(images=image.convert("RGB"))["pixel_values"]
        torch.testing.assert_close(processor(images=image)["pixel_values"], expected)
        torch.testing.assert_close(processor.image_processor(image, return_tensors="pt")["pixel_values"], expected)
    expected = processor(images=eight_bit_of(sixteen_bit()))["pixel_values"]
    torch.testing.assert_close(processor(images=sixteen_bit())["pixel_values"], expected)


def bad_arrays():
    nan = np.random.default_rng(0).random((40, 40, 3), dtype=np.float32)
    nan[0, 0, 0] = np.nan
    inf = nan.copy()
    inf[0, 0, 0] = np.inf
    return [
        ("NaN array", nan, ValueError, "Image 0 contains NaN or infinite values"),
        ("inf array", inf, ValueError, "Image 0 contains NaN or infinite values"),
        ("NaN tensor", torch.from_numpy(nan).permute(2, 0, 1), ValueError, "NaN or infinite"),
        ("0-255 float", np.full((40, 40, 3), 200.0, np.float32), ValueError, r"must be in \[0, 1\]. Divide"),
        ("zero-size array", np.zeros((0, 5, 3), np.uint8), ValueError, r"Image 0 is empty \(shape \(0, 5, 3\)\)"),
        ("zero-size image", Image.new("RGB", (0, 4)), ValueError, r"Image 0 is empty \(0×4 pixels\)"),
        ("2 channels", np.zeros((40, 40, 2), np.uint8), ValueError, r"has shape \(40, 40, 2\); expected"),
        ("rank 5", np.zeros((1, 1, 3, 8, 8), np.uint8), ValueError, "has shape"),
        ("not an image", "cat.jpg", TypeError, "Image 0 is a str; pass PIL images"),
        ("32-bit int", REFUSED_MODES["I"](), ValueError, "mode 'I'"),
        ("float image", REFUSED_MODES["F"](), ValueError, "mode 'F'"),
    ]


@pytest.mark.parametrize(("case", "image", "error", "message"), bad_arrays(), ids=[c[0] for c in bad_arrays()])
def test_processor_refuses_bad_images(setup, case, image, error, message):
    _, processor, _ = setup
    with pytest.raises(error, match=message):
        processor(images=[image], text=["a cat"])
    with pytest.raises(error, match=message.replace("Image 0", "Image 0")):
        processor.image_processor([image], return_tensors="pt")


def test_processor_accepts_float_images_in_range(setup):
    _, processor, _ = setup
    array = np.random.default_rng(0).random((40, 40, 3), dtype=np.float32)
    pixel_values = processor(images=array)["pixel_values"]
    assert pixel_values.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE) and torch.isfinite(pixel_values).all()


@pytest.fixture(scope="module")
def row(dataset):
    return dict(dataset["train"][0])


@pytest.fixture(scope="module")
def collator(setup):
    _, processor, _ = setup
    return AlignmentCollator(processor, preset="pretrain", text_column="captions")


def test_collator_reads_bad_files_with_the_row_named(collator, row):
    data = png_bytes(row["image"])
    cases = {
        "truncated": ({"bytes": data[: len(data) // 2], "path": None}, "truncated"),
        "corrupt": ({"bytes": b"\x89PNG not an image", "path": None}, "cannot identify image file"),
        "zero bytes": ({"bytes": b"", "path": None}, "cannot identify image file"),
        "zero size": (Image.new("RGB", (0, 3)), r"empty \(0×3 pixels\)"),
        "32-bit int": (REFUSED_MODES["I"](), "mode 'I'"),
        "no source": ({"bytes": None, "path": None}, "neither bytes nor a path"),
        "F": (REFUSED_MODES["F"](), "mode 'F'"),
    }
    for image, message in cases.values():
        with pytest.raises(ValueError, match=rf"Batch row 0 \(image_id=0\), column 'image'.*{message}.*load_karpathy"):
            collator([dict(row, image=image)])


def test_collator_converts_modes_and_16_bit_files(collator, row):
    expected = collator([dict(row, image=eight_bit_of(sixteen_bit()))])["pixel_values"]
    for image in (sixteen_bit(), {"bytes": png_bytes(sixteen_bit()), "path": None}):
        torch.testing.assert_close(collator([dict(row, image=image)])["pixel_values"], expected)
    for make in CONVERTED_MODES.values():
        expected = collator([dict(row, image=make().convert("RGB"))])["pixel_values"]
        torch.testing.assert_close(collator([dict(row, image=make())])["pixel_values"], expected)


def test_train_transforms_scale_16_bit_and_refuse_float_images():
    for transform in (albef_train_transform("pretrain", image_size=IMAGE_SIZE), fdt_train_transform(IMAGE_SIZE)):
        torch.manual_seed(0)
        expected = transform(eight_bit_of(sixteen_bit()))
        torch.manual_seed(0)
        torch.testing.assert_close(transform(sixteen_bit()), expected)
        with pytest.raises(ValueError, match="mode 'F'"):
            transform(REFUSED_MODES["F"]())


def test_loaded_16_bit_files_reach_the_model_scaled_and_bad_files_are_counted(tmp_path, setup, collator):
    images = {"ramp.png": sixteen_bit(), "ok.png": Image.new("RGB", (40, 40), (9, 99, 199))}
    for name, image in images.items():
        image.save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(png_bytes(images["ok.png"])[:40])
    (tmp_path / "empty.png").write_bytes(b"")
    entries = [
        {"image": name, "caption": ["a gray ramp", "a colour"]} for name in [*images, "broken.png", "empty.png"]
    ]
    annotation = tmp_path / "test.json"
    annotation.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match="broken.png"):
        load_karpathy_json(annotation, tmp_path, check_images="decode")
    with pytest.warns(UserWarning, match="skipped 2 of 4"):
        loaded, report = load_karpathy_json(
            annotation, tmp_path, on_error="skip", check_images="decode", return_report=True
        )
    assert len(loaded) == 2 and len(report.bad_images) == 2
    # The loaders' image column decodes with `datasets.Image(mode="RGB")`, which clips 16-bit images white; read it
    # undecoded and the collator converts (docs/bad_inputs.md).
    undecoded = loaded.cast_column("image", datasets.Image(decode=False))
    expected = collator([{"image": eight_bit_of(sixteen_bit()), "captions": ["a gray ramp"]}])["pixel_values"]
    torch.testing.assert_close(collator([undecoded[0]])["pixel_values"], expected)


# ---------------------------------------------------------------------------------------------------------------------
# captions
# ---------------------------------------------------------------------------------------------------------------------

BAD_CAPTIONS = [
    ("", ValueError, "is empty after cleaning"),
    ("  \t\n", ValueError, "is empty after cleaning"),
    ("\u200b", ValueError, r"is empty after cleaning \(it holds only invisible characters\)"),
    ("\u200d\ufeff \u00ad\u2060", ValueError, r"is empty after cleaning \(it holds only invisible characters\)"),
    ("a \ud800 cat", ValueError, r"is not valid Unicode: surrogates not allowed.*errors='replace'"),
    (b"caf\xe9", TypeError, r"is bytes, expected a string. Decode it first"),
    (3, TypeError, "is a int, expected a string"),
    (None, TypeError, "is a NoneType, expected a string"),
]


@pytest.mark.parametrize(("caption", "error", "message"), BAD_CAPTIONS, ids=lambda v: repr(v)[:12])
def test_bad_captions_are_refused_at_processor_and_collator(setup, row, caption, error, message):
    _, processor, _ = setup
    with pytest.raises(error, match=rf"Text 1 .*{message}" if isinstance(caption, str) else message):
        processor(text=["a cat", caption])
    collator = AlignmentCollator(processor, preset="pretrain", text_column="caption")
    with pytest.raises(error, match=rf"{message}.*caption of batch row 0 \(image_id=0\)"):
        collator([dict(row, caption=caption)])


def test_over_long_captions_are_truncated_per_preset_or_refused_by_the_model(setup, model):
    _, processor, config = setup
    caption = " ".join(["red circle"] * 400)
    positions = config.text_config.max_position_embeddings
    for preset, settings in processor.text_presets.items():  # ALBEF family: cut to max_words words first (official)
        ids = processor(text=[caption], preset=preset)["input_ids"]
        assert ids.shape[1] <= positions, preset
        if settings.get("truncation"):
            assert ids.shape[1] == min(settings.get("max_length", positions), processor.tokenizer.model_max_length)
    with pytest.raises(ValueError, match=rf"Text of {positions + 1} tokens is longer than the model's {positions} "):
        model.get_text_features(torch.ones(1, positions + 1, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------------------
# tensors given to the models
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch(setup, dataset):
    _, processor, _ = setup
    rows = [dataset["train"][i] for i in range(2)]
    return dict(processor(images=[r["image"] for r in rows], text=[r["captions"][0] for r in rows], preset="eval"))


def with_nan(pixel_values: torch.Tensor, value: float = float("nan")) -> torch.Tensor:
    pixel_values = pixel_values.clone()
    pixel_values[1, 2, 3, 4] = value
    return pixel_values


PIXEL_CASES = {
    "NaN": (lambda pv: with_nan(pv), NonFiniteInputError, "pixel_values is not finite: it contains NaN or infinite"),
    "inf": (lambda pv: with_nan(pv, float("-inf")), NonFiniteInputError, "pixel_values is not finite"),
    "[3, H, W]": (lambda pv: pv[0], ValueError, r"must be a 4-D tensor .* got shape \(3, 32, 32\)"),
    "[B, 1, H, W]": (
        lambda pv: pv[:, :1],
        ValueError,
        r"has 1 channels but the model expects 3 \(shape .*\). Convert images to RGB",
    ),
    "[B, H, W, 3]": (lambda pv: pv.permute(0, 2, 3, 1), ValueError, r"has 32 channels .*permute\(0, 3, 1, 2\)"),
    "other size": (lambda pv: torch.zeros(2, 3, 48, 48), ValueError, "Images are 48x48 but the model expects 32x32"),
    "uint8": (lambda pv: pv.to(torch.uint8), TypeError, "pixel_values has dtype torch.uint8"),
}


@pytest.mark.parametrize("case", sorted(PIXEL_CASES))
def test_models_refuse_bad_pixel_values_at_every_entry_point(setup, model, batch, case):
    method, _, config = setup
    corrupt, error, message = PIXEL_CASES[case]
    bad = corrupt(batch["pixel_values"])
    with pytest.raises(error, match=message):
        model(input_ids=batch["input_ids"], pixel_values=bad, attention_mask=batch["attention_mask"])
    with pytest.raises(error, match=message):
        model.get_image_features(bad)
    for training_class in method.training_classes():
        torch.manual_seed(0)
        trainer_model = training_class(config).train()
        with pytest.raises(error, match=message):
            trainer_model(pixel_values=bad, input_ids=batch["input_ids"][:1].expand(bad.shape[0], -1))


def test_non_finite_pixels_are_value_and_floating_point_errors():
    assert issubclass(NonFiniteInputError, ValueError) and issubclass(NonFiniteInputError, FloatingPointError)


def test_other_image_sizes_run_with_interpolation(model, batch):
    pixel_values = torch.nn.functional.interpolate(batch["pixel_values"], size=(48, 48))
    assert torch.isfinite(model.get_image_features(pixel_values, interpolate_pos_encoding=True).pooler_output).all()


def text_cases(vocab_size: int):
    def replace(value):
        def corrupt(ids):
            ids = ids.clone()
            ids[0, 1] = value
            return ids

        return corrupt

    return {
        "id >= vocab": (replace(vocab_size), None, ValueError, rf"token ids in \[0, {vocab_size}\] .* ids 0\.\."),
        "negative id": (replace(-1), None, ValueError, r"token ids in \[-1, \d+\] .*own tokenizer"),
        "float ids": (lambda ids: ids.float(), None, TypeError, "input_ids has dtype torch.float32"),
        "1-D ids": (lambda ids: ids[0], None, ValueError, r"must be a 2-D tensor \[batch, tokens\]"),
        "mask length": (None, lambda mask: mask[:, :-1], ValueError, r"attention_mask has shape \(2, \d+\) but"),
        "mask batch": (None, lambda mask: mask[:1], ValueError, r"attention_mask has shape \(1, \d+\) but"),
    }


@pytest.mark.parametrize("case", ["id >= vocab", "negative id", "float ids", "1-D ids", "mask length", "mask batch"])
def test_models_refuse_bad_text_inputs(setup, model, batch, case):
    method, _, config = setup
    corrupt_ids, corrupt_mask, error, message = text_cases(config.text_config.vocab_size)[case]
    input_ids = corrupt_ids(batch["input_ids"]) if corrupt_ids else batch["input_ids"]
    mask = corrupt_mask(batch["attention_mask"]) if corrupt_mask else batch["attention_mask"]
    with pytest.raises(error, match=message):
        model(input_ids=input_ids, pixel_values=batch["pixel_values"], attention_mask=mask)
    with pytest.raises(error, match=message):
        model.get_text_features(input_ids, mask)
    torch.manual_seed(0)
    with pytest.raises(error, match=message):
        method.pretraining_class(config).train()(
            pixel_values=batch["pixel_values"], input_ids=input_ids, attention_mask=mask
        )


def test_mismatched_batches(setup, model, batch):
    method, _, config = setup
    outputs = model(input_ids=batch["input_ids"][:1], pixel_values=batch["pixel_values"])
    assert outputs.logits_per_image.shape == (2, 1)  # by design: every image scored against every text (CLIP-style)
    for training_class in method.training_classes():
        with pytest.raises(ValueError, match=r"Got 2 images and 1 (texts|captions)"):
            training_class(config).train()(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"][:1])


# ---------------------------------------------------------------------------------------------------------------------
# batch of one, duplicate images
# ---------------------------------------------------------------------------------------------------------------------


def test_batch_of_one_trains_and_evaluates(setup, dataset):
    method, processor, config = setup
    extra = method.pretraining_collator_kwargs(config, processor, dataset["train"])
    one = AlignmentCollator(processor, preset="pretrain", text_column="captions", **extra)([dataset["train"][0]])
    torch.manual_seed(0)
    pretraining = method.pretraining_class(config).train()
    loss = pretraining(**one).loss
    loss.backward()
    assert torch.isfinite(loss)
    if (
        method.retrieval_class is not None
    ):  # ITM: a batch of one has no hard negative; only the positive pair is scored
        retrieval = method.retrieval_class(config).train()
        outputs = retrieval(
            pixel_values=one["pixel_values"],
            input_ids=one["input_ids"],
            attention_mask=one["attention_mask"],
            idx=torch.tensor([0]),
        )
        assert torch.isfinite(outputs.loss)
    model = method.model_class(config).eval()
    metrics = evaluate_retrieval(model, processor, dataset["test"].select([0]), k_test=2, show_progress=False)
    assert metrics["img_r1"] == 100.0  # one image: every caption retrieves it


@pytest.mark.parametrize("method_name", [name for name in METHODS if get_method(name).retrieval_class is not None])
def test_duplicate_images_are_never_their_own_hard_negatives(method_name, dataset):
    """(Methods with ITM hard negatives; a dual encoder has none.)"""
    method = get_method(method_name)
    processor = method.build_processor(method.build_tokenizer(dataset_captions(dataset)), IMAGE_SIZE)
    config = method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides)
    rows = [dataset["train"][i] for i in range(2)]
    batch = processor(images=[r["image"] for r in rows], text=[r["captions"][0] for r in rows], preset="eval")
    retrieval = method.retrieval_class(config).train()
    pixel_values = batch["pixel_values"][:1].expand(4, -1, -1, -1)
    input_ids, mask = batch["input_ids"][:1].expand(4, -1), batch["attention_mask"][:1].expand(4, -1)
    outputs = retrieval(pixel_values=pixel_values, input_ids=input_ids, attention_mask=mask, idx=torch.zeros(4).long())
    assert torch.isfinite(outputs.loss)  # all four share one image: no negative exists, none is drawn


def test_pipeline_scales_16_bit_images_and_refuses_float_ones(tmp_path, setup, model):
    method, processor, _ = setup
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    register_pipelines()
    retriever = pipeline(TASK, model=str(folder))
    path = tmp_path / "ramp.png"
    sixteen_bit().save(path)
    reference = retriever(eight_bit_of(sixteen_bit()), candidate_texts=["a red circle", "a blue square"])
    for image in (sixteen_bit(), str(path)):
        assert retriever(image, candidate_texts=["a red circle", "a blue square"]) == reference
    with pytest.raises(ValueError, match=r"queries\[0\] could not be loaded as an image.*mode 'F'"):
        retriever(REFUSED_MODES["F"](), candidate_texts=["a red circle"])
    nan = np.full((40, 40, 3), np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN or infinite"):
        retriever(nan, candidate_texts=["a red circle"])
