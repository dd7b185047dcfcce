"""ALBEF's optimizer parameter groups: the weight-decay rule of the official `optim_factory`.

It lives with the models (not the training code) because it is a property of the model family: training code asks
`model.optimizer_parameter_groups(weight_decay)`, as timm asks a model for `no_weight_decay()`.
"""

from __future__ import annotations

import torch
from torch import nn


def _is_no_decay(name: str, param: torch.Tensor) -> bool:
    """ALBEF's rule: 1-D tensors (LayerNorm weights, biases, ...) and anything named ``*.bias`` are not decayed.

    0-D tensors (the learnable contrastive temperature ``temp``) and N-D tensors (``cls_token``, position
    embeddings, projection matrices) are decayed. A top-level parameter literally called ``bias`` has no dot, so
    only its shape (1-D in practice) keeps it out of weight decay - exactly as in the official code.
    """
    return param.ndim == 1 or name.endswith(".bias")


def albef_parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split the trainable parameters of ``model`` into ALBEF's ``[decay, no_decay]`` AdamW parameter groups.

    The official ``optim_factory`` (inherited from timm's ``add_weight_decay``) puts a parameter in the no-decay group
    when ``param.ndim == 1`` or ``name.endswith(".bias")``; all other trainable parameters get ``weight_decay``.
    Parameters with ``requires_grad=False`` (the momentum encoders, frozen towers) are left out entirely. Shared
    (tied) parameters are listed once, under the first name ``named_parameters()`` yields.

    A model may exempt more parameters by name with a `no_weight_decay_suffixes` attribute (CODIS's prototypes, which
    are re-normalised after every step).

    Consequences worth knowing: the 0-D learnable temperature ``temp``, the ViT ``cls_token`` and the position
    embeddings **are** decayed; LayerNorm weights and all biases are **not**.

    Contrast with the :class:`transformers.Trainer` default (``Trainer.get_decay_parameter_names`` in
    transformers 5.x): it decides by *module type and name*, never by shape. It exempts every parameter inside an
    ``nn.LayerNorm`` and every parameter whose lower-cased full name contains ``bias``, ``layernorm``, ``rmsnorm``,
    a ``norm`` path component or ``_norm``. A 0-D parameter therefore gets weight decay there too (``temp`` is
    decayed by both rules), but the two rules disagree on e.g. a free-standing 1-D parameter that is not in a norm
    layer (decayed by the Trainer, not by ALBEF) or a multi-dimensional tensor whose name merely contains ``bias``,
    such as ``relative_position_bias_table`` (exempt in the Trainer, decayed by ALBEF).

    Returns two groups, always in the order ``[decay, no_decay]`` (either may be empty, so the structure of the
    optimizer - and therefore of its checkpoints - does not depend on the model). Each group is a dict with
    ``"params"`` (tensors), ``"weight_decay"`` and ``"param_names"``. ``param_names`` is the key torch (>= 2.6)
    itself uses for named parameter groups; it is carried through ``optimizer.state_dict()`` and older torch
    versions simply keep it as an extra group option, so it is kept for debuggability.
    """
    decay: list[torch.Tensor] = []
    decay_names: list[str] = []
    no_decay: list[torch.Tensor] = []
    no_decay_names: list[str] = []
    exempt = tuple(getattr(model, "no_weight_decay_suffixes", ()))
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if _is_no_decay(name, param) or name.endswith(exempt):
            no_decay.append(param)
            no_decay_names.append(name)
        else:
            decay.append(param)
            decay_names.append(name)
    return [
        {"params": decay, "weight_decay": float(weight_decay), "param_names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "param_names": no_decay_names},
    ]


__all__ = ["albef_parameter_groups"]
