"""ALBEF visual reasoning over two images (NLVR2, the official `model_nlvr.py` + `NLVR.py`) and the text-assignment
pretraining that initialises it (the official `model_pretrain_nlvr.py` + `Pretrain_nlvr.py`).

* [`AlbefTwoImageFusionModel`]: the fusion layers run over two images. The official two-image encoder has 18 BERT
  layers: each pretrained layer from `first_paired_layer` on becomes a *pair* of layers, the first of which
  cross-attends to image 0 and the second to image 1 (every fusion layer attends to image `position % 2`), and within
  a pair the cross-attention key and value projections are shared (the second layer's; queries, output projection and
  LayerNorm stay separate). Built from ALBEF's own layers.
* [`AlbefForVisualReasoning`]: two images + a sentence → true/false, the official MLP head on the fused [CLS], momentum
  distillation (α) with the EMA as a training duty.
* [`AlbefForTextAssignment`]: the 3-way text-assignment task ((own image, other), (other, own image), (two others)),
  the other images drawn from the ITC image-image similarity; the draw takes a `torch.Generator`, and recorded draws
  can be replayed (`pairs`, `labels`).

This file is shipped with saved models (remote code): it imports only torch, transformers and its sibling files.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithCrossAttentions, BaseModelOutputWithPooling
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_albef import AlbefConfig, AlbefTextConfig
from .losses import check_loss_finite
from .modeling_albef_encoders import (
    REMOTE_CODE_AUTO_MAP,
    AlbefFusionModel,
    AlbefPreTrainedModel,
    AlbefTextModel,
    AlbefVisionModel,
)
from .modeling_albef_layers import padding_attention_mask, warn_if_attentions_unavailable
from .modeling_albef_training import MomentumDistillationMixin
from .pipeline_nlvr import REMOTE_PIPELINE as REMOTE_NLVR_PIPELINE
from .pipeline_nlvr import TASK as NLVR_TASK
from .remote_code import task_auto_map
from .training_duties import TrainingDutiesMixin

#: the similarity temperature of the text-assignment draw: a literal in the official code (its `temp` is unused)
TEXT_ASSIGNMENT_SIM_TEMPERATURE = 0.07

# ---------------------------------------------------------------------------------------------------------------------
# Configuration helpers
# ---------------------------------------------------------------------------------------------------------------------


def first_paired_layer(text_config: AlbefTextConfig) -> int:
    """The first BERT layer of the two-image encoder's pairs (`text_config.first_paired_layer`, written by
    `two_image_config`; default the first fusion layer)."""
    value = getattr(text_config, "first_paired_layer", None)
    return text_config.fusion_layer if value is None else int(value)


def two_image_config(config: AlbefConfig, first_paired: int | None = None, **text_overrides) -> AlbefConfig:
    """A copy of a (pretraining) config for the two-image encoder: every BERT layer from `first_paired` (default the
    first fusion layer) on becomes two layers, so `num_hidden_layers` N becomes `first_paired + 2 (N - first_paired)`
    (18 for BERT-base, as the official models hard-code). A config that already is one is returned as a copy."""
    config = copy.deepcopy(config)
    text = config.text_config
    for name, value in text_overrides.items():
        setattr(text, name, value)
    if getattr(text, "first_paired_layer", None) is not None:
        return config
    first = text.fusion_layer if first_paired is None else first_paired
    if not text.fusion_layer <= first <= text.num_hidden_layers:
        raise ValueError(
            f"The paired layers must start at a fusion layer: first_paired={first} is outside "
            f"[{text.fusion_layer}, {text.num_hidden_layers}]."
        )
    text.num_hidden_layers = first + 2 * (text.num_hidden_layers - first)
    text.first_paired_layer = first
    return config


def two_image_layer_sources(text_config: AlbefTextConfig) -> list[int]:
    """For each BERT layer of the two-image encoder, the pretrained layer it is initialised from (official loading
    block: layer l < first_paired → l; layer first_paired + 2i and + 2i + 1 → pretrained layer first_paired + i)."""
    first = first_paired_layer(text_config)
    return [layer if layer < first else first + (layer - first) // 2 for layer in range(text_config.num_hidden_layers)]


# ---------------------------------------------------------------------------------------------------------------------
# The two-image fusion encoder
# ---------------------------------------------------------------------------------------------------------------------


class SharedProjection:
    """Another attention module's key or value projection, called in place of one's own. Not a submodule, so the
    shared weight is saved, counted, optimised and EMA-updated once (as a shared `nn.Parameter` is in the official
    model, where both layers' state-dict entries name the same tensor)."""

    def __init__(self, owner: nn.Module, name: str):
        self.owner, self.name = owner, name

    @property
    def module(self) -> nn.Linear:
        return getattr(self.owner, self.name)

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.module.bias

    def __call__(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.module(hidden_states)

    def __deepcopy__(self, memo: dict) -> SharedProjection:
        return SharedProjection(copy.deepcopy(self.owner, memo), self.name)


class AlbefTwoImageFusionModel(AlbefFusionModel):
    """ALBEF's fusion layers over a pair of images (the official xbert run with a list of two image states): fusion
    layer at position p cross-attends to image `p % 2`; the layers from `first_paired_layer` on come in pairs whose
    cross-attention keys and values are shared (the second layer's projections, see [`SharedProjection`])."""

    def __init__(self, config: AlbefTextConfig):
        super().__init__(config)
        first = first_paired_layer(config)
        if (config.num_hidden_layers - first) % 2 or first < config.fusion_layer:
            raise ValueError(
                f"The two-image encoder pairs its layers from layer {first}: num_hidden_layers="
                f"{config.num_hidden_layers} must exceed it by an even number and fusion_layer={config.fusion_layer} "
                "must not come after it (build the config with two_image_config)."
            )
        for position in range(first - config.fusion_layer, len(self.layers), 2):
            shared, owner = self.layers[position].cross_attn, self.layers[position + 1].cross_attn
            for name in ("key", "value"):
                delattr(shared, name)
                setattr(shared, name, SharedProjection(owner, name))

    @capture_outputs
    def forward(
        self,
        text_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_hidden_states: tuple[torch.Tensor, torch.Tensor] | None = None,
        image_attention_mask: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
        image_index: torch.Tensor | None = None,
        text_self_attended: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithCrossAttentions:
        r"""
        Args:
            text_hidden_states: `[batch, tokens, width]` text-encoder outputs; attention_mask: their padding mask.
            image_hidden_states: (image 0, image 1), each `[batch, patches, vision width]`.
            image_attention_mask: their padding masks (None: all real).
            image_index, text_self_attended: not supported here (one image pair per text).
            output_attentions, output_hidden_states: also return each layer's self- and cross-attention maps (eager
                attention) / states.
        """
        warn_if_attentions_unavailable(self.config, output_attentions)
        if image_index is not None or text_self_attended:
            raise ValueError("The two-image encoder takes one image pair per text (no image_index).")
        if image_hidden_states is None or len(image_hidden_states) != 2:
            raise ValueError("The two-image encoder needs image_hidden_states=(image 0 states, image 1 states).")
        image_attention_mask = image_attention_mask or (None, None)
        hidden_states = text_hidden_states
        mask = padding_attention_mask(self.config, hidden_states, attention_mask)
        image_masks = [
            padding_attention_mask(self.config, hidden_states, image_mask, images)
            for images, image_mask in zip(image_hidden_states, image_attention_mask, strict=True)
        ]
        for position, layer in enumerate(self.layers):
            side = position % 2
            hidden_states = layer(hidden_states, mask, image_hidden_states[side], image_masks[side])
        return BaseModelOutputWithCrossAttentions(last_hidden_state=hidden_states)


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class AlbefVisualReasoningOutput(ModelOutput):
    """
    Output of [`AlbefForVisualReasoning.forward`].

    Args:
        loss: (1-α)·cross-entropy + α·soft cross-entropy against the momentum model's softmax (the official loss);
            None without labels.
        loss_ce: the cross-entropy part; loss_distill: the soft cross-entropy part (when α > 0).
        logits: `[pairs, 2]` false/true scores of the fused [CLS].
        logits_m: `[pairs, 2]` the momentum model's scores (when α > 0).
        fused_states: `[pairs, tokens, width]` the text tokens after the last layer.
        image_embeds: `[2 * pairs, patches + 1, vision width]` the ViT tokens, all images 0 then all images 1.
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
    fusion_model_output: BaseModelOutputWithCrossAttentions | None = None


@dataclasses.dataclass
class AlbefTextAssignmentOutput(ModelOutput):
    """
    Output of [`AlbefForTextAssignment.forward`].

    Args:
        loss: cross-entropy of `logits` against `labels`.
        logits: `[texts, 3]` scores of (own image, other) / (other, own image) / (two other images).
        labels: `[texts]` the assignment of each text (drawn or replayed).
        pairs: `[texts, 2]` the (left, right) image indices each text was fused with.
        sim_weights: `[images, images]` the sampling weights of the other images (softmax of the ITC image-image
            similarity / 0.07, zero diagonal).
        fused_states, image_embeds, vision_model_output, text_model_output, fusion_model_output: as in
            [`AlbefVisualReasoningOutput`] (`image_embeds` one row per image).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    pairs: torch.Tensor | None = None
    sim_weights: torch.Tensor | None = None
    fused_states: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    fusion_model_output: BaseModelOutputWithCrossAttentions | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Shared machinery
# ---------------------------------------------------------------------------------------------------------------------


class VisualReasoningHead(nn.Module):
    """The official NLVR head: Linear → ReLU → Linear to 2 classes (false 0, true 1)."""

    def __init__(self, hidden_size: int, num_labels: int = 2):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.act = nn.ReLU()
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.act(self.dense(hidden_states)))


class TwoImageEncoderMixin:
    """The two-image encoding shared by the NLVR and text-assignment models of the family: ViT, text encoder and
    [`AlbefTwoImageFusionModel`] (`vision_model`, `text_model`, `fusion_model`, and `_m` copies where present)."""

    #: what a folder this class loads holds (its `architectures` end with it), and how to make one from another model
    folder_architecture_suffix: str = ""
    folder_initialisation_hint: str = ""

    @classmethod
    def _check_folder_model(cls, path: str, folder_config: dict[str, Any], kwargs: dict[str, Any]) -> None:
        """Also refuse a folder of the family that holds another model (a pretraining, VE or text-assignment one):
        its layers are not the two-image encoder's (or its head would load at random)."""
        super()._check_folder_model(path, folder_config, kwargs)
        architectures = folder_config.get("architectures") or []
        if architectures and not any(name.endswith(cls.folder_architecture_suffix) for name in architectures):
            raise ValueError(
                f"{path} holds {architectures[0]}, not a {cls.folder_architecture_suffix.removeprefix('For')} model: "
                f"{cls.__name__}.from_pretrained would leave weights untrained or misplaced. "
                + cls.folder_initialisation_hint.format(name=cls.__name__)
            )

    @classmethod
    def two_image_config(cls, config: AlbefConfig) -> AlbefConfig:
        """The model's config from a pretraining config of the family (`two_image_config`: ALBEF pairs its fusion
        layers); a config already built for two images is kept."""
        return two_image_config(config)

    def _build_encoders(self, config: AlbefConfig, suffix: str = "") -> None:
        setattr(self, f"vision_model{suffix}", AlbefVisionModel._from_config(config.vision_config))
        setattr(self, f"text_model{suffix}", AlbefTextModel._from_config(config.text_config))
        setattr(self, f"fusion_model{suffix}", AlbefTwoImageFusionModel._from_config(config.text_config))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_model.set_input_embeddings(value)

    def fuse_pairs(
        self,
        image_embeds: torch.Tensor,
        left: torch.Tensor,
        right: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None = None,
        momentum: bool = False,
        output_flags: dict[str, bool] | None = None,
    ) -> tuple[torch.Tensor, dict[str, ModelOutput]]:
        """Each text fused with images `left[b]` (image 0) and `right[b]` (image 1) of `image_embeds`; returns the
        fused states and the text/fusion towers' outputs."""
        suffix = "_m" if momentum else ""
        text_model, fusion_model = getattr(self, "text_model" + suffix), getattr(self, "fusion_model" + suffix)
        flags = output_flags or {}
        text_outputs = text_model(input_ids, attention_mask, token_type_ids, **flags)
        fusion_outputs = fusion_model(
            text_outputs.last_hidden_state, attention_mask, (image_embeds[left], image_embeds[right]), **flags
        )
        towers = {"text_model_output": text_outputs, "fusion_model_output": fusion_outputs}
        return fusion_outputs.last_hidden_state, towers


def split_image_pairs(pixel_values: torch.Tensor, num_texts: int) -> torch.Tensor:
    """`[2 * pairs, 3, H, W]` images in the official order (all images 0, then all images 1: `torch.cat([image0,
    image1])`) from that layout or from `[pairs, 2, 3, H, W]`."""
    if pixel_values.dim() == 5:
        if pixel_values.shape[1] != 2:
            raise ValueError(f"pixel_values of shape {tuple(pixel_values.shape)}: pass [pairs, 2, 3, H, W].")
        pixel_values = torch.cat([pixel_values[:, 0], pixel_values[:, 1]])
    if pixel_values.dim() != 4 or pixel_values.shape[0] != 2 * num_texts:
        raise ValueError(
            f"Got {num_texts} sentences and pixel_values of shape {tuple(pixel_values.shape)}: pass two images per "
            "sentence, as [pairs, 2, 3, H, W] or [2 * pairs, 3, H, W] (all left images, then all right images)."
        )
    return pixel_values


# ---------------------------------------------------------------------------------------------------------------------
# NLVR2
# ---------------------------------------------------------------------------------------------------------------------


def reasoning_auto_map(family_auto_map: dict[str, str], reasoning_class: str) -> dict[str, str]:
    """The `auto_map` of a saved NLVR2 folder: the family's config, and the reasoning class (`module.Class`) for
    `AutoModelForVisualReasoning` and for `AutoModel`, the Auto class `transformers.pipeline` loads the
    `visual-reasoning` pipeline's model with under `trust_remote_code=True`."""
    return {
        "AutoConfig": family_auto_map["AutoConfig"],
        "AutoModel": reasoning_class,
        "AutoModelForVisualReasoning": reasoning_class,
    }


class AlbefForVisualReasoning(
    TwoImageEncoderMixin, MomentumDistillationMixin, TrainingDutiesMixin, AlbefPreTrainedModel
):
    """ALBEF fine-tuned for NLVR2 (the official `model_nlvr.py`): both images run through the ViT, the sentence through
    the text encoder and [`AlbefTwoImageFusionModel`], and `cls_head` ([`VisualReasoningHead`]) scores the fused [CLS]
    as false (0) / true (1).

    With `config.distill` the ViT, both BERT towers and the head have momentum copies that supply the distillation
    targets (weight α) and take one EMA step after every optimizer step (a training duty). The official forward takes
    it before its momentum pass, so the first training forward of a run also takes one (`prime_momentum`): the momentum
    copies start from construction-time weights, and the official teacher of step 0 is already one step towards the
    online model.

    `vlalign convert --task nlvr2` initialises it as the official `NLVR.py` does from a text-assignment checkpoint (or
    from a pretraining checkpoint through the text-assignment layer doubling), or loads an official NLVR checkpoint;
    `from_pretraining` / `from_text_assignment` do the same from vlalign models.
    """

    main_input_name = "pixel_values"
    #: saved folders name the visual-reasoning pipeline (shipped beside the code) for `trust_remote_code=True`
    remote_code_pipelines = {NLVR_TASK: REMOTE_NLVR_PIPELINE}
    remote_code_auto_map = reasoning_auto_map(REMOTE_CODE_AUTO_MAP, "modeling_albef_nlvr.AlbefForVisualReasoning")
    folder_architecture_suffix = "ForVisualReasoning"
    folder_initialisation_hint = (
        "Initialise one with {name}.from_pretraining(...) or from_text_assignment(...), or convert an official "
        "checkpoint with `vlalign convert --task nlvr2`."
    )

    def __init__(self, config: AlbefConfig):
        config = self.two_image_config(config)
        super().__init__(config)
        self.has_training_duties = config.distill
        hidden = config.text_config.hidden_size
        self._build_encoders(config)
        self.cls_head = VisualReasoningHead(hidden)
        if config.distill:
            self._build_encoders(config, "_m")
            self.cls_head_m = VisualReasoningHead(hidden)
        self.post_init()
        self.apply_freezing()

    # -- initialisation from other models ---------------------------------------------------------------------

    @classmethod
    @torch.no_grad()
    def from_text_assignment(cls, model: nn.Module, momentum_from_loaded: bool = False, **config_overrides):
        """An NLVR2 model initialised from a text-assignment model as the official `NLVR.py` does: the encoders are
        the text-assignment model's, the head is fresh, and, by default, the momentum copies keep the copy of the
        *construction-time* weights (the official script copies parameters before loading the checkpoint, so the
        teacher starts random and the distillation term is not a no-op at first). `momentum_from_loaded=True` starts
        them from the loaded weights instead (the evident intent)."""
        config = copy.deepcopy(model.config)
        for name, value in config_overrides.items():
            setattr(config, name, value)
        nlvr = cls(config)
        expected = nlvr.state_dict()
        weights = {
            key: value
            for key, value in model.state_dict().items()
            if key.startswith(("vision_model.", "text_model.", "fusion_model.")) and key in expected
        }
        nlvr.load_state_dict(weights, strict=False)
        if momentum_from_loaded and config.distill:
            nlvr.copy_params_to_momentum()
        nlvr.apply_freezing()
        return nlvr.train()

    @classmethod
    @torch.no_grad()
    def from_pretraining(
        cls,
        model: nn.Module,
        momentum_from_loaded: bool = False,
        zero_token_types: bool = False,
        **config_overrides,
    ):
        """An NLVR2 model from a pretraining or retrieval model of the family (or its online model), through the
        text-assignment initialisation ([`AlbefForTextAssignment.from_pretraining`]: every pretrained layer from
        the first paired layer on initialises both layers of its pair) without the text-assignment training."""
        assignment = cls.text_assignment_class().from_pretraining(model, zero_token_types, **config_overrides)
        return cls.from_text_assignment(assignment, momentum_from_loaded)

    @classmethod
    def text_assignment_class(cls) -> type:
        return AlbefForTextAssignment

    # -- forward ----------------------------------------------------------------------------------------------

    def reason(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None = None,
        momentum: bool = False,
        output_flags: dict[str, bool] | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, ModelOutput]]:
        """(logits `[pairs, 2]`, fused states, towers) of the online or momentum model; `pixel_values` as
        `split_image_pairs` returns them."""
        suffix = "_m" if momentum else ""
        flags = output_flags or {}
        vision_outputs = getattr(self, "vision_model" + suffix)(pixel_values, interpolate_pos_encoding, **flags)
        image_embeds = vision_outputs.last_hidden_state
        num_pairs = input_ids.shape[0]
        left = torch.arange(num_pairs, device=image_embeds.device)
        fused, towers = self.fuse_pairs(
            image_embeds, left, left + num_pairs, input_ids, attention_mask, token_type_ids, momentum, flags
        )
        logits = getattr(self, "cls_head" + suffix)(fused[:, 0])
        towers = {"image_embeds": image_embeds, "vision_model_output": vision_outputs, **towers}
        return logits, fused, towers

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
    ) -> AlbefVisualReasoningOutput:
        r"""
        Args:
            pixel_values: the two images of each sentence: `[pairs, 2, 3, H, W]`, or `[2 * pairs, 3, H, W]` with all
                left images first, then all right images (the official `torch.cat([image0, image1])`).
            input_ids, attention_mask: `[pairs, tokens]` the sentences.
            labels: `[pairs]` 1 where the sentence is true of the pair, else 0; gives the loss.
            alpha: distillation weight; by default the official warm-up at the trainer's step, else `config.alpha`
                (0 when `config.distill` is off).
            token_type_ids: BERT segment ids (ALBEF uses 0 throughout).
            interpolate_pos_encoding: run the ViT at another square size.
            output_attentions, output_hidden_states: the towers' attention maps / states in the `*_output` fields.
        """
        flags = self._output_flags(output_attentions, output_hidden_states)
        pixel_values = split_image_pairs(pixel_values, input_ids.shape[0])
        logits, fused, towers = self.reason(
            pixel_values, input_ids, attention_mask, token_type_ids, output_flags=flags,
            interpolate_pos_encoding=interpolate_pos_encoding,
        )  # fmt: skip
        output = AlbefVisualReasoningOutput(logits=logits, fused_states=fused, **towers)
        if labels is None:
            return output
        self.check_training_duties()
        if self.config.distill:  # the official forward's EMA step before its first momentum pass
            self.prime_momentum()
        alpha = self._distillation_weight(alpha)
        output.loss_ce = F.cross_entropy(logits.float(), labels)
        output.loss = output.loss_ce
        if alpha > 0:
            with torch.no_grad():
                output.logits_m, _, _ = self.reason(
                    pixel_values, input_ids, attention_mask, token_type_ids, momentum=True,
                    interpolate_pos_encoding=interpolate_pos_encoding,
                )  # fmt: skip
            soft = F.softmax(output.logits_m.float(), dim=1)
            output.loss_distill = -(F.log_softmax(logits.float(), dim=1) * soft).sum(1).mean()
            output.loss = (1 - alpha) * output.loss_ce + alpha * output.loss_distill
        check_loss_finite({"loss": output.loss})
        return output

    # -- training duties --------------------------------------------------------------------------------------

    def after_optimizer_step(self, step: int) -> None:
        """One EMA step of the momentum copies (none without `config.distill`)."""
        self.momentum_update()
        super().after_optimizer_step(step)

    def training_log_values(self) -> dict[str, float]:
        return {"alpha": getattr(self, "_last_alpha", 0.0)}

    def training_duties_description(self) -> str:
        return "momentum EMA"


# ---------------------------------------------------------------------------------------------------------------------
# Text assignment
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def zero_missing_token_types(model: nn.Module, loaded: Iterable[str]) -> None:
    """Zero the token-type table of `model`'s text encoder when the `loaded` weight names lack it (the switch for
    the official quirk that leaves SIMLA's at its random construction values)."""
    key = "text_model.embeddings.token_type_embeddings.weight"
    if key not in set(loaded) and model.text_model.embeddings.token_type_embeddings is not None:
        model.text_model.embeddings.token_type_embeddings.weight.zero_()


def draw_text_assignment(
    weights: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official draw, per text b in order: with probability 2/3 one other image o ~ weights[b], then (b, o) label
    0 or (o, b) label 1 with equal probability; otherwise two other images ~ weights[b] without replacement, label 2.
    `generator` (CPU) makes it reproducible; None draws from torch's global generator as the official code does.
    Returns (pairs `[texts, 2]`, labels `[texts]`)."""
    weights = weights.detach().float().cpu()
    pairs, labels = [], []
    for b in range(weights.shape[0]):
        if torch.rand(1, generator=generator) > 1 / 3:
            other = int(torch.multinomial(weights[b], 1, generator=generator).item())
            if torch.rand(1, generator=generator) > 0.5:
                pairs.append((b, other))
                labels.append(0)
            else:
                pairs.append((other, b))
                labels.append(1)
        else:
            first, second = torch.multinomial(weights[b], 2, generator=generator).tolist()
            pairs.append((first, second))
            labels.append(2)
    return torch.tensor(pairs, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


class AlbefForTextAssignment(TwoImageEncoderMixin, AlbefPreTrainedModel):
    """ALBEF's text-assignment pretraining for NLVR2 (the official `model_pretrain_nlvr.py`): each caption is fused
    with two images and `ta_head` says where its own image is: left (0), right (1) or neither (2). The other images
    come from the batch, drawn by the ITC image-image similarity (`vision_proj`, temperature 0.07).
    `temp` and `text_proj` are kept because the official model has them (its checkpoint holds them), though unused;
    they and `vision_proj` receive no gradient from the official loss and are kept frozen.

    `from_pretraining` and `vlalign convert --task text-assignment` initialise it as the official `Pretrain_nlvr.py`:
    each pretrained BERT layer from the first fusion layer on initialises both layers of its pair."""

    main_input_name = "pixel_values"
    #: a saved folder carries this file and its imports, not `modeling_albef.py`: its `auto_map` names only those
    remote_code_auto_map = task_auto_map(
        REMOTE_CODE_AUTO_MAP, "AutoModelForTextAssignment", "modeling_albef_nlvr.AlbefForTextAssignment"
    )
    folder_architecture_suffix = "ForTextAssignment"
    folder_initialisation_hint = (
        "Initialise one with {name}.from_pretraining(...), or convert an official checkpoint with "
        "`vlalign convert --task text-assignment`."
    )

    def __init__(self, config: AlbefConfig):
        config = self.two_image_config(config)
        super().__init__(config)
        hidden = config.text_config.hidden_size
        self._build_encoders(config)
        self.vision_proj = nn.Linear(config.vision_config.hidden_size, config.embed_dim)
        self.text_proj = nn.Linear(hidden, config.embed_dim)
        self.temp = nn.Parameter(torch.tensor(float(config.temp)))
        self.ta_head = nn.Linear(hidden, 3)
        self.post_init()
        self.apply_freezing()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self:
            self.temp.fill_(self.config.temp)

    def frozen_modules(self) -> list[nn.Module]:
        """The projections: the official loss never reaches them (`vision_proj` only weighs the draw, under no_grad;
        `text_proj` is unused), so its AdamW, which skips parameters without gradients, never changes them."""
        return [*super().frozen_modules(), self.vision_proj, self.text_proj]

    def apply_freezing(self) -> None:
        """`frozen_modules` and the unused temperature stay frozen."""
        super().apply_freezing()
        self.temp.requires_grad_(False)

    @classmethod
    @torch.no_grad()
    def from_pretraining(cls, model: nn.Module, zero_token_types: bool = False, **config_overrides):
        """A text-assignment model initialised from a pretraining or retrieval model of the family (or its online
        model) as the official `Pretrain_nlvr.py` does: the ViT, text embeddings, layers before the first paired layer
        and the projections are the model's; pretrained layer `first + i` initialises both layers `first + 2i` and
        `first + 2i + 1`; `ta_head` (and any weight the pretrained model lacks) is fresh; momentum weights, heads and
        queues are left out. A token-type table the pretrained model lacks (SIMLA's MED BERT) keeps its random
        construction values, whose row 0 is then added to every token (the official quirk);
        `zero_token_types=True` starts it at zeros instead, so the pretrained embeddings are unchanged."""
        config = copy.deepcopy(model.config)
        for name, value in config_overrides.items():
            setattr(config, name, value)
        assignment = cls(config)
        prefix = f"{model.base_model_prefix}."
        state = {key.removeprefix(prefix): value for key, value in model.state_dict().items()}
        text = assignment.config.text_config
        sources = two_image_layer_sources(text)
        fusion = text.fusion_layer
        expected = assignment.state_dict()
        weights = {key: value for key, value in state.items() if key in expected and "fusion_model." not in key}
        for layer, source in enumerate(sources):
            if layer < fusion:
                continue
            source_prefix = f"fusion_model.layers.{source - fusion}."
            for key, value in state.items():
                if key.startswith(source_prefix):
                    target = f"fusion_model.layers.{layer - fusion}.{key.removeprefix(source_prefix)}"
                    if target in expected:
                        weights[target] = value
        mismatched = [key for key, value in weights.items() if value.shape != expected[key].shape]
        if mismatched:
            raise ValueError(f"Shapes differ for {mismatched[:5]}: config_overrides may not change the model's sizes.")
        assignment.load_state_dict(weights, strict=False)
        if zero_token_types:
            zero_missing_token_types(assignment, weights)
        return assignment.train()

    @torch.no_grad()
    def sampling_weights(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """`[images, images]` softmax(normalised `vision_proj`(CLS) similarities / 0.07) with a zero diagonal."""
        features = F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)
        weights = F.softmax(features @ features.t() / TEXT_ASSIGNMENT_SIM_TEMPERATURE, dim=1)
        return weights.fill_diagonal_(0)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pairs: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        token_type_ids: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> AlbefTextAssignmentOutput:
        r"""
        Args:
            pixel_values: `[batch, 3, H, W]` each caption's own image.
            input_ids, attention_mask: `[batch, tokens]` the captions.
            pairs, labels: `[batch, 2]` (left, right) image indices and `[batch]` assignments to replay (e.g. a
                recorded draw); both or neither. Without them they are drawn (`draw_text_assignment`).
            generator: a CPU `torch.Generator` for the draw (None: torch's global generator, as the official code).
            token_type_ids: BERT segment ids (0 throughout).
            interpolate_pos_encoding: run the ViT at another square size.
            output_attentions, output_hidden_states: the towers' attention maps / states in the `*_output` fields.
        """
        flags = self._output_flags(output_attentions, output_hidden_states)
        if (pairs is None) != (labels is None):
            raise ValueError("Pass both pairs and labels (a draw to replay) or neither (draw them).")
        if input_ids.shape[0] != pixel_values.shape[0]:
            raise ValueError(f"Got {input_ids.shape[0]} captions but {pixel_values.shape[0]} images; pass one each.")
        if input_ids.shape[0] < 3:
            raise ValueError("Text assignment draws two other images per caption: pass a batch of at least 3.")
        vision_outputs = self.vision_model(pixel_values, interpolate_pos_encoding, **flags)
        image_embeds = vision_outputs.last_hidden_state
        weights = self.sampling_weights(image_embeds)
        if pairs is None:
            pairs, labels = draw_text_assignment(weights, generator)
        pairs, labels = pairs.to(image_embeds.device), labels.to(image_embeds.device)
        fused, towers = self.fuse_pairs(
            image_embeds, pairs[:, 0], pairs[:, 1], input_ids, attention_mask, token_type_ids, output_flags=flags
        )
        logits = self.ta_head(fused[:, 0])
        loss = F.cross_entropy(logits.float(), labels)
        check_loss_finite({"loss": loss})
        return AlbefTextAssignmentOutput(
            loss=loss,
            logits=logits,
            labels=labels,
            pairs=pairs,
            sim_weights=weights,
            fused_states=fused,
            image_embeds=image_embeds,
            vision_model_output=vision_outputs,
            **towers,
        )


__all__ = [
    "AlbefForTextAssignment",
    "AlbefForVisualReasoning",
    "AlbefTextAssignmentOutput",
    "AlbefTwoImageFusionModel",
    "AlbefVisualReasoningOutput",
    "SharedProjection",
    "TwoImageEncoderMixin",
    "VisualReasoningHead",
    "draw_text_assignment",
    "first_paired_layer",
    "reasoning_auto_map",
    "split_image_pairs",
    "two_image_config",
    "two_image_layer_sources",
    "zero_missing_token_types",
]
