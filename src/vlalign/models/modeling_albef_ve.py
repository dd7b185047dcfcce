"""ALBEF visual entailment (SNLI-VE; the official `model_ve.py` + `VE.py`): an image (the premise) and a hypothesis are
fused by the ALBEF encoders, and a two-layer MLP on the fused [CLS] scores contradiction / neutral / entailment.

* [`VisualEntailmentOutput`]: logits, the loss and its distillation parts, the towers' outputs.
* [`entailment_loss`]: the official loss, (1-α)·cross-entropy + α·soft cross-entropy against the momentum model.
* [`AlbefForVisualEntailment`]: ViT + text/fusion encoders + MLP head, and their momentum copies (EMA as a training
  duty). SIMLA's and CODIS's entailment models are this class under their configs.

This file is shipped with saved models (remote code): it imports only torch, transformers and its sibling files.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .configuration_albef import AlbefConfig
from .losses import check_loss_finite
from .modeling_albef_encoders import (
    REMOTE_CODE_AUTO_MAP,
    AlbefFusionModel,
    AlbefPreTrainedModel,
    AlbefTextModel,
    AlbefVisionModel,
)
from .modeling_albef_training import MomentumDistillationMixin, place_pretrained_weights, task_config
from .pipeline_ve import REMOTE_PIPELINE as REMOTE_VE_PIPELINE
from .pipeline_ve import TASK as VE_TASK
from .remote_code import task_auto_map
from .training_duties import TrainingDutiesMixin

#: the official SNLI-VE label indices (`ve_dataset.py`): what the head's outputs mean
VE_ID2LABEL = {0: "contradiction", 1: "neutral", 2: "entailment"}
#: the online and momentum modules of an entailment model, by attribute name
VE_MODULES = ("vision_model", "text_model", "fusion_model", "cls_head")


@dataclasses.dataclass
class VisualEntailmentOutput(ModelOutput):
    """
    Output of [`AlbefForVisualEntailment.forward`] (and SIMLA's and CODIS's).

    Args:
        loss: (1-α)·`loss_ce` + α·`loss_distill` (the official training loss); None without labels.
        loss_ce: cross-entropy of `logits` against the labels.
        loss_distill: batch mean of the soft cross-entropy of `logits` against softmax(`logits_m`) (when α > 0).
        logits: `[batch, 3]` scores of contradiction / neutral / entailment (`config.id2label`).
        logits_m: `[batch, 3]` the momentum model's scores, the distillation targets (when α > 0).
        fused_states: `[batch, tokens, width]` the hypothesis tokens after the fusion layers (the head reads [CLS]).
        image_embeds: `[batch, patches + 1, vision width]` the ViT tokens.
        vision_model_output, text_model_output, fusion_model_output: the towers' outputs, with attention maps and
            states when requested.
    """

    loss: torch.Tensor | None = None
    loss_ce: torch.Tensor | None = None
    loss_distill: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    logits_m: torch.Tensor | None = None
    fused_states: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    fusion_model_output: ModelOutput | None = None


def entailment_loss(
    logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None = None, alpha: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(loss, cross-entropy, distillation term) of the official entailment model: cross-entropy over the batch, and
    with α > 0 the batch mean of -Σ softmax(`teacher_logits`)·log_softmax(`logits`), mixed as (1-α)·CE + α·distill."""
    loss_ce = F.cross_entropy(logits.float(), labels)
    if alpha <= 0:
        return loss_ce, loss_ce, None
    soft = F.softmax(teacher_logits.float(), dim=-1)
    loss_distill = -(F.log_softmax(logits.float(), dim=-1) * soft).sum(-1).mean()
    return (1 - alpha) * loss_ce + alpha * loss_distill, loss_ce, loss_distill


def entailment_head(hidden_size: int, num_labels: int) -> nn.Sequential:
    """The official head: Linear(hidden, hidden) → ReLU → Linear(hidden, labels), on the fused [CLS]."""
    return nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, num_labels))


def entailment_auto_map(family_auto_map: dict[str, str], entailment_class: str) -> dict[str, str]:
    """The `auto_map` of a saved entailment folder: the family's config, and the entailment class (`module.Class`) for
    `AutoModelForVisualEntailment` and for `AutoModel`, the Auto class `transformers.pipeline` loads the
    `visual-entailment` pipeline's model with under `trust_remote_code=True` (the family's other classes live in
    files such a folder does not carry)."""
    return task_auto_map(family_auto_map, "AutoModelForVisualEntailment", entailment_class)


def with_entailment_labels(config: AlbefConfig) -> AlbefConfig:
    """`config` with the official SNLI-VE labels (`VE_ID2LABEL`); a copy when it had others."""
    if config.id2label != VE_ID2LABEL:
        config = copy.deepcopy(config)
        config.id2label = dict(VE_ID2LABEL)
        config.label2id = {label: index for index, label in VE_ID2LABEL.items()}
    return config


class AlbefForVisualEntailment(MomentumDistillationMixin, TrainingDutiesMixin, AlbefPreTrainedModel):
    """ALBEF fine-tuned for visual entailment (SNLI-VE, the official `model_ve.py`): the hypothesis runs through the
    text and fusion encoders, cross-attending to the image's ViT tokens, and `cls_head` (Linear-ReLU-Linear) scores
    the fused [CLS] over `config.id2label` (contradiction 0, neutral 1, entailment 2, the official indices).

    With `config.distill` the ViT, both BERT towers and the head have momentum copies that supply the distillation
    targets (weight α; the official VE config keeps α constant: `alpha_warmup_epochs=0`) and take one EMA step after
    every optimizer step (a training duty). The official forward takes its EMA step before its momentum pass: the
    first training forward of a run also takes one before its first momentum pass (`prime_momentum`), which gives the
    official sequence of teacher weights even when the momentum copies start away from the online weights.

    `from_pretraining` (and `vlalign convert --task ve` from an official pretraining checkpoint) builds the official
    fine-tuning initialisation; `vlalign convert --task ve` also loads an official fine-tuned VE checkpoint.
    """

    main_input_name = "pixel_values"
    #: saved folders name the visual-entailment pipeline (shipped beside the code) for `trust_remote_code=True`
    remote_code_pipelines = {VE_TASK: REMOTE_VE_PIPELINE}
    remote_code_auto_map = entailment_auto_map(REMOTE_CODE_AUTO_MAP, "modeling_albef_ve.AlbefForVisualEntailment")

    def __init__(self, config: AlbefConfig):
        config = with_entailment_labels(config)
        super().__init__(config)
        self.has_training_duties = config.distill
        hidden = config.text_config.hidden_size
        self.vision_model = AlbefVisionModel._from_config(config.vision_config)
        self.text_model = AlbefTextModel._from_config(config.text_config)
        self.fusion_model = AlbefFusionModel._from_config(config.text_config)
        self.cls_head = entailment_head(hidden, config.num_labels)
        if config.distill:
            self.vision_model_m = AlbefVisionModel._from_config(config.vision_config)
            self.text_model_m = AlbefTextModel._from_config(config.text_config)
            self.fusion_model_m = AlbefFusionModel._from_config(config.text_config)
            self.cls_head_m = entailment_head(hidden, config.num_labels)
        self.post_init()
        self.apply_freezing()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_model.set_input_embeddings(value)

    # -- initialisation from a pretrained model ------------------------------------------------------------------

    @classmethod
    @torch.no_grad()
    def from_pretraining(cls, model: nn.Module, official_head_init: bool = True, **config_overrides):
        """An entailment model initialised from a vlalign model of the family (a pretraining or retrieval model, or
        its online `<M>Model`) as the official `VE.py` initialises one from a pretraining checkpoint: the ViT and
        every BERT layer are the model's, the momentum encoders its momentum encoders (copies of the online ones for
        a model without them), projections, ITM/MLM heads, temperature and queues are left out, and the head is new.

        Args:
            model: the pretrained model.
            official_head_init: initialise the head as the official model does (PyTorch's default `nn.Linear` init,
                the momentum head a copy of it); False keeps transformers' init (normal, std `initializer_range`).
            config_overrides: changes to the copied config (e.g. `alpha`, `distill`); sizes must stay the model's.
                `alpha_warmup_epochs` defaults to 0: the official VE config keeps α constant (`warm_up: False`).
        """
        config_overrides.setdefault("alpha_warmup_epochs", 0.0)
        ve = cls(task_config(model, config_overrides))
        momentum = place_pretrained_weights(ve, model, "entailment", r"^cls_head(_m)?\.")
        if official_head_init:
            for layer in ve.cls_head:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
        pairs = [(ve.cls_head, getattr(ve, "cls_head_m", None))]
        if momentum:  # the model had no momentum encoders: they start as copies, as the official model builds
            pairs += [(getattr(ve, name), getattr(ve, f"{name}_m", None)) for name in VE_MODULES[:-1]]
        for online, momentum_module in pairs:
            if momentum_module is not None:
                for parameter, parameter_m in zip(online.parameters(), momentum_module.parameters(), strict=True):
                    parameter_m.copy_(parameter)
        ve.apply_freezing()
        return ve.train()

    @classmethod
    def _check_folder_model(cls, path: str, folder_config: dict[str, Any], kwargs: dict[str, Any]) -> None:
        """Also refuse a folder of the family that holds no entailment model: loading it would leave the head at
        random; `from_pretraining` initialises one from such a model instead."""
        super()._check_folder_model(path, folder_config, kwargs)
        architectures = folder_config.get("architectures") or []
        if architectures and not any(name.endswith("ForVisualEntailment") for name in architectures):
            raise ValueError(
                f"{path} holds {architectures[0]}, not a visual entailment model: {cls.__name__}.from_pretrained "
                f"would leave its head untrained. Initialise one from it with "
                f"{cls.__name__}.from_pretraining({architectures[0]}.from_pretrained(...)), or convert an official "
                "checkpoint with `vlalign convert --task ve`."
            )

    # -- forward -------------------------------------------------------------------------------------------------

    def encode(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        momentum: bool = False,
        output_flags: dict[str, bool] | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> tuple[torch.Tensor, dict[str, ModelOutput]]:
        """The fused hypothesis tokens `[batch, tokens, width]` (every BERT layer; the fusion layers cross-attend to
        all image tokens) and the towers' outputs; `momentum=True` uses the momentum copies."""
        if input_ids.shape[0] != pixel_values.shape[0]:
            raise ValueError(
                f"Got {input_ids.shape[0]} hypotheses but {pixel_values.shape[0]} images; pass one image per "
                "hypothesis (repeat an image for each of its hypotheses)."
            )
        suffix = "_m" if momentum else ""
        vision_model, text_model, fusion_model = (getattr(self, name + suffix) for name in VE_MODULES[:-1])
        flags = output_flags or {}
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

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        alpha: float | None = None,
        token_type_ids: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> VisualEntailmentOutput:
        r"""
        Entailment scores of each (image, hypothesis) pair; with `labels`, the official training loss.

        Args:
            pixel_values: `[batch, 3, H, W]` one image (premise) per hypothesis.
            input_ids, attention_mask: `[batch, tokens]` hypotheses (processor preset `"train"`: `pre_caption` to 30
                words, "[CLS] text" without [SEP], padded to the longest, no truncation).
            labels: `[batch]` 0 contradiction, 1 neutral, 2 entailment (`config.label2id`).
            alpha: distillation weight; by default the official warm-up at the trainer's step (none when
                `config.alpha_warmup_epochs` is 0, the official VE setting), else `config.alpha` (0 without
                `config.distill`).
            token_type_ids: accepted (tokenizers return them) and ignored: the official model uses segment 0.
            interpolate_pos_encoding: run the ViT at another square size.
            output_attentions, output_hidden_states: the towers' attention maps / states in the `*_output` fields.
        """
        flags = self._output_flags(output_attentions, output_hidden_states)
        self.check_training_duties()
        fused_states, towers = self.encode(
            pixel_values, input_ids, attention_mask, output_flags=flags,
            interpolate_pos_encoding=interpolate_pos_encoding,
        )  # fmt: skip
        logits = self.cls_head(fused_states[:, 0])
        if labels is None:
            return VisualEntailmentOutput(logits=logits, fused_states=fused_states, **towers)
        labels = self._check_labels(labels, logits)
        if self.config.distill:  # the official forward's EMA step before its first momentum pass
            self.prime_momentum()
        alpha = self._distillation_weight(alpha)
        logits_m = None
        if alpha > 0:
            with torch.no_grad():
                fused_m, _ = self.encode(
                    pixel_values, input_ids, attention_mask, momentum=True,
                    interpolate_pos_encoding=interpolate_pos_encoding,
                )  # fmt: skip
                logits_m = self.cls_head_m(fused_m[:, 0])
        loss, loss_ce, loss_distill = entailment_loss(logits, labels, logits_m, alpha)
        check_loss_finite({"loss": loss})
        return VisualEntailmentOutput(
            loss=loss,
            loss_ce=loss_ce,
            loss_distill=loss_distill,
            logits=logits,
            logits_m=logits_m,
            fused_states=fused_states,
            **towers,
        )

    @staticmethod
    def _check_labels(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """`labels` as a `[batch]` long tensor of class indices, checked against the batch and the label count."""
        labels = torch.as_tensor(labels, device=logits.device)
        num_labels = logits.shape[-1]
        if labels.shape != logits.shape[:1] or labels.is_floating_point():
            raise ValueError(
                f"labels has shape {tuple(labels.shape)} and dtype {labels.dtype}; pass one class index per pair: "
                f"integers of shape ({logits.shape[0]},)."
            )
        if labels.numel() and not bool(((labels >= 0) & (labels < num_labels)).all()):
            raise ValueError(
                f"labels must be class indices in 0..{num_labels - 1} (0 contradiction, 1 neutral, 2 entailment); got "
                f"{sorted(set(labels.tolist()))}."
            )
        return labels.long()

    @torch.no_grad()
    def predict(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """`[batch]` the predicted label index of each pair (argmax of the logits, as the official evaluation)."""
        return self(
            pixel_values, input_ids, attention_mask, interpolate_pos_encoding=interpolate_pos_encoding
        ).logits.argmax(-1)

    # -- training duties ----------------------------------------------------------------------------------------

    def after_optimizer_step(self, step: int) -> None:
        """One EMA step of the momentum copies (none without `config.distill`)."""
        self.momentum_update()
        super().after_optimizer_step(step)

    def training_log_values(self) -> dict[str, float]:
        return {"alpha": getattr(self, "_last_alpha", 0.0)}

    def training_duties_description(self) -> str:
        return "momentum EMA"


__all__ = [
    "VE_ID2LABEL",
    "AlbefForVisualEntailment",
    "VisualEntailmentOutput",
    "entailment_head",
    "entailment_loss",
    "entailment_auto_map",
    "with_entailment_labels",
]
