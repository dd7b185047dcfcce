"""ALBEF visual question answering (the official `model_vqa.py` + `VQA.py`): the question is fused with the image by the
ALBEF encoders, and an answer decoder (a BERT language model whose every layer cross-attends to the question states)
scores or generates the answer.

* [`AlbefAnswerDecoder`]: the decoder, built from ALBEF's text layers and MLM head; causal self-attention.
* [`QuestionAnsweringMixin`]: what every VQA model of the family shares given `encode_question` and the decoders: the
  official training loss (per-answer sums over tokens, weighted, divided by the number of questions, distilled from the
  momentum decoder), the official two-stage answer ranking and free generation through `GenerationMixin`.
* [`AlbefForQuestionAnswering`]: ViT + text/fusion encoders + decoder, and their momentum copies.

This file is shipped with saved models (remote code): it imports only torch, transformers and its sibling files.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutputWithCrossAttentions
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_albef import AlbefConfig, AlbefTextConfig
from .losses import check_loss_finite
from .modeling_albef_encoders import (
    REMOTE_CODE_AUTO_MAP,
    AlbefFusionModel,
    AlbefPreTrainedModel,
    AlbefTextModel,
    AlbefVisionModel,
)
from .modeling_albef_layers import (
    AlbefAttention,
    AlbefMLMHead,
    AlbefTextEmbeddings,
    AlbefTextLayer,
    padding_attention_mask,
    warn_if_attentions_unavailable,
)
from .modeling_albef_training import MomentumDistillationMixin, place_pretrained_weights, task_config
from .pipeline_vqa import REMOTE_PIPELINE as REMOTE_VQA_PIPELINE
from .pipeline_vqa import TASK as VQA_TASK
from .remote_code import task_auto_map
from .training_duties import TrainingDutiesMixin

#: answer tokens `generate` produces at most unless told otherwise
DEFAULT_MAX_ANSWER_TOKENS = 10

# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class AlbefQuestionAnsweringOutput(ModelOutput):
    """
    Output of [`AlbefForQuestionAnswering.forward`].

    Args:
        loss: Σ_answers weight · answer_loss / number of questions (the official batch loss); None without answers.
        answer_loss: `[answers]` each answer's loss: the sum over its target tokens (eos included) of
            (1-α)·cross-entropy + α·soft cross-entropy against the momentum decoder (not a mean).
        logits: `[answers, tokens, vocab]` decoder scores at every position (position t predicts token t+1).
        logits_m: `[answers, tokens - 1, vocab]` the momentum decoder's scores at positions 0..L-2 (when α > 0).
        question_states: `[questions, tokens, width]` the fused question tokens the decoder attends to.
        question_states_m: the momentum encoders' question states (when α > 0).
        image_embeds: `[questions, patches + 1, vision width]` the ViT tokens.
        vision_model_output, text_model_output, fusion_model_output, decoder_output: the towers' outputs, with
            attention maps and states when requested.
    """

    loss: torch.Tensor | None = None
    answer_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    logits_m: torch.Tensor | None = None
    question_states: torch.Tensor | None = None
    question_states_m: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    fusion_model_output: ModelOutput | None = None
    decoder_output: AlbefAnswerDecoderOutput | None = None


@dataclasses.dataclass
class AlbefAnswerDecoderOutput(CausalLMOutputWithCrossAttentions):
    """
    Output of [`AlbefAnswerDecoder`]: transformers' causal-LM output (`logits`, `hidden_states`, `attentions`,
    `cross_attentions`) with the last layer's states.

    Args:
        last_hidden_state: `[batch, tokens, hidden]` the answer tokens after the last layer (what the LM head reads).
    """

    last_hidden_state: torch.Tensor | None = None


@dataclasses.dataclass
class AnswerRankingOutput(ModelOutput):
    """
    Output of [`QuestionAnsweringMixin.rank_answers`]: the best `k` answers of a candidate list for each question.

    Args:
        answer_indices: `[questions, k]` indices into the answer list, best first.
        scores: `[questions, k]` softmax over the `k` candidates of their answer log-likelihoods, descending.
        log_likelihoods: `[questions, k]` the re-ranking scores before the softmax, in first-stage order.
        candidate_indices: `[questions, k]` the first-stage candidates: the `k` answers whose first token is most
            probable after [CLS], most probable first.
        first_token_probs: `[questions, k]` their first-token probabilities.
        candidate_loss: `[questions * k]` each candidate's summed negative log-likelihood (question-major).
        question_states: `[questions, tokens, width]` the fused question tokens.
    """

    answer_indices: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    log_likelihoods: torch.Tensor | None = None
    candidate_indices: torch.Tensor | None = None
    first_token_probs: torch.Tensor | None = None
    candidate_loss: torch.Tensor | None = None
    question_states: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Answer decoder
# ---------------------------------------------------------------------------------------------------------------------


class AlbefAnswerDecoder(AlbefPreTrainedModel, GenerationMixin):
    """A BERT language model over answers (the official `BertLMHeadModel` with `fusion_layer=0`): embeddings, layers
    with causal self-attention and cross-attention to the question states, and the MLM head tied to its own word
    embeddings. Built from the config's `answer_decoder_config()`."""

    config_class = AlbefTextConfig
    input_modalities = ("text",)
    main_input_name = "input_ids"
    base_model_prefix = "text_decoder"
    _can_record_outputs = {
        "hidden_states": [
            OutputRecorder(AlbefTextEmbeddings, capture_initial_hidden_state=False),
            OutputRecorder(AlbefTextLayer, capture_initial_hidden_state=False),
        ],
        "attentions": OutputRecorder(AlbefAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(AlbefAttention, index=1, layer_name="cross_attn"),
    }

    def __init__(self, config: AlbefTextConfig):
        super().__init__(config)
        self.embeddings = AlbefTextEmbeddings(config)
        self.layers = nn.ModuleList(
            [AlbefTextLayer(config, has_cross_attention=True) for _ in range(config.num_hidden_layers)]
        )
        self.lm_head = AlbefMLMHead(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def get_output_embeddings(self) -> None:
        """None: the LM head scores with the word embeddings themselves (tied by construction, no weight of its own),
        so resizing the input embeddings resizes the output side too (its bias by `resize_token_embeddings`)."""
        return None

    @capture_outputs
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> AlbefAnswerDecoderOutput:
        r"""
        Args:
            input_ids: `[batch, tokens]` answers, "[CLS] answer [SEP]"; attention_mask: their padding mask.
            encoder_hidden_states: `[batch, question tokens, width]` the question states each answer attends to;
                encoder_attention_mask: their padding mask.
            output_attentions, output_hidden_states: also return each layer's self- and cross-attention maps (eager
                attention) / states.
        """
        warn_if_attentions_unavailable(self.config, output_attentions)
        if encoder_hidden_states is None:
            raise ValueError("The answer decoder attends to the question: pass encoder_hidden_states.")
        hidden_states = self.embeddings(input_ids)
        mask = create_causal_mask(self.config, hidden_states, attention_mask, None, allow_is_causal_skip=False)
        question_mask = padding_attention_mask(
            self.config, hidden_states, encoder_attention_mask, encoder_hidden_states
        )
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask, encoder_hidden_states, question_mask)
        logits = self.lm_head(hidden_states, self.embeddings.word_embeddings.weight)
        return AlbefAnswerDecoderOutput(logits=logits, last_hidden_state=hidden_states)

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, attention_mask=None, **model_kwargs) -> dict:
        """The whole answer so far at every step (the decoder keeps no cache: answers are a few tokens), with the
        question states generation passes along."""
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "encoder_hidden_states": model_kwargs["encoder_hidden_states"],
            "encoder_attention_mask": model_kwargs.get("encoder_attention_mask"),
        }


# ---------------------------------------------------------------------------------------------------------------------
# What every VQA model of the family shares
# ---------------------------------------------------------------------------------------------------------------------


def answer_targets(answer_input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Next-token targets of answers: token t+1 at position t, padding ignored (-100); `[answers, tokens - 1]`."""
    return answer_input_ids[:, 1:].masked_fill(answer_input_ids[:, 1:] == pad_token_id, -100)


def summed_answer_loss(
    logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor | None = None, alpha: float = 0.0
) -> torch.Tensor:
    """Each answer's loss, summed over its target tokens as the official decoder does (`reduction='none'` then a
    sum, not a mean): (1-α)·cross-entropy + α·soft cross-entropy against softmax(`teacher_logits`).

    Args:
        logits: `[answers, tokens - 1, vocab]` scores at the positions that predict `targets`.
        targets: `[answers, tokens - 1]` next tokens, -100 where nothing is predicted (padding).
        teacher_logits: the momentum decoder's scores at the same positions (needed when α > 0).
        alpha: distillation weight.
    """
    token_loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    loss = token_loss.view_as(targets).sum(1)
    if alpha > 0:
        soft = F.softmax(teacher_logits.float(), dim=-1)
        distill = -(F.log_softmax(logits.float(), dim=-1) * soft).sum(-1)
        loss = (1 - alpha) * loss + alpha * (distill * (targets != -100)).sum(1)
    return loss


class QuestionAnsweringMixin:
    """VQA given a question encoder and an answer decoder: the official training loss (`forward`), answer-list
    ranking (`rank_answers`) and free generation (`generate`).

    A model provides `encode_question(pixel_values, input_ids, attention_mask, momentum=False, output_flags=...)`
    returning (question states, encoder outputs dict), and the decoders `text_decoder` / `text_decoder_m` (the
    momentum copy, present when `config.distill`). The momentum copies take their EMA step as a training duty after
    each optimizer step (`after_optimizer_step`). The official forward updates them at its start, before its momentum
    pass; that is the same sequence of weights only from the second update on, so the first training forward of a run
    also takes one EMA step before its first momentum pass (`prime_momentum`): the momentum copies of a pretraining
    checkpoint differ from its online weights, and the official teacher of step 0 is already one EMA step from them.

    A model lists it first and transformers' `GenerationMixin` last among its bases (after the `PreTrainedModel`, as
    transformers requires), so that `generate` is this class's.
    """

    main_input_name = "pixel_values"
    #: saved folders name the VQA pipeline (shipped beside the code) for `trust_remote_code=True`
    remote_code_pipelines = {VQA_TASK: REMOTE_VQA_PIPELINE}
    # the loss is a sum over answers' tokens divided by questions, so Trainer must not rescale it itself
    accepts_loss_kwargs = False

    # -- hooks the model provides --------------------------------------------------------------------------------

    def encode_question(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        momentum: bool = False,
        output_flags: dict[str, bool] | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> tuple[torch.Tensor, dict[str, ModelOutput]]:
        """(question states `[questions, tokens, width]` the decoder attends to, the towers' outputs as
        `AlbefQuestionAnsweringOutput` fields); `momentum=True` encodes with the momentum copies."""
        raise NotImplementedError(f"{type(self).__name__} must implement encode_question.")

    @staticmethod
    def decoder_key_from_pretraining(key: str, num_layers: int, first_layer: int = 0) -> str | None:
        """The answer-decoder weight a pretraining model's weight `key` initialises (official VQA.py), or None: text
        embeddings → decoder embeddings, fusion layer `first_layer + i` (i < `num_layers`) → decoder layer i, MLM
        head → LM head; momentum copies alike. A family whose decoder starts from other layers overrides it."""
        match = re.match(r"^(text_model|fusion_model|mlm_head)(_m)?\.(.+)$", key)
        if match is None:
            return None
        module, momentum, rest = match.group(1), match.group(2) or "", match.group(3)
        if module == "mlm_head":
            return f"text_decoder{momentum}.lm_head.{rest}"
        if module == "text_model":
            return f"text_decoder{momentum}.{rest}" if rest.startswith("embeddings.") else None
        layer = re.match(r"^layers\.(\d+)\.(.+)$", rest)
        if layer is None or not 0 <= int(layer.group(1)) - first_layer < num_layers:
            return None
        return f"text_decoder{momentum}.layers.{int(layer.group(1)) - first_layer}.{layer.group(2)}"

    # -- initialisation from a pretrained model ------------------------------------------------------------------

    @classmethod
    @torch.no_grad()
    def from_pretraining(cls, model: nn.Module, **config_overrides):
        """A VQA model initialised from a vlalign model of the family (a pretraining or retrieval model, or its online
        model) as the official VQA script initialises one from a pretraining checkpoint: the encoders (and their
        momentum copies) are the model's; the answer decoder's layer i is BERT layer
        `config.answer_decoder_first_layer() + i` (ALBEF: fusion layer i; SIMLA: the second half of its stack), the
        decoder's embeddings are its text embeddings and the LM head its MLM head. Without an MLM head (an `<M>Model`)
        the LM head's transform keeps its fresh initialisation (its output layer is tied to the embeddings); without
        momentum encoders the copies start equal to the online ones, as the official model builds them.
        `config_overrides` (e.g. `k_test`, `alpha`) change the copied config; sizes must stay the model's. For
        official checkpoints: `vlalign convert --task vqa`."""
        config = task_config(model, config_overrides)
        vqa = cls(config)
        num_layers = config.answer_decoder_config().num_hidden_layers
        text = config.text_config
        first = config.answer_decoder_first_layer()
        if first < text.fusion_layer or first + num_layers > text.num_hidden_layers:
            raise ValueError(
                f"The answer decoder's {num_layers} layers would start from pretrained layers {first} to "
                f"{first + num_layers - 1}, but only layers {text.fusion_layer} to {text.num_hidden_layers - 1} "
                "cross-attend to the image: set num_decoder_layers to at most the number of fusion layers."
            )
        momentum = place_pretrained_weights(
            vqa,
            model,
            "VQA",
            r"^text_decoder(_m)?\.lm_head\.",
            lambda key: (key, cls.decoder_key_from_pretraining(key, num_layers, first - text.fusion_layer)),
        )
        if momentum:
            vqa.copy_params_to_momentum()
        vqa.apply_freezing()
        return vqa.train()

    @classmethod
    def _check_folder_model(cls, path: str, folder_config: dict[str, Any], kwargs: dict[str, Any]) -> None:
        """Also refuse a folder of the family that holds no VQA model (a pretraining or retrieval model): loading it
        would leave the answer decoder at random; `from_pretraining` initialises one from such a model instead."""
        super()._check_folder_model(path, folder_config, kwargs)
        architectures = folder_config.get("architectures") or []
        if architectures and not any(name.endswith("ForQuestionAnswering") for name in architectures):
            raise ValueError(
                f"{path} holds {architectures[0]}, not a VQA model: {cls.__name__}.from_pretrained would leave its "
                f"answer decoder untrained. Initialise one from it with "
                f"{cls.__name__}.from_pretraining({architectures[0]}.from_pretrained(...)), or convert an official "
                "checkpoint with `vlalign convert --task vqa`."
            )

    # -- shared machinery ----------------------------------------------------------------------------------------

    @property
    def answer_start_token_id(self) -> int:
        """The token every answer starts with and generation starts from ([CLS])."""
        return self.config.text_config.cls_token_id

    @property
    def answer_end_token_id(self) -> int:
        """The token that ends an answer ([SEP], appended to every answer by the processor's `vqa_answer` preset)."""
        return self.config.text_config.sep_token_id

    def decode_answers(
        self,
        answer_input_ids: torch.Tensor,
        answer_attention_mask: torch.Tensor | None,
        question_states: torch.Tensor,
        question_attention_mask: torch.Tensor | None,
        momentum: bool = False,
        output_flags: dict[str, bool] | None = None,
    ) -> AlbefAnswerDecoderOutput:
        """The (momentum) decoder's output for answers, each attending to its row of `question_states`."""
        decoder = self.text_decoder_m if momentum else self.text_decoder
        return decoder(
            answer_input_ids,
            answer_attention_mask,
            encoder_hidden_states=question_states,
            encoder_attention_mask=question_attention_mask,
            **(output_flags or {}),
        )

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        answer_input_ids: torch.Tensor | None = None,
        answer_attention_mask: torch.Tensor | None = None,
        answer_weights: torch.Tensor | None = None,
        answers_per_question: torch.Tensor | None = None,
        alpha: float | None = None,
        token_type_ids: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> AlbefQuestionAnsweringOutput:
        r"""
        The official VQA training step: every answer of a question is decoded against that question's states, and
        loss = Σ weight · answer_loss / questions. Without answers, only the question states are computed.

        Args:
            pixel_values: `[questions, 3, H, W]` one image per question.
            input_ids, attention_mask: `[questions, tokens]` questions (processor preset `"vqa_question"`).
            answer_input_ids, answer_attention_mask: `[answers, tokens]` the answers of all questions, grouped per
                question in question order (preset `"vqa_answer"`: "[CLS] answer [SEP]").
            answer_weights: `[answers]` each answer's weight (VQA: its share of the human answers); default 1.
            answers_per_question: `[questions]` how many answer rows each question has; default 1 each.
            alpha: distillation weight; by default the official warm-up at the trainer's step, else `config.alpha`
                (0 when `config.distill` is off).
            token_type_ids: accepted (tokenizers return them) and ignored: ALBEF uses segment 0 throughout.
            interpolate_pos_encoding: run the ViT at another square size.
            output_attentions, output_hidden_states: the towers' attention maps / states in the `*_output` fields.
        """
        flags = self._output_flags(output_attentions, output_hidden_states)
        self.check_training_duties()
        question_states, towers = self.encode_question(
            pixel_values, input_ids, attention_mask, output_flags=flags,
            interpolate_pos_encoding=interpolate_pos_encoding,
        )  # fmt: skip
        if answer_input_ids is None:
            return AlbefQuestionAnsweringOutput(question_states=question_states, **towers)
        answers_per_question, answer_weights = self._check_answers(
            input_ids, answer_input_ids, answers_per_question, answer_weights
        )
        if self.config.distill:  # the official forward's EMA step before its first momentum pass
            self.prime_momentum()
        alpha = self._distillation_weight(alpha)
        question_mask = (
            attention_mask.repeat_interleave(answers_per_question, 0) if attention_mask is not None else None
        )
        decoded = self.decode_answers(
            answer_input_ids,
            answer_attention_mask,
            question_states.repeat_interleave(answers_per_question, 0),
            question_mask,
            output_flags=flags,
        )
        targets = answer_targets(answer_input_ids, self.config.text_config.pad_token_id)
        logits_m = question_states_m = None
        if alpha > 0:
            with torch.no_grad():
                question_states_m, _ = self.encode_question(
                    pixel_values, input_ids, attention_mask, momentum=True,
                    interpolate_pos_encoding=interpolate_pos_encoding,
                )  # fmt: skip
                logits_m = self.decode_answers(
                    answer_input_ids,
                    answer_attention_mask,
                    question_states_m.repeat_interleave(answers_per_question, 0),
                    question_mask,
                    momentum=True,
                ).logits[:, :-1]
        answer_loss = summed_answer_loss(decoded.logits[:, :-1], targets, logits_m, alpha)
        loss = (answer_weights * answer_loss).sum() / pixel_values.shape[0]
        check_loss_finite({"loss": loss})
        return AlbefQuestionAnsweringOutput(
            loss=loss,
            answer_loss=answer_loss,
            logits=decoded.logits,
            logits_m=logits_m,
            question_states=question_states,
            question_states_m=question_states_m,
            decoder_output=decoded,
            **towers,
        )

    @staticmethod
    def _check_answers(
        input_ids: torch.Tensor,
        answer_input_ids: torch.Tensor,
        answers_per_question: torch.Tensor | None,
        answer_weights: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(answers per question, answer weights) with their defaults, checked against the batch."""
        num_questions, num_answers = input_ids.shape[0], answer_input_ids.shape[0]
        if answers_per_question is None:
            answers_per_question = torch.ones(num_questions, dtype=torch.long, device=input_ids.device)
        answers_per_question = torch.as_tensor(answers_per_question, device=input_ids.device).long().view(-1)
        if answers_per_question.shape[0] != num_questions or int(answers_per_question.sum()) != num_answers:
            raise ValueError(
                f"answers_per_question {answers_per_question.tolist()} must give one count per question "
                f"({num_questions}) summing to the number of answer rows ({num_answers}): the answers of all "
                "questions, grouped per question in question order."
            )
        if answer_weights is None:
            answer_weights = torch.ones(num_answers, device=input_ids.device)
        if answer_weights.shape != (num_answers,):
            raise ValueError(
                f"answer_weights has shape {tuple(answer_weights.shape)}; pass one weight per answer row: "
                f"({num_answers},)."
            )
        return answers_per_question, answer_weights

    @torch.no_grad()
    def rank_answers(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        answer_input_ids: torch.Tensor,
        answer_attention_mask: torch.Tensor,
        k: int | None = None,
        double_count_first_token: bool = True,
        interpolate_pos_encoding: bool = False,
    ) -> AnswerRankingOutput:
        r"""
        The best `k` answers of a candidate list for each question, with scores (the official `rank_answer`): the `k`
        answers whose first token is most probable after [CLS] are kept, then re-ranked by their log-likelihood, and
        the scores are the softmax over those `k`.

        Args:
            pixel_values, input_ids, attention_mask: the questions (processor preset `"vqa_test_question"`).
            answer_input_ids, answer_attention_mask: `[answers, tokens]` the candidate list (preset `"vqa_answer"`).
            k: candidates kept per question (default `config.k_test`; at most the list's length).
            double_count_first_token: the official score, log P(first token) + log P(answer), which counts the first
                token twice (the answer likelihood already contains it); False scores log P(answer) alone.
            interpolate_pos_encoding: run the ViT at another square size.
        """
        num_answers = answer_input_ids.shape[0]
        if answer_input_ids.shape[1] < 2 or not bool((answer_input_ids[:, 0] == self.answer_start_token_id).all()):
            raise ValueError(
                "Every candidate answer must be tokenized as '[CLS] answer [SEP]' (processor preset 'vqa_answer'): "
                f"the first token must be the start token {self.answer_start_token_id} and an answer token must follow."
            )
        k = min(k or self.config.k_test, num_answers)
        question_states, _ = self.encode_question(
            pixel_values, input_ids, attention_mask, interpolate_pos_encoding=interpolate_pos_encoding
        )
        num_questions = question_states.shape[0]
        start_ids = answer_input_ids[:1, :1].expand(num_questions, 1)
        start_logits = self.decode_answers(start_ids, None, question_states, attention_mask).logits[:, 0]
        first_token_probs = F.softmax(start_logits.float(), dim=-1).index_select(1, answer_input_ids[:, 1])
        first_token_probs, candidate_indices = first_token_probs.topk(k, dim=1)

        candidates = candidate_indices.view(-1)
        candidate_ids = answer_input_ids[candidates]
        decoded = self.decode_answers(
            candidate_ids,
            answer_attention_mask[candidates],
            question_states.repeat_interleave(k, 0),
            attention_mask.repeat_interleave(k, 0) if attention_mask is not None else None,
        )
        targets = answer_targets(candidate_ids, self.config.text_config.pad_token_id)
        candidate_loss = summed_answer_loss(decoded.logits[:, :-1], targets)
        log_likelihoods = -candidate_loss.view(num_questions, k)
        if double_count_first_token:
            log_likelihoods = log_likelihoods + first_token_probs.log()
        scores, order = F.softmax(log_likelihoods, dim=-1).topk(k, dim=1)
        return AnswerRankingOutput(
            answer_indices=candidate_indices.gather(1, order),
            scores=scores,
            log_likelihoods=log_likelihoods,
            candidate_indices=candidate_indices,
            first_token_probs=first_token_probs,
            candidate_loss=candidate_loss,
            question_states=question_states,
        )

    @torch.no_grad()
    def answer_log_likelihood(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        answer_input_ids: torch.Tensor,
        answer_attention_mask: torch.Tensor,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """`[questions]` log P(answer | image, question) the decoder gives the answer of each question (one answer row
        per question, "[CLS] answer [SEP]"): the full-sequence likelihood, the corrected ranking score."""
        question_states, _ = self.encode_question(
            pixel_values, input_ids, attention_mask, interpolate_pos_encoding=interpolate_pos_encoding
        )
        decoded = self.decode_answers(answer_input_ids, answer_attention_mask, question_states, attention_mask)
        targets = answer_targets(answer_input_ids, self.config.text_config.pad_token_id)
        return -summed_answer_loss(decoded.logits[:, :-1], targets)

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **generate_kwargs,
    ) -> torch.Tensor:
        r"""
        Free-form answers: the question states are computed once, then the answer decoder generates from [CLS] until
        [SEP] through transformers' `GenerationMixin.generate` (greedy by default; `num_beams`, `max_new_tokens`
        (default 10), sampling... are passed on). Returns `[questions, tokens]` ids starting with [CLS]; decode them with
        `processor.batch_decode(ids, skip_special_tokens=True)`.

        Args:
            pixel_values, input_ids, attention_mask: the questions (processor preset `"vqa_test_question"`).
            interpolate_pos_encoding: run the ViT at another square size.
            generate_kwargs: arguments of `GenerationMixin.generate` (`token_type_ids` is accepted and ignored).
        """
        generate_kwargs.pop("token_type_ids", None)
        question_states, _ = self.encode_question(
            pixel_values, input_ids, attention_mask, interpolate_pos_encoding=interpolate_pos_encoding
        )
        start_ids = torch.full(
            (question_states.shape[0], 1), self.answer_start_token_id, dtype=torch.long, device=question_states.device
        )
        defaults = {
            "eos_token_id": self.answer_end_token_id,
            "pad_token_id": self.config.text_config.pad_token_id,
            "use_cache": False,
        }
        if "max_length" not in generate_kwargs:  # answers are short (BLIP and LAVIS stop VQA answers at 10 tokens)
            defaults["max_new_tokens"] = DEFAULT_MAX_ANSWER_TOKENS
        generate_kwargs = {**defaults, **generate_kwargs}
        if attention_mask is None:
            attention_mask = torch.ones(question_states.shape[:2], dtype=torch.long, device=question_states.device)
        return self.text_decoder.generate(
            input_ids=start_ids,
            encoder_hidden_states=question_states,
            encoder_attention_mask=attention_mask,
            **generate_kwargs,
        )

    # -- training duties ----------------------------------------------------------------------------------------

    def after_optimizer_step(self, step: int) -> None:
        """One EMA step of the momentum copies (none without `config.distill`)."""
        self.momentum_update()
        super().after_optimizer_step(step)

    def training_log_values(self) -> dict[str, float]:
        return {"alpha": getattr(self, "_last_alpha", 0.0)}

    def training_duties_description(self) -> str:
        return "momentum EMA"


# ---------------------------------------------------------------------------------------------------------------------
# ALBEF
# ---------------------------------------------------------------------------------------------------------------------


class AlbefForQuestionAnswering(
    QuestionAnsweringMixin, MomentumDistillationMixin, TrainingDutiesMixin, AlbefPreTrainedModel, GenerationMixin
):
    """ALBEF fine-tuned for VQA (the official `model_vqa.py`): the ViT, the text and fusion encoders fuse the question
    with its image; the answer decoder ([`AlbefAnswerDecoder`], `config.num_decoder_layers` layers) scores answers
    against the fused question tokens. With `config.distill`, momentum copies of the four modules supply the
    distillation targets (α) and take an EMA step after every optimizer step (a training duty).

    `vlalign convert --task vqa` initialises it from an official pretraining checkpoint as the official VQA script
    does (the decoder's layers from the pretrained fusion layers, its embeddings and LM head from the pretrained text
    embeddings and MLM head) or loads an official fine-tuned VQA checkpoint.
    """

    #: a saved VQA folder carries this file and its imports, not `modeling_albef.py`: its `auto_map` names only those
    remote_code_auto_map = task_auto_map(
        REMOTE_CODE_AUTO_MAP, "AutoModelForVisualQuestionAnswering", "modeling_albef_vqa.AlbefForQuestionAnswering"
    )

    def __init__(self, config: AlbefConfig):
        super().__init__(config)
        self.has_training_duties = config.distill
        self.vision_model = AlbefVisionModel._from_config(config.vision_config)
        self.text_model = AlbefTextModel._from_config(config.text_config)
        self.fusion_model = AlbefFusionModel._from_config(config.text_config)
        self.text_decoder = AlbefAnswerDecoder._from_config(config.answer_decoder_config())
        if config.distill:
            self.vision_model_m = AlbefVisionModel._from_config(config.vision_config)
            self.text_model_m = AlbefTextModel._from_config(config.text_config)
            self.fusion_model_m = AlbefFusionModel._from_config(config.text_config)
            self.text_decoder_m = AlbefAnswerDecoder._from_config(config.answer_decoder_config())
        self.post_init()
        self.apply_freezing()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_model.set_input_embeddings(value)

    def encode_question(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        momentum: bool = False,
        output_flags: dict[str, bool] | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> tuple[torch.Tensor, dict[str, ModelOutput]]:
        """The fused question tokens `[questions, tokens, width]` (all BERT layers, cross-attending to the image in
        the fusion layers) and the towers' outputs (`image_embeds`, `*_model_output`); `momentum=True` uses the
        momentum copies."""
        suffix = "_m" if momentum else ""
        vision_model, text_model, fusion_model = (
            getattr(self, name + suffix) for name in ("vision_model", "text_model", "fusion_model")
        )
        flags = output_flags or {}
        if input_ids.shape[0] != pixel_values.shape[0]:
            raise ValueError(
                f"Got {input_ids.shape[0]} questions but {pixel_values.shape[0]} images; pass one image per question."
            )
        vision_outputs = vision_model(pixel_values, interpolate_pos_encoding, **flags)
        text_outputs = text_model(input_ids, attention_mask, **flags)
        fusion_outputs = fusion_model(
            text_outputs.last_hidden_state, attention_mask, vision_outputs.last_hidden_state, **flags
        )
        towers = {
            "image_embeds": vision_outputs.last_hidden_state,
            "vision_model_output": vision_outputs,
            "text_model_output": text_outputs,
            "fusion_model_output": fusion_outputs,
        }
        return fusion_outputs.last_hidden_state, towers


__all__ = [
    "AlbefAnswerDecoder",
    "AlbefAnswerDecoderOutput",
    "AlbefForQuestionAnswering",
    "AlbefQuestionAnsweringOutput",
    "AnswerRankingOutput",
    "QuestionAnsweringMixin",
    "answer_targets",
    "summed_answer_loss",
]
