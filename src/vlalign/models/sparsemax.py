"""Sparsemax (Martins & Astudillo, 2016): the Euclidean projection of a score vector onto the probability simplex.

Unlike softmax it returns exact zeros: `p_i = max(0, z_i - tau)` with the threshold `tau` chosen so that the entries
sum to one. FDT uses it to pick a sparse convex combination of its codebook rows.

The backward pass is the closed-form Jacobian-vector product `grad_z = 1_S * (g - mean_S(g))` over the support `S`,
which is what autograd through the official sort-based forward computes as well. Half-precision inputs are computed
in float32 (after FDT's temperature the scores differ by ~1e-3 and the support test loses precision in 16 bits) and
cast back.

This file is shipped with saved models (remote code): it imports only torch.
"""

from __future__ import annotations

import torch
from torch import nn


def _sparsemax_threshold(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tau, support size) of the rows of `z` along its last dimension, both with a trailing dimension of 1."""
    sorted_z, _ = torch.sort(z, dim=-1, descending=True)
    cumulative = sorted_z.cumsum(dim=-1)
    ranks = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    # The support test 1 + j * z_(j) > sum_{r<=j} z_(r) holds for a prefix of the sorted entries.
    in_support = 1 + ranks * sorted_z > cumulative
    support_size = in_support.sum(dim=-1, keepdim=True)
    tau = (cumulative.gather(-1, support_size - 1) - 1) / support_size.to(z.dtype)
    return tau, support_size


class SparsemaxFunction(torch.autograd.Function):
    """Sparsemax along `dim` with the closed-form backward."""

    @staticmethod
    def forward(ctx, input: torch.Tensor, dim: int = -1) -> torch.Tensor:
        compute_dtype = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
        z = input.to(compute_dtype).transpose(dim, -1)
        z = z - z.amax(dim=-1, keepdim=True)  # does not change the result; keeps the cumulative sums small
        tau, _ = _sparsemax_threshold(z)
        output = torch.clamp(z - tau, min=0).transpose(dim, -1)
        ctx.dim = dim
        ctx.input_dtype = input.dtype
        ctx.save_for_backward(output)
        return output.to(input.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (output,) = ctx.saved_tensors
        dim = ctx.dim
        grad = grad_output.to(output.dtype)
        support = (output > 0).to(output.dtype)
        support_size = support.sum(dim=dim, keepdim=True)
        mean_on_support = (grad * support).sum(dim=dim, keepdim=True) / support_size
        return (support * (grad - mean_on_support)).to(ctx.input_dtype), None


def sparsemax(input: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sparsemax of `input` along `dim`: non-negative, sums to 1 along `dim`, exactly 0 outside the support."""
    return SparsemaxFunction.apply(input, dim)


def sparsemax_support_size(probabilities: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Number of non-zero entries of sparsemax outputs along `dim`."""
    return (probabilities > 0).sum(dim=dim)


class Sparsemax(nn.Module):
    """Module form of [`sparsemax`] (stateless)."""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return sparsemax(input, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


__all__ = ["Sparsemax", "SparsemaxFunction", "sparsemax", "sparsemax_support_size"]
