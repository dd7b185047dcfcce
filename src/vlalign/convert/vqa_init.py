"""A vlalign pretraining (or inference) model as the start of VQA fine-tuning, placed as `vlalign convert --task vqa`
places an official pretraining checkpoint ([`convert.albef_vqa`](albef_vqa.py), [`convert.simla_vqa`](simla_vqa.py)):
the encoders are kept, the answer decoder's layers start from the pretrained cross-attention layers (ALBEF and CODIS:
the first fusion layers; SIMLA, whose layers all cross-attend: the last `num_decoder_layers`), its embeddings from the
text embeddings and its LM head from the MLM head. Projections, ITM head, temperature, queues, codebooks and SIMLA's
MIM/keyword heads have no place in the VQA model and are left out.

What a saved inference model (`<Method>Model`, what `save_for_hub` publishes by default) lacks is filled as a new
model would be: the LM head's transform starts fresh (its output layer is tied to the embeddings), and the momentum
copies start equal to the online modules, as the official model builds them.
"""

from __future__ import annotations

import logging
import re

import torch

from ..auto import family_of

logger = logging.getLogger(__name__)

__all__ = ["first_decoder_layer", "load_vqa_model", "vqa_model_from_pretrained"]


def first_decoder_layer(config) -> int:
    """The pretrained BERT layer that the answer decoder's first layer starts from (decoder layer i from layer
    `first + i`), `config.answer_decoder_first_layer()`: ALBEF's (and CODIS's) first fusion layer; for SIMLA the
    first of the last `num_decoder_layers`. Checked to be a layer that cross-attends to the image."""
    text = config.text_config
    num_decoder_layers = config.answer_decoder_config().num_hidden_layers
    first = config.answer_decoder_first_layer()
    if first < text.fusion_layer or first + num_decoder_layers > text.num_hidden_layers:
        raise ValueError(
            f"The answer decoder's {num_decoder_layers} layers start from pretrained layers {first} to "
            f"{first + num_decoder_layers - 1}, but only layers {text.fusion_layer} to {text.num_hidden_layers - 1} "
            "cross-attend to the image: set num_decoder_layers to at most the number of fusion layers."
        )
    return first


def _decoder_key(key: str, first_fusion: int, num_decoder_layers: int) -> str | None:
    """The VQA model's decoder key that the pretraining model's `key` (its base-model prefix removed) initialises, or
    None. `first_fusion`: the index within `fusion_model.layers` of the decoder's first layer."""
    match = re.match(r"^(text_model|fusion_model|mlm_head)(_m)?\.(.+)$", key)
    if match is None:
        return None
    module, momentum, rest = match.group(1), match.group(2) or "", match.group(3)
    decoder = f"text_decoder{momentum}"
    if module == "mlm_head":
        return f"{decoder}.lm_head.{rest}"
    if module == "text_model":
        return f"{decoder}.{rest}" if rest.startswith("embeddings.") else None
    layer = re.match(r"^layers\.(\d+)\.(.+)$", rest)
    if layer is None or not 0 <= int(layer.group(1)) - first_fusion < num_decoder_layers:
        return None
    return f"{decoder}.layers.{int(layer.group(1)) - first_fusion}.{layer.group(2)}"


@torch.no_grad()
def vqa_model_from_pretrained(pretrained, config=None):
    """The family's `<Method>ForQuestionAnswering` initialised from `pretrained` (a `<Method>ForPreTraining`,
    `<Method>ForImageTextRetrieval` or `<Method>Model`), as described in the module docstring.

    Args:
        pretrained: the trained model.
        config: the VQA model's config (default: `pretrained`'s); its sizes must match the pretrained ones.

    Returns:
        the VQA model, in training mode.
    """
    family = family_of(pretrained)
    if family.question_answering_class is None:
        raise ValueError(f"{family.model_type} has no visual question answering model.")
    config = config if config is not None else type(pretrained.config).from_dict(pretrained.config.to_dict())
    model = family.question_answering_class(config)
    expected = model.state_dict()
    prefix = f"{pretrained.base_model_prefix}."
    source = {key.removeprefix(prefix): value for key, value in pretrained.state_dict().items()}
    text = config.text_config
    first_fusion = first_decoder_layer(config) - text.fusion_layer
    num_decoder_layers = config.answer_decoder_config().num_hidden_layers
    weights = {}
    for key, value in source.items():
        for target in (key, _decoder_key(key, first_fusion, num_decoder_layers)):
            if target in expected:
                if expected[target].shape != value.shape:
                    raise ValueError(
                        f"{key} has shape {tuple(value.shape)} but the VQA model's {target} {tuple(expected[target].shape)}: "
                        "pass the pretrained model's own config."
                    )
                weights[target] = value
    model.load_state_dict(weights, strict=False)
    missing = sorted(set(expected) - set(weights))
    fresh_head = [key for key in missing if re.match(r"^text_decoder(_m)?\.lm_head\.", key)]
    momentum = [key for key in missing if re.match(r"^[a-z_]+_m\.", key) and key not in fresh_head]
    if unexpected := sorted(set(missing) - set(fresh_head) - set(momentum)):
        raise ValueError(
            f"{type(pretrained).__name__} lacks {len(unexpected)} weights the VQA model needs (first: "
            f"{', '.join(unexpected[:5])}); pass a vlalign pretraining, retrieval or inference model."
        )
    if momentum:
        model.copy_params_to_momentum()
    if fresh_head:
        logger.info(
            "%s has no MLM head: the answer decoder's LM-head transform starts fresh (its output layer is tied to "
            "the pretrained embeddings).",
            type(pretrained).__name__,
        )
    return model.train()


def load_vqa_model(folder, config=None):
    """The `<Method>ForQuestionAnswering` of a saved vlalign folder (or Hub id): loaded as it is when it holds one
    (`vlalign convert --task vqa`, a fine-tuned VQA model), else started from the saved model
    (`vqa_model_from_pretrained`). `config`: the folder's config with changes (e.g. overrides), or None."""
    from transformers import AutoConfig

    config = config if config is not None else AutoConfig.from_pretrained(folder)
    family = family_of(config)
    saved = (config.architectures or [family.model_class.__name__])[0]
    candidates = (
        family.question_answering_class,
        family.pretraining_class,
        family.retrieval_class,
        family.model_class,
    )
    saved_class = next((c for c in candidates if c is not None and c.__name__ == saved), None)
    if saved_class is None:
        raise ValueError(f"{folder} holds a {saved}, none of {family.model_type}'s models; pass a vlalign folder.")
    model = saved_class.from_pretrained(folder, config=config)
    if saved_class is family.question_answering_class:
        return model
    logger.info("Starting the VQA model from the %s in %s", saved, folder)
    return vqa_model_from_pretrained(model)
