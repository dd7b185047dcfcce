"""ALBEF's training machinery: momentum (EMA) encoders, feature queues and the step every ALBEF-family training
forward shares (image-text contrast against the queues with momentum distillation, image-text matching on hard
negatives), with the per-step duties that keep the momentum encoders and queues up to date.

[`AlbefMomentumDistilledModel`] is that shared base; ALBEF's, SIMLA's and CODIS's pretraining and retrieval models
derive from it and add their objectives on top of its [`ContrastiveMatchingOutput`].

This file is shipped with saved models (remote code): it imports only torch, transformers and its sibling files.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import warnings
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithCrossAttentions, BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .configuration_albef import AlbefConfig
from .input_checks import check_pairs
from .losses import (
    HardNegativeMatchingOutput,
    QueueContrastiveOutput,
    check_loss_finite,
    distributed_rank_and_world,
    gather_without_grad,
    hard_negative_matching_loss,
    queue_contrastive_loss,
)
from .modeling_albef_encoders import AlbefFusionModel, AlbefPreTrainedModel, AlbefTextModel, AlbefVisionModel
from .training_duties import TrainingDutiesMixin


def albef_alpha(step: int, steps_per_epoch: int, alpha: float = 0.4, warmup_epochs: float = 1.0) -> float:
    """Momentum-distillation weight: ``alpha * min(1, step / (warmup_epochs * steps_per_epoch))``.

    The official loop uses ``alpha * min(1, i / len(data_loader))`` in epoch 0 (``i`` = iteration within the epoch,
    0 at the first one) and ``alpha`` from epoch 1 on; with a global 0-based ``step`` (``trainer.state.global_step``
    during the forward pass) and ``warmup_epochs=1`` this is the same. A degenerate ramp (``steps_per_epoch <= 0`` or
    ``warmup_epochs <= 0``) returns ``alpha``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    ramp = warmup_epochs * steps_per_epoch
    if steps_per_epoch <= 0 or warmup_epochs <= 0 or ramp <= 0:
        return float(alpha)
    return float(alpha) * min(1.0, step / ramp)


@dataclasses.dataclass
class PairFeatures:
    """L2-normalised projected features of a batch of image-text pairs: online (`image`, `text`, with gradients) and
    momentum (`image_m`, `text_m`, constants)."""

    image: torch.Tensor
    text: torch.Tensor
    image_m: torch.Tensor
    text_m: torch.Tensor


@dataclasses.dataclass
class AlbefForPreTrainingOutput(ModelOutput):
    """
    Output of [`AlbefForPreTraining`] and [`AlbefForImageTextRetrieval`].

    Args:
        loss: sum of the objective losses.
        loss_itc: image-text contrastive loss (with momentum distillation when alpha > 0).
        loss_itm: image-text matching loss over the positives and the mined hard negatives.
        loss_mlm: masked language modelling loss (pretraining only).
        sim_i2t: `[batch, batch + queue]` online image features against the momentum text bank, / temperature.
        sim_t2i: `[batch, batch + queue]` online text features against the momentum image bank, / temperature.
        itm_logits: `[batch + negatives, 2]` ITM logits, positives first (index 1 means "match").
        itm_labels: the ITM targets for `itm_logits`.
        mlm_logits: `[batch, tokens, vocab]` MLM prediction scores (pretraining only).
        image_feat_m: `[batch, embed_dim]` momentum image features, to enqueue after the step.
        text_feat_m: `[batch, embed_dim]` momentum text features, to enqueue after the step.
        idx: `[batch]` image indices of the pairs (the retrieval model enqueues them with the features).
        vision_model_output, text_model_output: the online towers' outputs for the batch (with attention maps and
            states when requested).
        fusion_model_output: the fusion encoder's output for the ITM pairs, in `itm_logits` order.
    """

    loss: torch.Tensor | None = None
    loss_itc: torch.Tensor | None = None
    loss_itm: torch.Tensor | None = None
    loss_mlm: torch.Tensor | None = None
    sim_i2t: torch.Tensor | None = None
    sim_t2i: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    itm_labels: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None
    image_feat_m: torch.Tensor | None = None
    text_feat_m: torch.Tensor | None = None
    idx: torch.Tensor | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    fusion_model_output: BaseModelOutputWithCrossAttentions | None = None


@dataclasses.dataclass
class ContrastiveMatchingOutput:
    """What the step shared by every training forward computed
    ([`AlbefMomentumDistilledModel._contrastive_and_matching`]): the input of the objectives a model adds on top.

    Args:
        features: the pairs' normalised online and momentum features.
        idx: `[batch]` image index of each pair (pairs of one image are positives of each other).
        itc: ITC against the momentum banks (batch + queue): the banks, the similarities and the loss terms.
        alignment_losses: the output fields of the model's alignment objectives (`_alignment_losses`): ALBEF's
            `loss_itc`; CODIS's teacher-student and codebook terms.
        itm: ITM on the positives and the hard negatives mined from `itc`'s in-batch similarities.
        image_hidden_m: `[batch, patches, vision width]` the momentum ViT's image tokens (distillation teachers read
            them).
        vision_model_output, text_model_output: the online towers' outputs; `pooler_output` is the projected CLS
            embedding (not normalised), `last_hidden_state` the tokens.
        fusion_model_output: the fusion encoder's output for the ITM pairs, in `itm.logits` order.
    """

    features: PairFeatures
    idx: torch.Tensor
    itc: QueueContrastiveOutput
    alignment_losses: dict[str, torch.Tensor]
    itm: HardNegativeMatchingOutput
    image_hidden_m: torch.Tensor
    vision_model_output: BaseModelOutputWithPooling
    text_model_output: BaseModelOutputWithPooling
    fusion_model_output: BaseModelOutputWithCrossAttentions

    @property
    def image_hidden(self) -> torch.Tensor:
        """`[batch, patches, vision width]` the online ViT's image tokens."""
        return self.vision_model_output.last_hidden_state

    def output_fields(self) -> dict[str, torch.Tensor | ModelOutput]:
        """The fields of [`AlbefForPreTrainingOutput`] (and its subclasses) this step fills."""
        return {
            **self.alignment_losses,
            "loss_itm": self.itm.loss,
            "sim_i2t": self.itc.sim_i2t,
            "sim_t2i": self.itc.sim_t2i,
            "itm_logits": self.itm.logits,
            "itm_labels": self.itm.labels,
            "image_feat_m": self.features.image_m,
            "text_feat_m": self.features.text_m,
            "idx": self.idx,
            "vision_model_output": self.vision_model_output,
            "text_model_output": self.text_model_output,
            "fusion_model_output": self.fusion_model_output,
        }


class MomentumDistillationMixin:
    """Momentum (EMA) copies of a model's modules and the distillation weight α, for training models of the ALBEF
    family (pretraining, retrieval, VQA). A child module `X_m` of the model is the momentum copy of `X`, a module of
    the online model (`base_model`) or of the model itself; the copies are frozen (`frozen_modules`), start equal to
    their online modules, and take one EMA step per optimizer step (`momentum_update`, a training duty)."""

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        """transformers' per-module initialisation; then, at the model itself (visited last), the training state a
        checkpoint may lack (`_init_training_state`). This runs even when transformers skips the model's own
        `_init_weights` because its buffers were loaded, so a momentum module missing from a checkpoint (a fine-tuned
        file, an EMA copy the config newly asks for) starts as a copy of its online module rather than as random
        weights. Loaded tensors are never overwritten."""
        super()._initialize_weights(module, is_custom_code)
        if module is self:
            with torch.no_grad():
                self._init_training_state()

    def _init_training_state(self) -> None:
        """Momentum parameters equal to their online ones."""
        for online, momentum in self.momentum_parameter_pairs():
            init.copy_(momentum, online)

    def momentum_module_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, momentum) module pairs: each child `X_m` of this model with its online module `X`, looked up in
        the online model first, then in this model."""
        pairs = []
        for name, momentum in self.named_children():
            if name.endswith("_m"):
                online_name = name.removesuffix("_m")
                owner = self.base_model if hasattr(self.base_model, online_name) else self
                pairs.append((owner.get_submodule(online_name), momentum))
        return pairs

    def momentum_parameter_pairs(self) -> Iterator[tuple[nn.Parameter, nn.Parameter]]:
        for online, momentum in self.momentum_module_pairs():
            yield from zip(online.parameters(), momentum.parameters(), strict=True)

    def momentum_modules(self) -> list[nn.Module]:
        return [momentum for _, momentum in self.momentum_module_pairs()]

    def frozen_modules(self) -> list[nn.Module]:
        """The momentum encoders: updated by the EMA, never by the optimizer."""
        return self.momentum_modules()

    @torch.no_grad()
    def copy_params_to_momentum(self) -> None:
        """Make the momentum encoders equal to the online ones (done at construction by the official code)."""
        for online, momentum in self.momentum_parameter_pairs():
            momentum.copy_(online)
            momentum.requires_grad_(False)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """θ_m ← m·θ_m + (1-m)·θ for every momentum parameter. Call once per optimizer step."""
        pairs = list(self.momentum_parameter_pairs())
        momentum_params = [m for _, m in pairs]
        torch._foreach_mul_(momentum_params, self.config.momentum)
        torch._foreach_add_(momentum_params, [o.detach() for o, _ in pairs], alpha=1 - self.config.momentum)

    def prime_momentum(self) -> None:
        """The EMA step the official fine-tuning forwards (`VE.py`, `VQA.py`) take before their very first momentum
        pass, taken once per training run.

        The official forward updates the momentum copies at its start, vlalign after each optimizer step (a training
        duty). Both give the teacher of step k ≥ 1 the same weights only when the official sequence's first update
        changes nothing: with momentum weights θ_m ≠ θ (a pretraining checkpoint's own momentum encoders), the
        official teacher of step 0 is m·θ_m + (1-m)·θ, not θ_m, and every later teacher differs by that step. A
        distilling model calls this in its training forwards (training mode, gradients enabled, with labels): the
        first one of a run at optimizer step 0 (a trainer's step, or none set) takes that step; later forwards, and a
        run resumed at step k > 0 (whose checkpoint holds momentum weights that already include it), take none.
        `restart_training_duties_check` (a trainer's start) re-arms it."""
        if getattr(self, "_momentum_primed", False) or not (self.training and torch.is_grad_enabled()):
            return
        self._momentum_primed = True
        progress = self.training_progress()
        if progress is None or progress[0] == 0:
            self.momentum_update()

    def restart_training_duties_check(self) -> None:
        """A trainer starts (or resumes) a run: its first training forward at step 0 primes the momentum copies."""
        self._momentum_primed = False
        super().restart_training_duties_check()

    def _distillation_weight(self, alpha: float | None) -> float:
        """α for this forward: the argument; else the official warm-up at the step a trainer set (see
        `set_training_progress`); else `config.alpha`. Always 0 when `config.distill` is off."""
        progress = self.training_progress()
        if not self.config.distill:
            alpha = 0.0
        elif alpha is None and progress is not None:
            alpha = albef_alpha(*progress, self.config.alpha, self.config.alpha_warmup_epochs)
        elif alpha is None:
            alpha = self.config.alpha
        self._last_alpha = float(alpha)
        return alpha


class AlbefMomentumDistilledModel(MomentumDistillationMixin, TrainingDutiesMixin, AlbefPreTrainedModel):
    """Base of the ALBEF-family training models: ITC and ITM with momentum distillation.

    It holds the online model (`base_model_class`, as the attribute named by `base_model_prefix`; reach it through
    `base_model`), its momentum (EMA) copies and the feature queues, and computes the step every training forward
    shares (`_contrastive_and_matching`). Subclasses add their objectives on top and may override:

    * `_build_momentum_encoders`: add momentum copies. A child module `X_m` of the model is the momentum copy of `X`,
      a module of the online model or of the model itself (a training-only head such as `mlm_head`);
    * `_encode_momentum`: how the momentum encoders turn a batch into features (SIMLA runs its whole stack);
    * `_alignment_losses`: the alignment objectives computed from the ITC banks (CODIS adds its terms to ITC);
    * `loss_weight`: each loss's weight in the total;
    * `queues_image_ids`: whether the queues keep image indices (retrieval fine-tuning).

    Per-step duties: after every optimizer step (`after_optimizer_step`, run by `TrainingDutiesCallback` or a
    hand-written loop) the momentum encoders take one EMA step and the momentum features of that step's training
    forwards enter the queues.
    """

    supports_itm_rerank = True
    #: the online model class, built as the attribute named by `base_model_prefix`
    base_model_class: type[AlbefPreTrainedModel]
    #: what the training forwards return
    output_class: type[AlbefForPreTrainingOutput] = AlbefForPreTrainingOutput
    #: whether the queues keep each feature's image index (in an `idx_queue` buffer the model then registers):
    #: queued captions of a batch image are then positives too
    queues_image_ids: bool = False

    def __init__(self, config: AlbefConfig):
        super().__init__(config)
        setattr(self, self.base_model_prefix, self.base_model_class(config))
        self._build_momentum_encoders(config)
        self.register_buffer("image_queue", torch.zeros(config.embed_dim, config.queue_size))
        self.register_buffer("text_queue", torch.zeros(config.embed_dim, config.queue_size))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        #: (image_feat_m, text_feat_m, idx) of each training forward since the last optimizer step, to enqueue
        self._momentum_feature_stash: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._last_alpha = config.alpha if config.distill else 0.0

    def _build_momentum_encoders(self, config: AlbefConfig) -> None:
        """The momentum copies of the online towers and projections."""
        self.vision_model_m = AlbefVisionModel._from_config(config.vision_config)
        self.vision_proj_m = nn.Linear(config.vision_config.hidden_size, config.embed_dim)
        self.text_model_m = AlbefTextModel._from_config(config.text_config)
        self.fusion_model_m = AlbefFusionModel._from_config(config.text_config)
        self.text_proj_m = nn.Linear(config.text_config.hidden_size, config.embed_dim)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.get_input_embeddings()

    def _init_training_state(self) -> None:
        """Random unit queues, and momentum parameters equal to their online ones."""
        self._init_queues()
        super()._init_training_state()

    def _init_queues(self) -> None:
        """Queues start full of random unit vectors (one per column), as in the official code."""
        for queue in (self.image_queue, self.text_queue):
            if not getattr(queue, "_is_hf_initialized", False):
                queue.copy_(F.normalize(torch.randn_like(queue), dim=0))
        init.zeros_(self.queue_ptr)

    @torch.no_grad()
    def enqueue(self, image_feats: torch.Tensor, text_feats: torch.Tensor, idx: torch.Tensor | None = None) -> None:
        """Write (already globally gathered) momentum features into the queues at `queue_ptr`, wrapping around; their
        image indices `idx` too where the model keeps them (`queues_image_ids`).

        The official code requires `queue_size % global_batch == 0`; wrapping makes any batch size work and is
        identical when the condition holds.
        """
        batch_size = image_feats.shape[0]
        if batch_size > self.config.queue_size:
            raise ValueError(f"Cannot enqueue {batch_size} features into a queue of {self.config.queue_size}.")
        ptr = int(self.queue_ptr)
        columns = (torch.arange(batch_size, device=self.queue_ptr.device) + ptr) % self.config.queue_size
        self.image_queue[:, columns] = image_feats.t().to(self.image_queue.dtype)
        self.text_queue[:, columns] = text_feats.t().to(self.text_queue.dtype)
        if idx is not None and self.queues_image_ids:
            self.idx_queue[:, columns] = idx.to(self.idx_queue.dtype)
        self.queue_ptr[0] = (ptr + batch_size) % self.config.queue_size

    def queue_idx(self) -> torch.Tensor:
        """Image indices of the queued features; -100 (never a positive) where the model keeps none."""
        if self.queues_image_ids:
            return self.idx_queue.clone().view(-1)
        return torch.full((self.config.queue_size,), -100, dtype=torch.long, device=self.queue_ptr.device)

    def _stash_momentum_features(self, image_feat_m: torch.Tensor, text_feat_m: torch.Tensor, idx: torch.Tensor):
        """Keep a training forward's momentum features for the queue update after the optimizer step."""
        if self.training and torch.is_grad_enabled():
            self._momentum_feature_stash.append((image_feat_m.detach(), text_feat_m.detach(), idx.detach()))

    @torch.no_grad()
    def _enqueue_stashed_features(self) -> None:
        """Enqueue the stashed features of every micro-batch since the last step, each gathered from every process
        in rank order (micro-batch by micro-batch), as the official `concat_all_gather` + `_dequeue_and_enqueue`."""
        if not self._momentum_feature_stash:
            return
        image_feats, text_feats, idx = (
            torch.cat([gather_without_grad(t) for t in tensors])
            for tensors in zip(*self._momentum_feature_stash, strict=True)
        )
        self._momentum_feature_stash.clear()
        self.enqueue(image_feats, text_feats, idx)

    @torch.no_grad()
    def _clamp_temperature(self) -> None:
        """Keep the ITC temperature in [temp_min, temp_max], as the official forward does. Only an out-of-range value
        is written, so the clamp never looks like an optimizer update to `check_training_duties`."""
        temp = self.base_model.temp
        if not self.config.temp_min <= temp.item() <= self.config.temp_max:
            temp.clamp_(self.config.temp_min, self.config.temp_max)

    def after_optimizer_step(self, step: int) -> None:
        """ALBEF's per-step duties: one EMA step of the momentum encoders, the temperature clamp, then the step's
        momentum features into the queues."""
        self.momentum_update()
        self._clamp_temperature()
        self._enqueue_stashed_features()
        super().after_optimizer_step(step)

    def optimizer_step_skipped(self, step: int) -> None:
        """No EMA step and no enqueue for a skipped step: its forwards' momentum features are dropped."""
        self._momentum_feature_stash.clear()
        super().optimizer_step_skipped(step)

    def training_log_values(self) -> dict[str, float]:
        return {"alpha": self._last_alpha, "temp": self.base_model.temp.item()}

    def training_duties_description(self) -> str:
        return "momentum EMA and queue update"

    def loss_weight(self, name: str) -> float:
        """Weight of loss `name` in the total: 1 for every ALBEF loss, as in the official code."""
        return 1.0

    def _training_output(self, step: ContrastiveMatchingOutput, **extra: torch.Tensor) -> AlbefForPreTrainingOutput:
        """The forward's output: `loss` = the weighted sum of the `loss_names` that were computed, checked finite,
        with the step's and the model-specific `extra` fields that `output_class` carries."""
        fields = step.output_fields() | extra
        losses = {name: fields.get(name) for name in self.loss_names}
        check_loss_finite(losses)
        weighted = [
            value if self.loss_weight(name) == 1 else self.loss_weight(name) * value
            for name, value in losses.items()
            if value is not None
        ]
        output_fields = {field.name for field in dataclasses.fields(self.output_class)}
        return self.output_class(loss=sum(weighted), **{k: v for k, v in fields.items() if k in output_fields})

    def _encode_momentum(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        interpolate_pos_encoding: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Momentum image tokens and normalised momentum image/text features (no gradients). `pixel_values` are
        the images the momentum (teacher) encoder sees."""
        image_hidden_m = self.vision_model_m(pixel_values, interpolate_pos_encoding).last_hidden_state
        image_feat_m = F.normalize(self.vision_proj_m(image_hidden_m[:, 0]), dim=-1)
        text_hidden_m = self.text_model_m(input_ids, attention_mask).last_hidden_state
        text_feat_m = F.normalize(self.text_proj_m(text_hidden_m[:, 0]), dim=-1)
        return image_hidden_m, image_feat_m, text_feat_m

    def _alignment_losses(
        self, itc: QueueContrastiveOutput, features: PairFeatures, idx: torch.Tensor, alpha: float
    ) -> dict[str, torch.Tensor]:
        """The alignment objectives on top of the ITC banks, as output fields; ALBEF's is ITC itself."""
        return {"loss_itc": itc.loss}

    def _contrastive_and_matching(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        *,
        alpha: float,
        output_flags: dict[str, bool],
        idx: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        interpolate_pos_encoding: bool = False,
        pixel_values_teacher: torch.Tensor | None = None,
    ) -> ContrastiveMatchingOutput:
        """ITC against the momentum banks (batch + queue), the model's alignment losses (`_alignment_losses`) and ITM
        with hard negatives, as one pretraining or retrieval step computes them.

        Args:
            pixel_values, input_ids, attention_mask: the batch of image-text pairs.
            alpha: the distillation weight.
            output_flags: `output_attentions` / `output_hidden_states` for the online towers and the ITM fusion pass.
            idx: `[batch]` image index of each pair; pairs sharing one are positives of each other. Default: every
                pair is its own image.
            generator: RNG for the hard-negative draws (global RNG when None).
            interpolate_pos_encoding: run the ViTs at another square size.
            pixel_values_teacher: the images the momentum ViT sees (default: `pixel_values`).
        """
        check_pairs(pixel_values, input_ids)
        if pixel_values_teacher is not None and pixel_values_teacher.shape != pixel_values.shape:
            raise ValueError(
                f"pixel_values_teacher has shape {tuple(pixel_values_teacher.shape)} but pixel_values "
                f"{tuple(pixel_values.shape)}; the teacher view must be one image of the same size per pair."
            )
        self._clamp_temperature()
        self.check_training_duties()
        online = self.base_model
        if idx is None:  # every pair is its own image; offset by rank so indices are unique across processes
            rank = distributed_rank_and_world()[0]
            idx = torch.arange(pixel_values.shape[0], device=pixel_values.device) + rank * pixel_values.shape[0]
        idx = idx.view(-1)

        vision_outputs = online.get_image_features(pixel_values, interpolate_pos_encoding, **output_flags)
        text_outputs = online.get_text_features(input_ids, attention_mask, **output_flags)
        image_feat = F.normalize(vision_outputs.pooler_output, dim=-1)
        text_feat = F.normalize(text_outputs.pooler_output, dim=-1)
        with torch.no_grad():
            image_hidden_m, image_feat_m, text_feat_m = self._encode_momentum(
                pixel_values if pixel_values_teacher is None else pixel_values_teacher,
                input_ids,
                attention_mask,
                interpolate_pos_encoding,
            )

        self._stash_momentum_features(image_feat_m, text_feat_m, idx)
        itc = queue_contrastive_loss(
            image_feat,
            text_feat,
            image_feat_m,
            text_feat_m,
            image_queue=self.image_queue,
            text_queue=self.text_queue,
            idx=idx,
            queue_idx=self.queue_idx(),
            temp=online.temp,
            alpha=alpha,
            global_negatives=self.config.itc_global_negatives,
        )
        features = PairFeatures(image_feat, text_feat, image_feat_m, text_feat_m)
        alignment_losses = self._alignment_losses(itc, features, idx, alpha)
        # ITM negatives come from the local batch (its columns in the bank), as in the official code
        local = itc.batch_columns
        fusion_outputs = []

        def score_pairs(
            texts: torch.Tensor, masks: torch.Tensor | None, images: torch.Tensor, image_index: torch.Tensor
        ) -> torch.Tensor:
            fusion_outputs.append(online.fusion_model(texts, masks, images, image_index=image_index, **output_flags))
            return online.itm_head(fusion_outputs[-1].last_hidden_state[:, 0])

        itm = hard_negative_matching_loss(
            score_pairs,
            text_outputs.last_hidden_state,
            attention_mask,
            vision_outputs.last_hidden_state,
            sim_i2t=itc.sim_i2t[:, local],
            sim_t2i=itc.sim_t2i[:, local],
            idx=idx,
            generator=generator,
        )
        return ContrastiveMatchingOutput(
            features=features,
            idx=idx,
            itc=itc,
            alignment_losses=alignment_losses,
            itm=itm,
            image_hidden_m=image_hidden_m,
            vision_model_output=vision_outputs,
            text_model_output=text_outputs,
            fusion_model_output=fusion_outputs[0],
        )


def task_config(model: nn.Module, config_overrides: dict) -> AlbefConfig:
    """A copy of `model`'s config with `config_overrides` set: the config of a fine-tuning model initialised from it."""
    config = copy.deepcopy(model.config)
    for name, value in config_overrides.items():
        setattr(config, name, value)
    return config


def place_pretrained_weights(
    task_model: nn.Module,
    model: nn.Module,
    task: str,
    fresh_pattern: str,
    targets: Callable[[str], Iterable[str | None]] = lambda key: (key,),
) -> set[str]:
    """Load a pretrained model's weights into a downstream model of its family (`from_pretraining` of the VQA and
    entailment models): each key of `model`'s state dict (its online model's prefix removed) goes to the keys
    `targets(key)` names that `task_model` has, shapes checked; the rest of `model` is left out. Returns the momentum
    weights (`X_m.` keys) `model` lacked, for the caller to start as copies. Raises when `model` lacks any other weight
    but those matching `fresh_pattern` (the task's new head)."""
    prefix = f"{model.base_model_prefix}."
    state = {key.removeprefix(prefix): value for key, value in model.state_dict().items()}
    expected = task_model.state_dict()
    weights = {}
    for key, value in state.items():
        for target in targets(key):
            if target not in expected:
                continue
            if expected[target].shape != value.shape:
                raise ValueError(
                    f"{key} has shape {tuple(value.shape)} but the {task} model's {target} has "
                    f"{tuple(expected[target].shape)}: config_overrides may not change the model's sizes."
                )
            weights[target] = value
    task_model.load_state_dict(weights, strict=False)
    missing = set(expected) - set(weights)
    fresh = {key for key in missing if re.match(fresh_pattern, key)}
    momentum = {key for key in missing - fresh if re.match(r"^[a-z_]+_m\.", key)}
    if lacking := sorted(missing - fresh - momentum):
        raise ValueError(
            f"{type(model).__name__} lacks {len(lacking)} weights the {task} model needs (first: "
            f"{', '.join(lacking[:5])}); pass a pretraining, retrieval or inference model of the family."
        )
    return momentum


def legacy_albef_attribute() -> property:
    """`.albef`, the name the SIMLA and CODIS training models gave their online model before it was named after the
    family (`base_model_prefix`): the online model, with a `FutureWarning`."""

    def albef(self: AlbefMomentumDistilledModel) -> AlbefPreTrainedModel:
        warnings.warn(
            f"`{type(self).__name__}.albef` is deprecated and will be removed; the online model is "
            f"`.{self.base_model_prefix}` (or `.base_model`).",
            FutureWarning,
            stacklevel=2,
        )
        return self.base_model

    return property(albef)


__all__ = [
    "place_pretrained_weights",
    "task_config",
    "AlbefForPreTrainingOutput",
    "AlbefMomentumDistilledModel",
    "ContrastiveMatchingOutput",
    "MomentumDistillationMixin",
    "PairFeatures",
    "albef_alpha",
    "legacy_albef_attribute",
]
