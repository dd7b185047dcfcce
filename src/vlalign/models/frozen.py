"""Parameters a model keeps frozen (ALBEF's momentum encoders, FDT's random patch embedding) stay frozen.

transformers 5.x `from_pretrained` replaces parameters while loading, which resets `requires_grad`; a frozen
momentum encoder would then be trained by the optimizer (and DDP would need `find_unused_parameters`).

This file is shipped with saved models (remote code): it imports only torch.
"""

from __future__ import annotations

from torch import nn


class FrozenParametersMixin:
    """Re-applies `requires_grad=False` to `frozen_modules()` after construction, `from_pretrained` and `train()`."""

    def frozen_modules(self) -> list[nn.Module]:
        """The sub-modules whose parameters are never trained by the optimizer."""
        return []

    def apply_freezing(self) -> None:
        for module in self.frozen_modules():
            module.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)  # (model, loading info) with output_loading_info=True
        (loaded[0] if isinstance(loaded, tuple) else loaded).apply_freezing()
        return loaded

    def train(self, mode: bool = True):
        super().train(mode)
        self.apply_freezing()
        return self


__all__ = ["FrozenParametersMixin"]
