"""Log-domain Sinkhorn–Knopp (CODIS's codebook assignment) against the direct form, POT and its invariances."""

from __future__ import annotations

import ot
import pytest
import torch

from vlalign.models.sinkhorn import sinkhorn_log, transport_plans


def unit_scores(samples: int = 16, prototypes: int = 40, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    features = torch.nn.functional.normalize(torch.randn(samples, 8, generator=generator, dtype=dtype), dim=-1)
    codebook = torch.nn.functional.normalize(torch.randn(prototypes, 8, generator=generator, dtype=dtype), dim=-1)
    return features @ codebook.t()


def direct_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's direct form, written out for comparison: Q = exp(S/ε)ᵀ scaled to unit mass, then alternate
    prototype and sample normalisation, times the number of samples."""
    plan = torch.exp(scores / epsilon).t()
    plan = plan / plan.sum()
    prototypes, samples = plan.shape
    for _ in range(iterations):
        plan = plan / plan.sum(dim=1, keepdim=True) / prototypes
        plan = plan / plan.sum(dim=0, keepdim=True) / samples
    return (plan * samples).t()


@pytest.mark.parametrize("iterations", [1, 3, 100])
def test_log_form_equals_the_direct_form(iterations):
    scores = unit_scores()
    torch.testing.assert_close(sinkhorn_log(scores, 0.05, iterations), direct_sinkhorn(scores, 0.05, iterations),
                               atol=1e-12, rtol=0)  # fmt: skip


@pytest.mark.parametrize("iterations", [1, 3, 50])
def test_rows_are_distributions_after_any_number_of_iterations(iterations):
    plan = sinkhorn_log(unit_scores(dtype=torch.float32), 0.05, iterations)
    assert plan.dtype == torch.float32 and (plan >= 0).all()
    torch.testing.assert_close(plan.sum(dim=1), torch.ones(16), atol=1e-6, rtol=0)


def test_column_marginals_converge():
    scores = unit_scores()
    converged = sinkhorn_log(scores, 0.05, 2000).sum(dim=0)
    torch.testing.assert_close(converged, torch.full((40,), 16 / 40, dtype=torch.float64), atol=1e-5, rtol=0)
    spread = sinkhorn_log(scores, 0.05, 3).sum(dim=0) / (16 / 40)
    assert spread.min() < 0.9 and spread.max() > 1.1  # three iterations leave the columns far from equal


def test_matches_pot_at_convergence():
    scores = unit_scores()
    samples, prototypes = scores.shape
    plan = ot.sinkhorn(
        torch.full((samples,), 1 / samples, dtype=torch.float64), torch.full((prototypes,), 1 / prototypes,
        dtype=torch.float64), 1 - scores, 0.05, method="sinkhorn_log", numItermax=20000, stopThr=1e-13,
    )  # fmt: skip
    torch.testing.assert_close(sinkhorn_log(scores, 0.05, 20000), plan * samples, atol=1e-6, rtol=0)


def test_invariances():
    scores = unit_scores()
    plan = sinkhorn_log(scores, 0.05, 3)
    torch.testing.assert_close(sinkhorn_log(scores + 3.0, 0.05, 3), plan, atol=1e-12, rtol=0)
    order = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sinkhorn_log(scores[order], 0.05, 3), plan[order], atol=1e-12, rtol=0)
    # Constant scores give the uniform plan. (A single constant row does not: the column scalings the other rows
    # impose tilt it, contrary to the CODIS spec §4.3's remark.)
    uniform = sinkhorn_log(torch.full((16, 40), 0.3, dtype=torch.float64), 0.05, 3)
    torch.testing.assert_close(uniform, torch.full((16, 40), 1 / 40, dtype=torch.float64), atol=1e-12, rtol=0)


def test_small_epsilon_stays_finite_where_the_direct_form_overflows():
    scores = unit_scores(dtype=torch.float32)
    assert not torch.isfinite(direct_sinkhorn(scores, 1e-3, 3)).all()
    plan = sinkhorn_log(scores, 1e-3, 3)
    assert torch.isfinite(plan).all()
    torch.testing.assert_close(plan.sum(dim=1), torch.ones(16), atol=1e-5, rtol=0)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn_log(unit_scores(), 0.0, 3)
    with pytest.raises(ValueError, match="num_iterations"):
        sinkhorn_log(unit_scores(), 0.05, 0)
    with pytest.raises(FloatingPointError, match="not finite"):
        sinkhorn_log(torch.full((2, 3), float("nan")), 0.05, 3)


def pot_scaled_plan(scores: torch.Tensor) -> torch.Tensor:
    """POT's converged plan for cost 1 − scores (uniform marginals, ε = 0.05), rows rescaled to distributions."""
    samples, prototypes = scores.shape
    plan = ot.sinkhorn(
        torch.full((samples,), 1 / samples, dtype=torch.float64), torch.full((prototypes,), 1 / prototypes,
        dtype=torch.float64), 1 - scores, 0.05, method="sinkhorn_log", numItermax=20000, stopThr=1e-13,
    )  # fmt: skip
    return plan * samples


def two_modalities() -> list[torch.Tensor]:
    # different row counts, so a wrong split point shows
    return [unit_scores(samples=6, prototypes=10, seed=3), unit_scores(samples=9, prototypes=10, seed=4)]


@pytest.mark.parametrize("iterations", [1, 3])
def test_transport_plans_separate_are_one_sinkhorn_per_modality(iterations):
    scores = two_modalities()
    plans = transport_plans(scores, 0.05, iterations, joint=False)
    assert len(plans) == 2
    for plan, score in zip(plans, scores, strict=True):
        assert torch.equal(plan, sinkhorn_log(score, 0.05, iterations))
        torch.testing.assert_close(plan, direct_sinkhorn(score, 0.05, iterations), atol=1e-12, rtol=0)
        torch.testing.assert_close(plan.sum(dim=1), torch.ones(score.shape[0], dtype=torch.float64), atol=1e-12,
                                   rtol=0)  # fmt: skip


@pytest.mark.parametrize("iterations", [1, 3])
def test_transport_plans_joint_is_one_sinkhorn_over_the_concatenation(iterations):
    scores = two_modalities()
    plans = transport_plans(scores, 0.05, iterations, joint=True)
    assert [p.shape for p in plans] == [(6, 10), (9, 10)]
    joint = direct_sinkhorn(torch.cat(scores), 0.05, iterations)
    torch.testing.assert_close(plans[0], joint[:6], atol=1e-12, rtol=0)
    torch.testing.assert_close(plans[1], joint[6:], atol=1e-12, rtol=0)
    assert torch.equal(torch.cat(plans), sinkhorn_log(torch.cat(scores), 0.05, iterations))
    for plan in plans:
        torch.testing.assert_close(plan.sum(dim=1), torch.ones(plan.shape[0], dtype=torch.float64), atol=1e-12,
                                   rtol=0)  # fmt: skip
    separate = transport_plans(scores, 0.05, iterations, joint=False)
    assert not torch.allclose(plans[0], separate[0], atol=1e-3)  # prototypes share their mass across modalities


def test_transport_plans_match_pot_at_convergence():
    scores = two_modalities()
    separate = transport_plans(scores, 0.05, 5000, joint=False)
    for plan, score in zip(separate, scores, strict=True):
        torch.testing.assert_close(plan, pot_scaled_plan(score), atol=1e-6, rtol=0)
    joint = torch.cat(transport_plans(scores, 0.05, 5000, joint=True))
    torch.testing.assert_close(joint, pot_scaled_plan(torch.cat(scores)), atol=1e-6, rtol=0)
    # joint: each prototype holds 1/K of all 15 rows' mass, not of each modality's
    torch.testing.assert_close(joint.sum(dim=0), torch.full((10,), 15 / 10, dtype=torch.float64), atol=1e-5, rtol=0)
    assert (separate[0].sum(dim=0) - 6 / 10).abs().max() < 1e-5
