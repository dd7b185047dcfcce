"""CODIS (Duan et al., CVPR 2022): ALBEF plus a codebook of prototypes shared by image and text.

Everything ALBEF does (towers, momentum encoders, queues, ITC with distillation, ITM on hard negatives, MLM) is
inherited from `modeling_albef`; this file adds only the delta:

* `CodisCodebook`: K unit-norm prototypes in the ITC space, trained by gradient and re-normalised after every
  optimizer step (a training duty).
* Teacher-student alignment: ITC's image→text and text→image terms plus image→image and text→text terms against the
  momentum banks, averaged.
* Code alignment: the momentum (teacher) features of the global batch are assigned to the prototypes by optimal
  transport (log-domain Sinkhorn-Knopp in fp32, `sinkhorn.py`), and each student predicts the *other* modality's
  assignment (swapped prediction), or contrasts samples through their assignments.
* The OT loss: the transport cost between the student features and the prototypes.

No official code exists; every open choice is a `CodisConfig` field (see the model card for which are confirmed).
This file imports only torch, transformers and its sibling files, so saved checkpoints load with
`trust_remote_code=True`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_codis import CodisConfig
from .losses import (
    QueueContrastiveOutput,
    assignment_contrastive_loss,
    bank_contrastive_loss,
    distributed_rank_and_world,
    gather_without_grad,
    swapped_prediction_loss,
    transport_cost_loss,
)
from .modeling_albef import AlbefForImageTextRetrieval, AlbefForPreTraining, AlbefModel
from .modeling_albef_encoders import AlbefPreTrainedModel
from .modeling_albef_training import (
    AlbefForPreTrainingOutput,
    ContrastiveMatchingOutput,
    PairFeatures,
    legacy_albef_attribute,
)
from .modeling_albef_vqa import AlbefForQuestionAnswering
from .remote_code import task_auto_map
from .sinkhorn import transport_plans


class CodisCodebook(nn.Module):
    """The shared codebook: `prototypes` `[codebook_size, dim]`, one cluster centre per row, compared with
    L2-normalised features by cosine. Rows are kept unit-norm by `renormalize_` after every optimizer step; scores
    normalise them again (differentiably) so that gradients see the sphere."""

    def __init__(self, codebook_size: int, dim: int):
        super().__init__()
        self.prototypes = nn.Parameter(torch.empty(codebook_size, dim))

    def normalized(self) -> torch.Tensor:
        return F.normalize(self.prototypes, dim=-1)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine similarities `[samples, prototypes]` of L2-normalised `features` `[samples, dim]`, in float32 even
        under autocast: the transport and the prototype softmax need the precision."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            return features.float() @ self.normalized().float().t()

    @torch.no_grad()
    def renormalize_(self) -> None:
        self.prototypes.copy_(F.normalize(self.prototypes, dim=-1))


@dataclasses.dataclass
class CodisForPreTrainingOutput(AlbefForPreTrainingOutput):
    """
    Output of [`CodisForPreTraining`] and [`CodisForImageTextRetrieval`]: ALBEF's fields (`loss_itc` is ITC's
    image↔text mean, which the alignment loss contains) plus the CODIS terms.

    Args:
        loss_align: teacher-student alignment, the mean (or sum) of `loss_i2t`, `loss_t2i`, `loss_i2i`, `loss_t2t`.
        loss_i2t, loss_t2i, loss_i2i, loss_t2t: image/text student against the text/image momentum bank.
        loss_code: code alignment, `loss_t2p` + `loss_i2p` (halved with `code_loss_reduction="mean"`).
        loss_t2p: text student predicting the image teacher's assignment; loss_i2p: the reverse.
        loss_ot: transport cost between the student features and the prototypes.
        image_feat, text_feat: `[batch, embed_dim]` L2-normalised student features.
        code_logits_image, code_logits_text: `[batch, codebook_size]` student prototype scores / prototype temperature.
        transport_i2p, transport_t2p: `[batch, codebook_size]` the teacher transport plans (targets) of the batch.
    """

    loss_align: torch.Tensor | None = None
    loss_i2t: torch.Tensor | None = None
    loss_t2i: torch.Tensor | None = None
    loss_i2i: torch.Tensor | None = None
    loss_t2t: torch.Tensor | None = None
    loss_code: torch.Tensor | None = None
    loss_t2p: torch.Tensor | None = None
    loss_i2p: torch.Tensor | None = None
    loss_ot: torch.Tensor | None = None
    image_feat: torch.Tensor | None = None
    text_feat: torch.Tensor | None = None
    code_logits_image: torch.Tensor | None = None
    code_logits_text: torch.Tensor | None = None
    transport_i2p: torch.Tensor | None = None
    transport_t2p: torch.Tensor | None = None


#: Auto classes a saved CODIS folder answers to with `trust_remote_code=True`, whichever CODIS class saved it
REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_codis.CodisConfig",
    "AutoModel": "modeling_codis.CodisModel",
    "AutoModelForPreTraining": "modeling_codis.CodisForPreTraining",
    "AutoModelForZeroShotImageClassification": "modeling_codis.CodisModel",
}


class CodisPreTrainedModel(AlbefPreTrainedModel):
    """ALBEF's base with CODIS's config. The weight layout is ALBEF's plus `codebook.prototypes`, so an ALBEF
    checkpoint initialises a CODIS model (the codebook starts random)."""

    config_class = CodisConfig
    base_model_prefix = "codis"
    remote_code_auto_map = REMOTE_CODE_AUTO_MAP
    # The training models held their online model as `albef` before it was named after the family; the same
    # renaming loads ALBEF training folders into CODIS training models.
    legacy_key_mapping = {r"^albef\.": "codis."}
    # An ALBEF folder initialises a CODIS model: every weight but the codebook carries over (the codebook starts random).
    also_loads_model_types = ("albef",)
    #: parameter-name suffixes kept out of weight decay: re-normalised after every step, decay would only fight it
    no_weight_decay_suffixes = ("codebook.prototypes",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """ALBEF's initialisation; prototypes are random directions (Gaussian rows, normalised)."""
        super()._init_weights(module)
        if isinstance(module, CodisCodebook) and not getattr(module.prototypes, "_is_hf_initialized", False):
            module.prototypes.copy_(F.normalize(torch.randn_like(module.prototypes), dim=-1))


class CodisModel(AlbefModel, CodisPreTrainedModel):
    """ALBEF's online encoders and heads (see [`AlbefModel`]) plus the codebook. Retrieval ranks with ITC and
    re-ranks with ITM exactly as ALBEF; `code_probabilities` gives the prototype assignments of embeddings."""

    config_class = CodisConfig  # transformers would infer AlbefConfig from the inherited classes' `__init__`
    _keys_to_ignore_on_load_unexpected = [*AlbefModel._keys_to_ignore_on_load_unexpected, r"^codebook_m\."]

    def __init__(self, config: CodisConfig):
        super().__init__(config)
        self.codebook = CodisCodebook(config.codebook_size, config.embed_dim)
        self.post_init()

    def code_probabilities(self, embeds: torch.Tensor) -> torch.Tensor:
        """Distribution over the prototypes `[samples, codebook_size]` of projected embeddings (`pooler_output` of
        `get_image_features` / `get_text_features`): softmax of their cosines / prototype temperature."""
        scores = self.codebook.scores(F.normalize(embeds, dim=-1))
        return F.softmax(scores / self.config.prototype_temperature, dim=-1)


class CodisMomentumMixin:
    """What CODIS's training models (pretraining and retrieval) change in ALBEF's momentum-distilled training
    ([`AlbefMomentumDistilledModel`]): the online model is a [`CodisModel`]; the alignment adds the four
    teacher-student contrastive terms, code alignment against Sinkhorn assignments of the (globally gathered) teacher
    features, and the OT loss. Per-step duties add the codebook re-normalisation (and its freeze at the start, if
    configured)."""

    base_model_class = CodisModel
    output_class = CodisForPreTrainingOutput
    albef = legacy_albef_attribute()

    def _build_momentum_encoders(self, config: CodisConfig) -> None:
        """ALBEF's momentum towers, and an EMA codebook with `config.momentum_codebook`."""
        super()._build_momentum_encoders(config)
        #: detached codebook statistics of the last training forward, logged by the Trainer
        self._codebook_stats: dict[str, torch.Tensor] = {}
        if config.momentum_codebook:
            self.codebook_m = CodisCodebook(config.codebook_size, config.embed_dim)

    @property
    def uses_codis_objective(self) -> bool:
        """Whether the forward adds CODIS's alignment and codebook losses to ALBEF's (always when pretraining)."""
        return True

    def frozen_modules(self) -> list[nn.Module]:
        """The momentum encoders, and the codebook when no loss trains it (ALBEF fine-tuning objective, or both
        codebook losses off): an unused trainable parameter would stall DDP's gradient reduction."""
        config = self.config
        trained = self.uses_codis_objective and (config.code_loss_weight > 0 or config.ot_loss_weight > 0)
        return super().frozen_modules() + ([] if trained else [self.base_model.codebook])

    def loss_weight(self, name: str) -> float:
        """λ_code (ramped over `code_loss_warmup_steps`) and λ_ot; 1 for the others."""
        if name == "loss_code":
            warmup, progress = self.config.code_loss_warmup_steps, self.training_progress()
            ramp = min(1.0, progress[0] / warmup) if warmup and progress is not None else 1.0
            return self.config.code_loss_weight * ramp
        if name == "loss_ot":
            return self.config.ot_loss_weight
        return 1.0

    def _contrastive_and_matching(
        self, *args, pixel_values_teacher: torch.Tensor | None = None, **kwargs
    ) -> ContrastiveMatchingOutput:
        """ALBEF's step; in training with `teacher_image_view='augmented'` the momentum encoder's own view of each
        image is required."""
        if self.config.teacher_image_view == "augmented" and pixel_values_teacher is None and self.training:
            raise ValueError(
                "teacher_image_view='augmented' needs pixel_values_teacher, a second augmented view of each image "
                "for the momentum encoder (AlignmentCollator(..., teacher_view=True) provides it); or set "
                "teacher_image_view='same'."
            )
        return super()._contrastive_and_matching(*args, pixel_values_teacher=pixel_values_teacher, **kwargs)

    def _alignment_losses(
        self, itc: QueueContrastiveOutput, features: PairFeatures, idx: torch.Tensor, alpha: float
    ) -> dict[str, torch.Tensor]:
        if not self.uses_codis_objective:
            return super()._alignment_losses(itc, features, idx, alpha)
        config = self.config
        terms = {"loss_i2t": itc.loss_i2t, "loss_t2i": itc.loss_t2i}
        if config.align_intra_modal:
            columns = slice(None) if config.intra_modal_negatives == "queue" else slice(0, itc.num_batch_columns)
            bank_idx, intra_alpha = itc.bank_idx[columns], alpha if config.intra_soft_targets else 0.0
            temp = self.base_model.temp
            terms["loss_i2i"], _ = bank_contrastive_loss(
                features.image, features.image_m, itc.image_bank[:, columns], idx, bank_idx, temp, intra_alpha
            )
            terms["loss_t2t"], _ = bank_contrastive_loss(
                features.text, features.text_m, itc.text_bank[:, columns], idx, bank_idx, temp, intra_alpha
            )
        loss_align = sum(terms.values())
        if config.align_reduction == "mean":
            loss_align = loss_align / len(terms)
        return {
            "loss_align": loss_align,
            "loss_itc": itc.loss,
            **terms,
            "image_feat": features.image,
            "text_feat": features.text,
            **self._codebook_losses(features, idx),
        }

    def _codebook_losses(self, features: PairFeatures, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Code alignment (against the teacher plans) and the OT loss, each left out when its weight is 0."""
        config = self.config
        if config.code_loss_weight == 0 and config.ot_loss_weight == 0:
            return {}
        rank, _ = distributed_rank_and_world()
        batch_size = features.image.shape[0]
        local = slice(rank * batch_size, (rank + 1) * batch_size)
        codebook = self.base_model.codebook
        scores = [codebook.scores(features.image), codebook.scores(features.text)]
        outputs = {}
        teacher_plans = None
        if config.code_loss_weight > 0 or config.ot_plan_source == "teacher":
            teacher_plans = self._teacher_plans(features)
            self._record_codebook_stats(*teacher_plans)
        if config.code_loss_weight > 0:
            outputs |= self._code_alignment(scores, teacher_plans, idx, local)
        if config.ot_loss_weight > 0:
            if config.ot_plan_source == "teacher":
                plans = teacher_plans
            else:
                student_scores = [gather_without_grad(s) for s in scores]
                plans = transport_plans(student_scores, config.sinkhorn_epsilon, config.sinkhorn_iterations,
                                        config.sinkhorn_joint)  # fmt: skip
            outputs["loss_ot"] = sum(transport_cost_loss(s, p[local]) for s, p in zip(scores, plans, strict=True))
        return outputs

    @torch.no_grad()
    def _teacher_plans(self, features: PairFeatures) -> list[torch.Tensor]:
        """Sinkhorn plans `[global batch, codebook_size]` of the image and text teacher features of every process
        (identical on all), optionally transported together with the most recent queued teacher features."""
        config = self.config
        codebook = self.codebook_m if config.momentum_codebook else self.base_model.codebook
        teachers = [gather_without_grad(features.image_m), gather_without_grad(features.text_m)]
        batch_rows = teachers[0].shape[0]
        if config.sinkhorn_use_queue:
            columns = self._recent_queue_columns(config.sinkhorn_queue_rows)
            queues = (self.image_queue, self.text_queue)
            teachers = [torch.cat([t, q[:, columns].t().to(t.dtype)]) for t, q in zip(teachers, queues, strict=True)]
        plans = transport_plans([codebook.scores(t) for t in teachers], config.sinkhorn_epsilon,
                                config.sinkhorn_iterations, config.sinkhorn_joint)  # fmt: skip
        return [plan[:batch_rows] for plan in plans]

    def _recent_queue_columns(self, count: int) -> torch.Tensor:
        """Queue columns of the `count` most recently enqueued features (just before `queue_ptr`, wrapping)."""
        offsets = torch.arange(count, device=self.queue_ptr.device) - count
        return (self.queue_ptr + offsets) % self.config.queue_size

    def _code_alignment(
        self, scores: list[torch.Tensor], teacher_plans: list[torch.Tensor], idx: torch.Tensor, local: slice
    ) -> dict[str, torch.Tensor]:
        """L_code: each student's prototype prediction against the other modality's teacher plan."""
        config = self.config
        logits_image, logits_text = (s / config.prototype_temperature for s in scores)
        plan_image, plan_text = teacher_plans
        if config.code_loss_type == "swapped_prediction":
            loss_t2p = swapped_prediction_loss(logits_text, plan_image[local])
            loss_i2p = swapped_prediction_loss(logits_image, plan_text[local])
        else:
            plan_idx = gather_without_grad(idx)
            loss_t2p = assignment_contrastive_loss(logits_text, plan_image, idx, plan_idx)
            loss_i2p = assignment_contrastive_loss(logits_image, plan_text, idx, plan_idx)
        loss_code = loss_t2p + loss_i2p
        if config.code_loss_reduction == "mean":
            loss_code = loss_code / 2
        return {
            "loss_code": loss_code,
            "loss_t2p": loss_t2p,
            "loss_i2p": loss_i2p,
            "code_logits_image": logits_image,
            "code_logits_text": logits_text,
            "transport_i2p": plan_image[local],
            "transport_t2p": plan_text[local],
        }

    def _record_codebook_stats(self, plan_image: torch.Tensor, plan_text: torch.Tensor) -> None:
        """Codebook health of a training forward, from the global teacher plans: the fraction of prototypes that are
        some sample's most likely code, per modality; the mean entropy of the assignments; how often an image and its
        caption get the same most likely code. Kept as tensors (no device sync) until logged."""
        if not (self.training and torch.is_grad_enabled()):
            return
        plan_image, plan_text = plan_image.detach(), plan_text.detach()
        num_prototypes = plan_image.shape[1]
        codes_image, codes_text = plan_image.argmax(dim=1), plan_text.argmax(dim=1)

        def usage(codes: torch.Tensor) -> torch.Tensor:
            return torch.bincount(codes, minlength=num_prototypes).count_nonzero() / num_prototypes

        entropy = torch.special.entr(torch.cat([plan_image, plan_text])).sum(dim=1).mean()
        self._codebook_stats = {
            "codebook_usage_image": usage(codes_image),
            "codebook_usage_text": usage(codes_text),
            "assignment_entropy": entropy,
            "code_agreement": (codes_image == codes_text).float().mean(),
        }

    def before_optimizer_step(self, step: int) -> None:
        """Hold the prototypes still during the first `freeze_codebook_steps` steps (the optimizer skips them)."""
        if step < self.config.freeze_codebook_steps:
            self.base_model.codebook.prototypes.grad = None
        super().before_optimizer_step(step)

    def after_optimizer_step(self, step: int) -> None:
        """Prototypes back to unit norm, then ALBEF's duties (EMA, which includes an EMA codebook, and queues)."""
        self.base_model.codebook.renormalize_()
        super().after_optimizer_step(step)

    def training_log_values(self) -> dict[str, float]:
        return super().training_log_values() | {name: value.item() for name, value in self._codebook_stats.items()}

    def training_duties_description(self) -> str:
        return "momentum EMA, queue update and codebook re-normalisation"


class CodisForPreTraining(CodisMomentumMixin, AlbefForPreTraining, CodisPreTrainedModel):
    """CODIS pretraining: loss = L_align + λ_code·L_code + λ_ot·L_ot + L_itm + L_mlm, each returned separately.
    ITM and MLM are ALBEF's (see [`AlbefForPreTraining`])."""

    config_class = CodisConfig
    loss_names = ("loss_align", "loss_code", "loss_ot", "loss_itm", "loss_mlm")


class CodisForImageTextRetrieval(CodisMomentumMixin, AlbefForImageTextRetrieval, CodisPreTrainedModel):
    """CODIS retrieval fine-tuning: with `finetune_objective="codis"` the alignment and codebook losses (captions of
    the same image are positives) plus ITM; with `"albef"` ALBEF's ITC + ITM. Also serves ITM re-ranking."""

    config_class = CodisConfig

    @property
    def uses_codis_objective(self) -> bool:
        return self.config.finetune_objective == "codis"

    @property
    def loss_names(self) -> tuple[str, ...]:
        if self.uses_codis_objective:
            return ("loss_align", "loss_code", "loss_ot", "loss_itm")
        return ("loss_itc", "loss_itm")


class CodisForQuestionAnswering(AlbefForQuestionAnswering, CodisPreTrainedModel):
    """CODIS fine-tuned for VQA: [`AlbefForQuestionAnswering`] under CODIS's config and name.

    The codebook is left out on purpose. CODIS aligns the projected ITC features of images and texts through the
    codebook during pretraining; a VQA model answers from the fused question tokens (text and fusion encoders) through
    the answer decoder, a path that never reads the projections nor the codebook. Its weights are therefore exactly
    ALBEF's VQA weights (`vlalign convert --method codis --task vqa` takes the same official checkpoints), and what
    CODIS pretraining adds reaches VQA through the encoders it trained.
    """

    config_class = CodisConfig  # transformers would infer AlbefConfig from the inherited classes' `__init__`
    remote_code_auto_map = task_auto_map(
        REMOTE_CODE_AUTO_MAP, "AutoModelForVisualQuestionAnswering", "modeling_codis.CodisForQuestionAnswering"
    )


__all__ = [
    "CodisCodebook",
    "CodisForImageTextRetrieval",
    "CodisForPreTraining",
    "CodisForPreTrainingOutput",
    "CodisForQuestionAnswering",
    "CodisModel",
    "CodisPreTrainedModel",
]
