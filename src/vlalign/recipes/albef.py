"""Ready-made tiny setups for the built-in synthetic dataset: a closed-vocabulary tokenizer, a small ALBEF config
that learns on a laptop CPU in minutes, and its processor. The same classes serve real-scale models; only sizes
differ."""

from __future__ import annotations

from collections.abc import Iterable

from ..models import AlbefConfig, AlbefImageProcessor, AlbefProcessor, AlbefTokenizer
from ..models.processing_albef import pre_caption

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_tokenizer(captions: Iterable[str], tokenizer_class: type[AlbefTokenizer] = AlbefTokenizer) -> AlbefTokenizer:
    """A word-level `AlbefTokenizer` (or subclass) over the (cleaned) words of `captions`, for closed-vocabulary data
    such as the synthetic dataset. Real data uses a pretrained vocabulary
    (`AlbefTokenizer.from_pretrained("bert-base-uncased")`)."""
    return tokenizer_class(vocab={token: index for index, token in enumerate([*SPECIAL_TOKENS, *_words(captions)])})


def extend_tokenizer(tokenizer: AlbefTokenizer, texts: Iterable[str]) -> AlbefTokenizer:
    """`tokenizer` (a closed-vocabulary one of `build_tokenizer`) with the words of `texts` it lacks appended to its
    vocabulary, every existing id unchanged, so a model trained with it keeps its embeddings and is resized for the
    new words (`model.resize_token_embeddings(len(new_tokenizer))`). E.g. the synthetic VQA set's questions and
    answers ("how", "many", "0"), which the captions a quick-start model was pretrained on never use."""
    vocab = tokenizer.get_vocab()
    new_words = [word for word in _words(texts) if word not in vocab]
    if not new_words:
        return tokenizer
    vocab = {**vocab, **{word: len(vocab) + index for index, word in enumerate(new_words)}}
    settings = {key: value for key, value in tokenizer.init_kwargs.items() if key not in ("vocab", "backend")}
    return type(tokenizer)(vocab=vocab, **settings)


def learn_words(model, processor, texts: Iterable[str]) -> int:
    """Give `processor` the `extend_tokenizer` of its tokenizer with the words of `texts` and resize `model`'s
    embeddings to match (new rows as transformers initialises them); returns how many words were added."""
    tokenizer = extend_tokenizer(processor.tokenizer, texts)
    added = len(tokenizer) - len(processor.tokenizer)
    if added:
        processor.tokenizer = tokenizer
        model.resize_token_embeddings(len(tokenizer))
    return added


def _words(texts: Iterable[str]) -> list[str]:
    """The distinct words of `texts` after the caption cleaning, sorted."""
    return sorted({word for text in texts for word in pre_caption(text).split()})


def dataset_captions(dataset_dict) -> list[str]:
    """Every caption of every split of an evaluation-layout `DatasetDict` (column `captions`)."""
    return [caption for split in dataset_dict.values() for captions in split["captions"] for caption in captions]


def tiny_albef_config(
    tokenizer: AlbefTokenizer,
    image_size: int = 64,
    width: int = 96,
    vision_layers: int = 4,
    text_layers: int = 3,
    fusion_layer: int = 2,
    num_heads: int | None = None,
    patch_size: int = 8,
    config_class: type[AlbefConfig] = AlbefConfig,
    **overrides,
) -> AlbefConfig:
    """A small ALBEF by default (ViT 96×4 at 64 px / patch 8, BERT 96×3 with fusion from layer 2, embed 64,
    queue 256): small enough to pretrain on 2 CPU cores in minutes, with every official objective. `width`, the
    layer counts and `num_heads` (default: 32-dim heads) shrink it further for tests; MLPs are 4× wide. Families built
    on ALBEF pass their `config_class` (and its extra fields as overrides).

    Choices that make a from-scratch run learn within a few hundred steps (quick-start R@1 text/image after 700
    steps at lr 1e-3, seed 0: 31.0/31.5 % with this config):

    * Text-side init std 0.1 instead of BERT's 0.02 (with 0.02: 3.0/2.0 %). A randomly initialised post-LayerNorm
      BERT returns almost the same [CLS] vector for every caption at std 0.02 (mean pairwise cosine 0.9999), so
      ITC and ITM, which read [CLS], get no signal until MLM has slowly reshaped the encoder; at 0.1 the captions
      are apart from step 0. Pretrained BERT, which real ALBEF starts from, has no such collapse.
    * 8-px patches: the synthetic captions name shapes and 3×3 grid positions that 16-px patches at 64 px blur
      (16-px patches, width 128, 4 text layers, std 0.1: 7.0/22.5 %).
    * Dropout off: on CPU it costs ~30% of a step (attention dropout also forces SDPA's slow path), and a run of a
      few hundred steps over a closed vocabulary does not need it. Real-scale configs keep BERT's 0.1.
    """
    heads = num_heads or max(1, width // 32)
    settings = dict(
        vision_config=dict(
            hidden_size=width,
            num_hidden_layers=vision_layers,
            num_attention_heads=heads,
            intermediate_size=4 * width,
            image_size=image_size,
            patch_size=patch_size,
        ),
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=width,
            num_hidden_layers=text_layers,
            fusion_layer=fusion_layer,
            num_attention_heads=heads,
            intermediate_size=4 * width,
            max_position_embeddings=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            initializer_range=0.1,
            pad_token_id=tokenizer.pad_token_id,
            cls_token_id=tokenizer.cls_token_id,
            mask_token_id=tokenizer.mask_token_id,
            sep_token_id=tokenizer.sep_token_id,
        ),
        embed_dim=64,
        queue_size=256,
        k_test=16,
    )
    settings.update(overrides)
    return config_class(**settings)


def albef_processor(
    tokenizer: AlbefTokenizer,
    image_size: int,
    processor_class: type[AlbefProcessor] = AlbefProcessor,
    image_processor_class: type[AlbefImageProcessor] = AlbefImageProcessor,
) -> AlbefProcessor:
    """An `AlbefProcessor` (or a family's subclass) at `image_size` with the official normalisation and caption
    cleaning."""
    image_processor = image_processor_class(size={"height": image_size, "width": image_size})
    return processor_class(image_processor=image_processor, tokenizer=tokenizer)


__all__ = ["albef_processor", "build_tokenizer", "dataset_captions", "tiny_albef_config"]
