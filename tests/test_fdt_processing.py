"""FDT tokenizer, image processor and processor: parity with the official preprocessing, save/load round trips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import FIXTURES
from safetensors.torch import load_file
from torchvision import transforms as T
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

import vlalign  # noqa: F401  (registers the Auto classes)
from vlalign.models import tokenization_fdt
from vlalign.models.configuration_fdt import FdtConfig
from vlalign.models.processing_fdt import TEXT_PRESETS, FdtImageProcessor, FdtProcessor
from vlalign.models.tokenization_fdt import FdtTokenizer

TOKENIZER_FIXTURES = FIXTURES / "fdt_tokenizer"
BPE_FILE = TOKENIZER_FIXTURES / "bpe_simple_vocab_16e6.txt.gz"
FDT_FIXTURES = FIXTURES / "fdt"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _register() -> None:
    """Make sure FDT is registered with the Auto classes (idempotent; vlalign's import normally does it)."""
    AutoImageProcessor.register(FdtConfig, image_processor_classes={"pil": FdtImageProcessor}, exist_ok=True)
    AutoTokenizer.register(FdtConfig, tokenizer_class=FdtTokenizer, exist_ok=True)
    AutoProcessor.register(FdtConfig, FdtProcessor, exist_ok=True)
    FdtImageProcessor.register_for_auto_class("AutoImageProcessor")
    FdtTokenizer.register_for_auto_class("AutoTokenizer")
    FdtProcessor.register_for_auto_class()


@pytest.fixture(scope="module")
def tokenizer() -> FdtTokenizer:
    return FdtTokenizer.from_bpe_file(str(BPE_FILE))


@pytest.fixture(scope="module")
def official() -> dict:
    return json.loads((TOKENIZER_FIXTURES / "official_ids.json").read_text())


def _images() -> list[PIL.Image.Image]:
    rng = np.random.default_rng(0)
    shapes = [
        (300, 417, "RGB"),
        (256, 256, "RGB"),
        (225, 999, "L"),
        (481, 333, "RGBA"),
        (100, 80, "P"),
        (259, 300, "RGB"),
    ]
    images = []
    for height, width, mode in shapes:
        channels = 4 if mode == "RGBA" else 3
        image = PIL.Image.fromarray(rng.integers(0, 256, (height, width, channels), dtype=np.uint8))
        images.append(image if mode == "RGBA" else image.convert(mode))
    return images


def _torchvision(image: PIL.Image.Image, resize: int = 256, crop: int = 224) -> torch.Tensor:
    transform = T.Compose(
        [
            T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR),
            T.CenterCrop(crop),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return transform(image.convert("RGB"))


# -- tokenizer ------------------------------------------------------------------------------------------------


def test_vocabulary_layout(tokenizer):
    assert len(tokenizer) == 49409
    assert tokenizer.convert_tokens_to_ids(["<|mask|>", "<|startoftext|>", "<|endoftext|>"]) == [49406, 49407, 49408]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (49407, 49408, 0)
    assert tokenizer.mask_token_id == 49406 and tokenizer.pad_token == "!"
    assert tokenizer.model_max_length == 77
    assert tokenizer.convert_ids_to_tokens([0, 256, 511, 512]) == ["!", "!</w>", "Ń</w>", "in"]


def test_fixture_captions_match_official_ids(tokenizer):
    captions = json.loads((FDT_FIXTURES / "inputs.json").read_text())["captions"]
    expected = load_file(FDT_FIXTURES / "inputs.safetensors")
    batch = tokenizer(captions, max_length=16, return_tensors="pt")
    torch.testing.assert_close(batch["input_ids"], expected["input_ids"], rtol=0, atol=0)
    torch.testing.assert_close(batch["attention_mask"], (expected["pad_mask"] == 0).long(), rtol=0, atol=0)
    torch.testing.assert_close(batch["attention_mask"].sum(-1), expected["token_lengths"], rtol=0, atol=0)
    # caption 4 has 22 ids untruncated: SOT, the first 14 BPE tokens, EOT
    full = tokenizer.encode(captions[3])
    assert len(full) == 22 and batch["input_ids"][3].tolist() == full[:15] + [49408]


@pytest.mark.parametrize("context_length", ["77", "16"])
def test_curated_captions_match_official_ids(tokenizer, official, context_length):
    reference = official["curated"][context_length]
    batch = tokenizer(reference["captions"], max_length=int(context_length))
    assert batch["input_ids"] == reference["input_ids"]
    assert [sum(mask) for mask in batch["attention_mask"]] == reference["lengths"]


def test_random_unicode_strings_match_official_ids(tokenizer, official):
    reference = official["random"]
    assert [tokenizer.encode(text) for text in reference["captions"]] == reference["input_ids"]


def test_default_call_pads_to_context_length(tokenizer):
    batch = tokenizer(["a dog", "a dog!! " * 60], return_tensors="pt")
    assert batch["input_ids"].shape == (2, 77)
    assert batch["input_ids"][0, :4].tolist() == [49407, 320, 1929, 49408] and batch["input_ids"][0, 4:].eq(0).all()
    assert batch["input_ids"][1, -1].item() == 49408 and batch["attention_mask"][1].all()
    # "!" in text is an ordinary BPE token, not the padding token
    assert tokenizer.tokenize("dog!!") == ["dog</w>", "!!</w>"]
    assert tokenizer.decode(tokenizer.encode("A PHOTO of a Dog!!"), skip_special_tokens=True) == "a photo of a dog !!"


def test_save_and_load(tokenizer, tmp_path):
    small = FdtTokenizer.from_bpe_file(str(BPE_FILE), context_length=16)
    small.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert "pad_token" not in config and config["model_max_length"] == 16
    _register()
    for loaded in (FdtTokenizer.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert type(loaded) is FdtTokenizer and loaded.model_max_length == 16 and len(loaded) == 49409
        text = ["Café crème at the Zürich station", "don’t <|mask|> stop!!"]
        assert loaded(text)["input_ids"] == small(text)["input_ids"]
        assert loaded.tokenize("dog!!") == ["dog</w>", "!!</w>"]


def test_closed_vocabulary_tokenizer(tmp_path):
    words = ["red", "green", "blue", "circle", "square", "triangle", "ed", "re", "small", "large", "a", "of"]
    tok = FdtTokenizer.from_words(words, context_length=12)
    vocab = tok.get_vocab()
    assert len(tok) == len(vocab) and len(tok) > 512 + 3
    assert [vocab["<|mask|>"], vocab["<|startoftext|>"], vocab["<|endoftext|>"]] == [
        len(tok) - 3,
        len(tok) - 2,
        len(tok) - 1,
    ]
    assert tok.pad_token_id == 0 and tok.bos_token_id == len(tok) - 2
    for word in words:  # every word (even ones that overlap others, "ed" / "red") is a single token
        assert tok.tokenize(word) == [word + "</w>"]
    batch = tok(["A RED circle  of green.", "blue"], return_tensors="pt")
    assert batch["input_ids"].shape == (2, 12)
    sot, eot = len(tok) - 2, len(tok) - 1
    assert batch["input_ids"][1].tolist() == [sot, vocab["blue</w>"], eot] + [0] * 9
    assert tok.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"]  # unseen words fall back to bytes
    # whole captions work too: they are split like the tokenizer splits text
    assert FdtTokenizer.from_words(["a red-ish circle"]).tokenize("red-ish") == ["red</w>", "-</w>", "ish</w>"]
    tok.save_pretrained(tmp_path)
    loaded = FdtTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == vocab and loaded.model_max_length == 12
    assert loaded(["A RED circle  of green."])["input_ids"] == tok(["A RED circle  of green."])["input_ids"]


def test_cleaning_without_ftfy(monkeypatch, tokenizer):
    monkeypatch.setattr(tokenization_fdt, "ftfy", None)
    texts = ["don\u2019t \u201cstop\u201d", "\ufb01sh \uff21\uff22\uff23", "Fish &amp;amp; chips\x07", "  Two   CATS "]
    expected = ['don\'t "stop"', "fish abc", "fish & chips", "two cats"]
    assert [tokenization_fdt.clean_text(text) for text in texts] == expected


# -- image processor ------------------------------------------------------------------------------------------


def test_image_processor_matches_torchvision():
    processor = FdtImageProcessor()
    for image in _images():
        expected = _torchvision(image)
        pixel_values = processor(image, return_tensors="pt")["pixel_values"]
        assert pixel_values.shape == (1, 3, 224, 224) and pixel_values.dtype == torch.float32
        assert (pixel_values[0] - expected).abs().max().item() <= 1e-6


def test_image_processor_sizes(tmp_path):
    image = _images()[0]
    small = FdtImageProcessor.from_image_size(64)
    assert small.size.shortest_edge == 73 and (small.crop_size.height, small.crop_size.width) == (64, 64)
    assert (small(image, return_tensors="pt")["pixel_values"][0] - _torchvision(image, 73, 64)).abs().max() <= 1e-6
    plain = FdtImageProcessor(size=64, crop_size=64)
    assert (plain(image, return_tensors="pt")["pixel_values"][0] - _torchvision(image, 64, 64)).abs().max() <= 1e-6
    small.save_pretrained(tmp_path)
    _register()
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is FdtImageProcessor and loaded.size.shortest_edge == 73


# -- processor ------------------------------------------------------------------------------------------------


@pytest.fixture
def processor() -> FdtProcessor:
    tok = FdtTokenizer.from_bpe_file(str(BPE_FILE), context_length=16)
    return FdtProcessor(image_processor=FdtImageProcessor.from_image_size(32), tokenizer=tok)


def test_processor_presets(processor):
    assert (
        set(FdtProcessor.text_presets) == {"pretrain", "train", "eval"} and FdtProcessor.text_presets is TEXT_PRESETS
    )
    images = _images()[:2]
    for preset in FdtProcessor.text_presets:
        batch = processor(images=images, text=["  A PHOTO of a Dog!! ", "x"], preset=preset, return_tensors="pt")
        assert set(batch) == {"input_ids", "attention_mask", "pixel_values"}
        assert batch["input_ids"].shape == (2, 16) and batch["pixel_values"].shape == (2, 3, 32, 32)
        assert batch["input_ids"][0, :8].tolist() == [49407, 320, 1125, 539, 320, 1929, 748, 49408]
    assert processor(text="a dog", max_length=8)["input_ids"].shape == (1, 8)  # keyword arguments override


def test_processor_errors(processor):
    with pytest.raises(ValueError, match="empty after cleaning"):
        processor(text=["a dog", "   "])
    with pytest.raises(TypeError, match="Text 1 is a int"):
        processor(text=["a dog", 3])
    with pytest.raises(ValueError, match="empty list"):
        processor(text=[])
    with pytest.raises(ValueError, match="Unknown preset"):
        processor(text="a dog", preset="finetune")
    with pytest.raises(ValueError, match="Pass images, text, or both"):
        processor()
    with pytest.raises(ValueError, match=r"shape \(5, 7, 7, 7, 7\)"):
        processor(images=np.zeros((5, 7, 7, 7, 7), dtype=np.uint8))
    with pytest.raises(ValueError, match="with C in"):
        processor(images=[np.zeros((10, 10, 7), dtype=np.uint8)])
    with pytest.raises(TypeError, match="pass PIL images"):
        processor(images=["photo.jpg"])


def test_processor_save_and_load(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    _register()
    for loaded in (FdtProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is FdtProcessor and type(loaded.tokenizer) is FdtTokenizer
        assert type(loaded.image_processor) is FdtImageProcessor and loaded.image_processor.crop_size.height == 32
        image, text = _images()[0], ["Two   cats, sleeping on a sofa."]
        expected, got = processor(images=image, text=text), loaded(images=image, text=text)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["vlalign"] = None  # make `import vlalign` fail in this process
    import json
    from transformers import AutoProcessor, AutoTokenizer

    folder, output_file = sys.argv[1:]
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    text = ["A PHOTO of a Dog!!", "Café crème at the Zürich station, don’t stop"]
    batch = processor(text=text, preset="eval", return_tensors=None)
    classes = [type(processor).__module__, type(processor).__name__, type(processor.tokenizer).__name__,
               type(processor.image_processor).__name__, type(tokenizer).__name__]
    json.dump({"classes": classes, "input_ids": batch["input_ids"], "direct": tokenizer(text)["input_ids"]},
              open(output_file, "w"))
    """
)


def test_trust_remote_code_without_vlalign(processor, tmp_path):
    folder = tmp_path / "folder"
    processor.save_pretrained(folder)
    assert {"processing_fdt.py", "tokenization_fdt.py"} <= set(os.listdir(folder))
    script = tmp_path / "load.py"
    script.write_text(REMOTE_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "out.json")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads((tmp_path / "out.json").read_text())
    module, *names = loaded["classes"]
    assert module.startswith("transformers_modules.")
    assert names == ["FdtProcessor", "FdtTokenizer", "FdtImageProcessor", "FdtTokenizer"]
    text = ["A PHOTO of a Dog!!", "Café crème at the Zürich station, don’t stop"]
    assert loaded["input_ids"] == loaded["direct"] == processor.tokenizer(text)["input_ids"]


# -- training / evaluation transforms ---------------------------------------------------------------------------


def test_train_and_eval_transforms():
    from vlalign.data.transforms_fdt import FdtGaussianBlur, fdt_eval_transform, fdt_train_transform

    image = _images()[0]
    for size in (224, 64):
        expected = FdtImageProcessor.from_image_size(size)(image, return_tensors="pt")["pixel_values"][0]
        assert (fdt_eval_transform(size)(image) - expected).abs().max() <= 1e-6
    transform = fdt_train_transform(64, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    first = transform(image)
    assert first.shape == (3, 64, 64) and first.dtype == torch.float32
    transform = fdt_train_transform(64, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    torch.testing.assert_close(transform(image), first, rtol=0, atol=0)  # seeded: reproducible
    gray = torch.randint(0, 256, (1, 40, 50), dtype=torch.uint8)
    assert fdt_train_transform(32)(gray).shape == (3, 32, 32)
    blur = FdtGaussianBlur(generator=torch.Generator().manual_seed(1))
    radii = [blur.sample_radius() for _ in range(200)]
    assert 0.1 <= min(radii) and max(radii) <= 2.0
    with pytest.raises(TypeError, match="fromarray"):
        fdt_train_transform(32)(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="positive int"):
        fdt_train_transform(0)
