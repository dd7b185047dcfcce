"""SIMLA's MIM inputs: block masks, image tokenizers (k-means patch codebook, DALL-E dVAE) and the collator's keys."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import FlavaImageCodebook, FlavaImageCodebookConfig

from vlalign.data.collator import AlignmentCollator
from vlalign.data.masked_image import (
    BlockMaskGenerator,
    DalleImageTokenizer,
    MaskedImageModelingInputs,
    PatchCodebookImageTokenizer,
    simla_codebook_view_transform,
)
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.recipes.albef import albef_processor, build_tokenizer, dataset_captions

IMAGE_SIZE = 32
GRID = 4


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic_dataset(num_train=48, num_validation=0, num_test=0, image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def images(synthetic):
    return synthetic["train"]["image"]


@pytest.fixture(scope="module")
def processor(synthetic):
    return albef_processor(build_tokenizer(dataset_captions(synthetic)), IMAGE_SIZE)


@pytest.fixture(scope="module")
def patch_tokenizer(images):
    return PatchCodebookImageTokenizer.fit(images, grid=GRID, vocab_size=32, seed=0, progress=False)


def _solid(rgb, size=IMAGE_SIZE):
    return Image.new("RGB", (size, size), rgb)


# ---------------------------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize("grid, expected_count, expected_min", [(16, 75, 16), (8, 19, 4), (4, 5, 1), (14, 57, 12)])
def test_block_mask_defaults_counts_and_determinism(grid, expected_count, expected_min):
    generator = BlockMaskGenerator(grid)
    assert (generator.num_masking_patches, generator.min_num_patches) == (expected_count, expected_min)
    state = random.getstate()
    masks = [generator(seed) for seed in range(30)]
    assert random.getstate() == state  # the global Python random state is untouched
    for seed, mask in enumerate(masks):
        assert mask.dtype == torch.bool and mask.shape == (grid * grid,)
        # at most the target; BEiT's algorithm may stop a few short when no further block fits
        assert expected_count - max(3, expected_count // 10) <= int(mask.sum()) <= expected_count
        assert torch.equal(mask, generator(seed))
    assert sum(int(m.sum()) == expected_count for m in masks) >= 10
    assert len({tuple(m.tolist()) for m in masks}) > 25  # different seeds, different masks


def test_block_mask_is_row_major_blocks():
    mask = BlockMaskGenerator(16, num_masking_patches=16, min_num_patches=16, max_num_patches=16, min_aspect=1.0)(3)
    grid = mask.reshape(16, 16)
    rows, cols = grid.nonzero(as_tuple=True)
    assert int(mask.sum()) == 16 and (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == 16


def test_block_mask_rejects_bad_settings():
    with pytest.raises(ValueError, match="grid"):
        BlockMaskGenerator(1)
    with pytest.raises(ValueError, match="num_masking_patches"):
        BlockMaskGenerator(4, num_masking_patches=16)
    with pytest.raises(ValueError, match="min_num_patches"):
        BlockMaskGenerator(4, num_masking_patches=3, min_num_patches=4)


# ---------------------------------------------------------------------------------------------------------- codebook
def test_patch_codebook_fit_is_deterministic(images, patch_tokenizer):
    again = PatchCodebookImageTokenizer.fit(images, grid=GRID, vocab_size=32, seed=0, progress=False)
    assert torch.equal(again.codebook, patch_tokenizer.codebook)
    other = PatchCodebookImageTokenizer.fit(images, grid=GRID, vocab_size=32, seed=1, progress=False)
    assert not torch.equal(other.codebook, patch_tokenizer.codebook)
    assert patch_tokenizer.codebook.shape == (32, 3 * 2 * 2)
    assert patch_tokenizer.vocab_size == 32 and patch_tokenizer.grid == GRID


def test_patch_codebook_codes(patch_tokenizer, images):
    views = torch.stack([patch_tokenizer.view(image) for image in images[:6]])
    assert views.shape == (6, 3, GRID * 2, GRID * 2) and 0 <= views.min() and views.max() <= 1
    codes = patch_tokenizer.get_codebook_indices(views)
    assert codes.shape == (6, GRID, GRID) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < 32
    # identical images and identical patches get identical codes; larger inputs are area-pooled first
    assert torch.equal(patch_tokenizer.get_codebook_indices(views[[2, 2]])[0], codes[2])
    big = torch.nn.functional.interpolate(views, scale_factor=4, mode="nearest")
    assert torch.equal(patch_tokenizer.get_codebook_indices(big), codes)
    solid = patch_tokenizer.get_codebook_indices(patch_tokenizer.view(_solid((250, 250, 250)))[None])
    assert (solid == solid[0, 0, 0]).all()


def test_distinct_solid_colours_get_distinct_codes():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 0, 0), (255, 255, 255)]
    train = [_solid(colour) for colour in colours for _ in range(3)]
    tokenizer = PatchCodebookImageTokenizer.fit(train, grid=GRID, vocab_size=8, seed=0, progress=False)
    codes = tokenizer.get_codebook_indices(torch.stack([tokenizer.view(_solid(c)) for c in colours]))
    per_colour = codes.reshape(len(colours), -1)
    assert (per_colour == per_colour[:, :1]).all()
    assert len(set(per_colour[:, 0].tolist())) == len(colours)


def test_patch_codebook_save_load_round_trip(tmp_path, patch_tokenizer, images):
    patch_tokenizer.save_pretrained(tmp_path / "codebook")
    assert (tmp_path / "codebook" / "model.safetensors").is_file()
    assert (tmp_path / "codebook" / "config.json").is_file()
    loaded = PatchCodebookImageTokenizer.from_pretrained(tmp_path / "codebook")
    assert (loaded.grid, loaded.vocab_size, loaded.patch_pixels) == (GRID, 32, 2)
    assert torch.equal(loaded.codebook, patch_tokenizer.codebook)
    views = torch.stack([loaded.view(image) for image in images[:4]])
    assert torch.equal(loaded.get_codebook_indices(views), patch_tokenizer.get_codebook_indices(views))


# ---------------------------------------------------------------------------------------------------------- dVAE
@pytest.fixture(scope="module")
def dalle_folder(tmp_path_factory):
    torch.manual_seed(0)
    config = FlavaImageCodebookConfig(hidden_size=8, num_blocks_per_group=1, vocab_size=16)
    folder = tmp_path_factory.mktemp("dvae")
    FlavaImageCodebook(config).save_pretrained(folder)
    return folder


def test_dalle_tokenizer_matches_argmax_of_logits(dalle_folder, images):
    tokenizer = DalleImageTokenizer.from_pretrained(dalle_folder, grid=GRID)
    assert (tokenizer.vocab_size, tokenizer.downsampling, tokenizer.image_size) == (16, 8, 8 * GRID)
    view = tokenizer.view(images[0].convert("L"))  # any mode; bicubic resize, ToTensor, map_pixels once
    assert view.shape == (3, 8 * GRID, 8 * GRID)
    assert 0.1 - 1e-6 <= view.min() and view.max() <= 0.9 + 1e-6
    gray = images[0].convert("L").convert("RGB").resize((8 * GRID, 8 * GRID), Image.Resampling.BICUBIC)
    gray = torch.from_numpy(np.asarray(gray).copy()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(view, 0.8 * gray + 0.1)

    views = torch.stack([tokenizer.view(image) for image in images[:3]])
    with torch.no_grad():
        logits = tokenizer.codebook(views)
    assert logits.shape == (3, 16, GRID, GRID)
    codes = tokenizer.get_codebook_indices(views)
    assert codes.dtype == torch.long and torch.equal(codes, logits.argmax(dim=1))


# ---------------------------------------------------------------------------------------------------------- inputs
def test_inputs_shapes_labels_and_determinism(patch_tokenizer, images):
    mim = MaskedImageModelingInputs(patch_tokenizer, grid=GRID)
    batch = mim(list(images[:5]), seeds=[0, 1, 2, 3, 4])
    mask, labels = batch["bool_masked_pos"], batch["mim_labels"]
    assert mask.dtype == torch.bool and mask.shape == (5, GRID * GRID)
    assert labels.dtype == torch.long and labels.shape == (5, GRID * GRID)
    assert ((labels == -100) == ~mask).all()
    codes = patch_tokenizer.get_codebook_indices(torch.stack([patch_tokenizer.view(i) for i in images[:5]]))
    assert torch.equal(labels[mask], codes.reshape(5, -1)[mask])
    again = mim(list(images[:5]), seeds=[0, 1, 2, 3, 4])
    assert all(torch.equal(batch[k], again[k]) for k in batch)


def test_inputs_errors(patch_tokenizer, dalle_folder, images):
    with pytest.raises(ValueError, match=r"token grid is 4 × 4 but the ViT's patch grid is 8 × 8"):
        MaskedImageModelingInputs(patch_tokenizer, grid=8)
    with pytest.raises(ValueError, match="token grid is 16"):
        MaskedImageModelingInputs(DalleImageTokenizer.from_pretrained(dalle_folder), grid=GRID)
    vision = SimpleNamespace(image_size=IMAGE_SIZE, patch_size=IMAGE_SIZE // GRID)
    config = SimpleNamespace(vision_config=vision, mim_vocab_size=8192)
    with pytest.raises(ValueError, match=r"mim_vocab_size=8192 .* vocab_size=32"):
        MaskedImageModelingInputs.for_config(config, patch_tokenizer)
    config.mim_vocab_size = 32
    mim = MaskedImageModelingInputs.for_config(config, patch_tokenizer)
    assert mim.grid == GRID
    with pytest.raises(TypeError, match="PIL image"):
        mim([torch.zeros(3, 8, 8)], seeds=[0])
    with pytest.raises(ValueError, match="one seed per image"):
        mim(list(images[:2]), seeds=[0])
    normalised = MaskedImageModelingInputs(
        patch_tokenizer, grid=GRID, view_transform=lambda image: -torch.ones(3, 8, 8)
    )
    with pytest.raises(ValueError, match=r"\[0, 1\] pixels"):
        normalised(list(images[:1]), seeds=[0])


# ---------------------------------------------------------------------------------------------------------- collator
def test_collator_adds_mim_inputs(processor, patch_tokenizer, synthetic):
    rows = [synthetic["train"][i] for i in range(6)]
    plain = AlignmentCollator(processor, text_column="captions")
    mim = MaskedImageModelingInputs(patch_tokenizer, grid=GRID)
    collator = AlignmentCollator(processor, text_column="captions", masked_image_modeling=mim)
    batch, reference = collator(rows), plain(rows)
    assert set(batch) == set(reference) | {"bool_masked_pos", "mim_labels"}
    for key in reference:
        assert torch.equal(batch[key], reference[key])
    mask, labels = batch["bool_masked_pos"], batch["mim_labels"]
    assert mask.dtype == torch.bool and mask.shape == (6, GRID * GRID)
    assert labels.dtype == torch.long and labels.shape == (6, GRID * GRID)
    assert ((labels == -100) == ~mask).all() and mask.any(dim=1).all()
    # a row's mask and labels do not depend on its batch companions or position; they change with the epoch
    alone = collator([rows[3]])
    mixed = collator([rows[5], rows[3], rows[0]])
    for key in ("bool_masked_pos", "mim_labels"):
        assert torch.equal(alone[key][0], batch[key][3]) and torch.equal(mixed[key][1], batch[key][3])
    collator.set_epoch(1)
    assert not torch.equal(collator(rows)["bool_masked_pos"], mask)


def test_collator_with_random_tokenizer_view(processor, patch_tokenizer, synthetic):
    rows = [synthetic["train"][i] for i in range(4)]
    mim = MaskedImageModelingInputs(patch_tokenizer, grid=GRID, view_transform=simla_codebook_view_transform(16))
    collator = AlignmentCollator(processor, text_column="captions", masked_image_modeling=mim)
    state = torch.get_rng_state()
    batch = collator(rows)
    assert torch.equal(torch.get_rng_state(), state)  # the global torch stream is untouched
    assert ((batch["mim_labels"] == -100) == ~batch["bool_masked_pos"]).all()
    again = collator([rows[2], rows[0]])
    assert torch.equal(again["mim_labels"][0], batch["mim_labels"][2])
    # with an explicit generator the seeds come from it: reproducible from the generator's seed
    seeded = [
        AlignmentCollator(
            processor, text_column="captions", masked_image_modeling=mim, generator=torch.Generator().manual_seed(7)
        )(rows)
        for _ in range(2)
    ]
    assert all(torch.equal(seeded[0][k], seeded[1][k]) for k in ("bool_masked_pos", "mim_labels"))
    with pytest.raises(TypeError, match="MaskedImageModelingInputs"):
        AlignmentCollator(processor, masked_image_modeling=patch_tokenizer)
