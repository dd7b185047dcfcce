"""CODIS configuration: ALBEF's, plus the shared codebook, its optimal-transport assignment and the losses built on it.

CODIS (Duan et al., CVPR 2022) released no code and its method section could not be read (see the model card), so
every setting the available sources leave open is a field here, with the alternative one flag away. Defaults are
the reasoned choices in `docs/methods.md`; the model card says which are confirmed and which are ours.
"""

from typing import Literal

from huggingface_hub.dataclasses import strict

from .configuration_albef import AlbefConfig


@strict
class CodisConfig(AlbefConfig):
    r"""
    Configuration of a CODIS model (Duan et al., "Multi-modal Alignment using Representation Codebook", CVPR 2022):
    an ALBEF (every [`AlbefConfig`] field keeps its meaning) whose image and text features are also assigned to one
    codebook of prototypes shared by both modalities.

    Args:
        codebook_size: number of prototypes K.
        codebook_dim: prototype width; `None` (default) means `embed_dim`, the only valid value: prototypes live
            in the L2-normalised ITC space.
        prototype_temperature: fixed temperature τ_p of the students' softmax over prototypes.
        momentum_codebook: score the teacher features against an EMA copy of the codebook instead of the current
            (detached) one.
        sinkhorn_epsilon: entropy weight ε of the Sinkhorn-Knopp transport.
        sinkhorn_iterations: Sinkhorn-Knopp iterations.
        sinkhorn_use_queue: also transport the `sinkhorn_queue_rows` most recent queued teacher features (only the
            batch rows become targets), SwAV's remedy for small batches.
        sinkhorn_queue_rows: queued features added to the transport when `sinkhorn_use_queue`.
        sinkhorn_joint: one plan over the image and text rows together instead of one plan per modality.
        code_loss_type: `"swapped_prediction"`: each student predicts the other modality's teacher assignment
            (cross-entropy); `"assignment_contrast"`: InfoNCE over samples, scoring every pair by that cross-entropy,
            so other samples' assignments are negatives.
        code_loss_weight: weight λ_code of the code-alignment loss (0 turns it off).
        code_loss_reduction: `"sum"` or `"mean"` of its text→prototype and image→prototype terms.
        code_loss_warmup_steps: ramp λ_code linearly from 0 over this many optimizer steps (0: constant). The step is
            the one a trainer reports through `set_training_progress`; without one the weight is full.
        ot_loss_weight: weight λ_ot of the separate OT loss, the transport cost between features and prototypes
            (0 turns it off).
        ot_plan_source: plans of that cost: `"student"` (Sinkhorn on the student scores) or `"teacher"` (reuse the
            code-alignment plans of the same modality).
        align_intra_modal: add the image→image and text→text teacher-student contrastive terms to ITC's two.
        align_reduction: `"mean"` (keeps ITC's scale) or `"sum"` of the alignment terms.
        intra_soft_targets: give the intra-modal terms momentum-distillation soft targets too (else one-hot).
        intra_modal_negatives: negatives of the intra-modal terms: the teacher bank with its `"queue"`, or the
            teacher features of the current `"batch"` only.
        teacher_image_view: the momentum image encoder sees the `"same"` images as the student, or a second
            `"augmented"` view passed as `pixel_values_teacher` (TCL's recipe).
        freeze_codebook_steps: keep the prototypes fixed for this many optimizer steps (SwAV freezes them at first).
        finetune_objective: retrieval fine-tuning with the CODIS alignment and codebook losses plus ITM (`"codis"`)
            or with ALBEF's ITC and ITM only (`"albef"`).
        kwargs: the [`AlbefConfig`] fields.
    """

    model_type = "codis"
    method_title = "CODIS (Duan et al., CVPR 2022): Multi-modal Alignment using Representation Codebook"
    method_paper = "Duan et al., Multi-modal Alignment using Representation Codebook, CVPR 2022 (arXiv:2203.00048)"
    hub_tags = ("codis", "albef")

    codebook_size: int = 3000
    codebook_dim: int | None = None
    prototype_temperature: int | float = 0.1
    momentum_codebook: bool = False
    sinkhorn_epsilon: int | float = 0.05
    sinkhorn_iterations: int = 3
    sinkhorn_use_queue: bool = False
    sinkhorn_queue_rows: int = 3584
    sinkhorn_joint: bool = False
    code_loss_type: Literal["swapped_prediction", "assignment_contrast"] = "swapped_prediction"
    code_loss_weight: int | float = 1.0
    code_loss_reduction: Literal["sum", "mean"] = "sum"
    code_loss_warmup_steps: int = 0
    ot_loss_weight: int | float = 1.0
    ot_plan_source: Literal["student", "teacher"] = "student"
    align_intra_modal: bool = True
    align_reduction: Literal["mean", "sum"] = "mean"
    intra_soft_targets: bool = False
    intra_modal_negatives: Literal["queue", "batch"] = "queue"
    teacher_image_view: Literal["same", "augmented"] = "same"
    freeze_codebook_steps: int = 0
    finetune_objective: Literal["codis", "albef"] = "codis"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.codebook_dim is None:
            self.codebook_dim = self.embed_dim
        if self.codebook_dim != self.embed_dim:
            raise ValueError(
                f"codebook_dim={self.codebook_dim} must equal embed_dim={self.embed_dim}: prototypes are compared "
                "with the projected ITC features. Leave codebook_dim unset."
            )
        # choice fields are checked against their Literal types by @strict
        for name in ("codebook_size", "prototype_temperature", "sinkhorn_epsilon", "sinkhorn_iterations"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        for name in ("code_loss_weight", "ot_loss_weight", "code_loss_warmup_steps", "freeze_codebook_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.sinkhorn_use_queue and not 0 < self.sinkhorn_queue_rows <= self.queue_size:
            raise ValueError(
                f"sinkhorn_queue_rows={self.sinkhorn_queue_rows} must lie in [1, queue_size={self.queue_size}] when "
                "sinkhorn_use_queue is on."
            )


__all__ = ["CodisConfig"]
