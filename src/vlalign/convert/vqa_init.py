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

from ..auto import family_of
from .task_init import load_task_model

logger = logging.getLogger(__name__)

__all__ = ["load_vqa_model", "vqa_model_from_pretrained"]


def vqa_model_from_pretrained(pretrained):
    """The family's `<Method>ForQuestionAnswering` initialised from `pretrained` (a `<Method>ForPreTraining`,
    `<Method>ForImageTextRetrieval` or `<Method>Model`): its `from_pretraining`, in training mode."""
    family = family_of(pretrained)
    if family.question_answering_class is None:
        raise ValueError(f"{family.model_type} has no visual question answering model.")
    if not hasattr(pretrained, "mlm_head"):
        logger.info(
            "%s has no MLM head: the answer decoder's LM-head transform starts fresh (its output layer is tied to "
            "the pretrained embeddings).",
            type(pretrained).__name__,
        )
    return family.question_answering_class.from_pretraining(pretrained)


def load_vqa_model(folder, config=None):
    """The `<Method>ForQuestionAnswering` of a saved vlalign folder (or Hub id): loaded as it is when it holds one
    (`vlalign convert --task vqa`, a fine-tuned VQA model), else started from the saved model
    (`vqa_model_from_pretrained`). `config`: the folder's config with changes (e.g. overrides), or None."""
    return load_task_model(
        folder, config, "question_answering_class", "visual question answering", vqa_model_from_pretrained, "VQA"
    )
