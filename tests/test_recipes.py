"""The tiny recipe: its shape, and the initialisation that lets ITC/ITM see the captions from step 0."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.models import AlbefModel
from vlalign.recipes import albef_processor, build_tokenizer, dataset_captions, tiny_albef_config


@pytest.fixture(scope="module")
def synthetic_batch():
    dataset = make_synthetic_dataset(num_train=32, num_validation=1, num_test=1, image_size=64, seed=0)
    processor = albef_processor(build_tokenizer(dataset_captions(dataset)), 64)
    captions = [captions[0] for captions in dataset["train"]["captions"]]
    return processor, processor.tokenizer(captions, padding="longest", return_tensors="pt")


def mean_pairwise_cosine(features: torch.Tensor) -> float:
    features = F.normalize(features, dim=-1)
    similarity = features @ features.t()
    n = len(features)
    return ((similarity.sum() - similarity.diagonal().sum()) / (n * (n - 1))).item()


def text_cls_features(config, text) -> torch.Tensor:
    torch.manual_seed(0)
    model = AlbefModel(config).eval()
    with torch.no_grad():
        return model.text_model(text["input_ids"], text["attention_mask"]).last_hidden_state[:, 0]


def test_recipe_shape(synthetic_batch):
    processor, _ = synthetic_batch
    config = tiny_albef_config(processor.tokenizer)
    vision, text = config.vision_config, config.text_config
    assert (vision.image_size, vision.patch_size, vision.hidden_size, vision.num_hidden_layers) == (64, 8, 96, 4)
    assert (text.hidden_size, text.num_hidden_layers, text.fusion_layer, text.vocab_size) == (
        96,
        3,
        2,
        len(processor.tokenizer),
    )
    assert text.hidden_dropout_prob == text.attention_probs_dropout_prob == 0.0
    assert text.initializer_range == 0.1


def test_text_init_separates_captions_at_step_zero(synthetic_batch):
    """With BERT's std 0.02 a random post-LN text encoder gives every caption nearly the same [CLS]; the recipe's
    std 0.1 does not, so the contrastive and matching losses have a signal from the first step."""
    processor, text = synthetic_batch
    recipe = tiny_albef_config(processor.tokenizer)
    bert_init = tiny_albef_config(processor.tokenizer)
    bert_init.text_config.initializer_range = 0.02
    assert mean_pairwise_cosine(text_cls_features(bert_init, text)) > 0.999
    assert mean_pairwise_cosine(text_cls_features(recipe, text)) < 0.95
