"""Sinkhorn–Knopp optimal-transport assignment in the log domain (SwAV's equal-partition targets), for CODIS's
codebook alignment.

This file is shipped with saved models (remote code): it imports only torch. POT is the test oracle.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def sinkhorn_log(scores: torch.Tensor, epsilon: float, num_iterations: int) -> torch.Tensor:
    """Transport plan `[N, K]` from sample–prototype `scores` `[N, K]`, each row a distribution over prototypes.

    The entropic plan of `exp(scores / epsilon)` with uniform marginals (each prototype 1/K, each sample 1/N of the
    mass), computed in the log domain so that small `epsilon` cannot overflow: normalise the total mass, then repeat
    `num_iterations` times a prototype (column) step and a sample (row) step, and scale by N. Rows last, as SwAV, so
    every row sums to 1 exactly whatever the iteration count; the column marginals converge with iterations.

    Runs without gradients, in float32 (float64 inputs stay float64) with autocast off.
    """
    if epsilon <= 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}.")
    if num_iterations < 1:
        raise ValueError(f"num_iterations must be at least 1, got {num_iterations}.")
    if scores.ndim != 2 or 0 in scores.shape:
        raise ValueError(f"scores must be a non-empty [samples, prototypes] matrix, got shape {tuple(scores.shape)}.")
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=scores.device.type, enabled=False):
        num_samples, num_prototypes = scores.shape
        log_plan = scores.to(dtype) / epsilon
        log_plan = log_plan - torch.logsumexp(log_plan.flatten(), dim=0)
        for _ in range(num_iterations):
            log_plan = log_plan - torch.logsumexp(log_plan, dim=0, keepdim=True) - math.log(num_prototypes)
            log_plan = log_plan - torch.logsumexp(log_plan, dim=1, keepdim=True) - math.log(num_samples)
        plan = torch.exp(log_plan + math.log(num_samples))
    if not torch.isfinite(plan).all():
        raise FloatingPointError("The Sinkhorn plan is not finite; check the scores for NaN/inf.")
    return plan


def transport_plans(
    scores: list[torch.Tensor], epsilon: float, num_iterations: int, joint: bool = False
) -> list[torch.Tensor]:
    """[`sinkhorn_log`] plans of several score matrices over the same prototypes (one per modality): each solved on
    its own, or with `joint=True` as one problem over all their rows (prototypes then share their mass between the
    modalities). Returns one plan per input, rows in input order."""
    if not joint:
        return [sinkhorn_log(s, epsilon, num_iterations) for s in scores]
    plan = sinkhorn_log(torch.cat(scores), epsilon, num_iterations)
    return list(plan.split([s.shape[0] for s in scores]))


__all__ = ["sinkhorn_log", "transport_plans"]
