"""Sparsemax: the simplex projection, its closed-form backward, and parity with the official FDT module's outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlalign.models.sparsemax import Sparsemax, sparsemax, sparsemax_support_size

FDT_FIXTURES = Path(__file__).parent / "fixtures" / "fdt"


def simplex_projection(z: torch.Tensor) -> torch.Tensor:
    """Reference: the Euclidean projection of each row onto the simplex, by bisection on the threshold."""
    low = z.min(dim=-1, keepdim=True).values - 1
    high = z.max(dim=-1, keepdim=True).values
    for _ in range(200):
        tau = (low + high) / 2
        too_big = torch.clamp(z - tau, min=0).sum(dim=-1, keepdim=True) > 1
        low = torch.where(too_big, tau, low)
        high = torch.where(too_big, high, tau)
    return torch.clamp(z - (low + high) / 2, min=0)


@pytest.fixture(scope="module")
def golden():
    return load_file(FDT_FIXTURES / "outputs.safetensors")


@pytest.mark.parametrize("scale", [0.01, 1.0, 10.0])
def test_matches_simplex_projection(scale):
    z = torch.randn(6, 33, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * scale
    torch.testing.assert_close(sparsemax(z), simplex_projection(z), atol=1e-10, rtol=0)


def test_rows_are_distributions_and_sparse():
    z = torch.randn(8, 100, generator=torch.Generator().manual_seed(1)) * 5
    p = sparsemax(z)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(8))
    assert (sparsemax_support_size(p) < 100).all()
    assert (sparsemax_support_size(p) >= 1).all()


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_any_dim_equals_last_dim(dim):
    z = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(2))
    expected = sparsemax(z.movedim(dim, -1)).movedim(-1, dim)
    torch.testing.assert_close(Sparsemax(dim)(z), expected)
    torch.testing.assert_close(sparsemax(z, dim).sum(dim), torch.ones_like(z.sum(dim)))


@pytest.mark.parametrize("dim", [0, -1])
def test_gradcheck(dim):
    z = torch.randn(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: sparsemax(x, dim), (z,))


def test_closed_form_backward():
    z = torch.randn(5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(4), requires_grad=True)
    g = torch.randn(5, 12, dtype=torch.float64)
    p = sparsemax(z)
    (p * g).sum().backward()
    support = (p > 0).double()
    expected = support * (g - (g * support).sum(-1, keepdim=True) / support.sum(-1, keepdim=True))
    torch.testing.assert_close(z.grad, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_float32(dtype):
    z = torch.randn(4, 64, generator=torch.Generator().manual_seed(5)) * 1e-3
    p = sparsemax(z.to(dtype))
    assert p.dtype == dtype
    torch.testing.assert_close(p.float(), sparsemax(z.to(dtype).float()).to(dtype).float())
    z_half = z.to(dtype).requires_grad_()
    sparsemax(z_half).sum().backward()
    assert z_half.grad.dtype == dtype


@pytest.mark.parametrize("suffix,scale", [("", 1.0), ("_T", 1e-3)])
def test_official_fixture(golden, suffix, scale):
    """Forward and autograd gradient of sum(sparsemax(x * scale) * w) vs the official module (scale = 1/T)."""
    x = golden["sparsemax_in"].clone().requires_grad_()
    out = sparsemax(x / 1000 if scale != 1.0 else x)
    (out * golden["sparsemax_w"]).sum().backward()
    torch.testing.assert_close(out.detach(), golden[f"sparsemax_out{suffix}"], atol=1e-6, rtol=0)
    torch.testing.assert_close(x.grad, golden[f"sparsemax_grad{suffix}"], atol=1e-6, rtol=0)
