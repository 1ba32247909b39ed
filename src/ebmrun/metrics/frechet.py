"""Fréchet distance between two sets of feature vectors.

The distance between Gaussians fitted to the two sets (the quantity behind FID):

    d² = |mu_a - mu_b|² + tr(S_a) + tr(S_b) - 2 tr sqrt(S_a S_b)

Everything is computed in float64. ``S_a S_b`` is not symmetric, so its square root is not
taken directly; instead ``tr sqrt(S_a S_b) = tr sqrt(R S_b R)`` with ``R = sqrt(S_a)``, and
``R S_b R`` is symmetric positive semi-definite, so the trace is the sum of the square roots
of its eigenvalues (from ``eigh``, clamped at 0 to absorb round-off). This stays finite and
real for rank-deficient covariances (fewer samples than features, dead ReLU units), where
``scipy.linalg.sqrtm`` would return complex noise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ebmrun.errors import UserError


def feature_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and covariance of a feature set.

    Args:
        x: ``(N, F)`` features, ``N >= 2``.

    Returns:
        ``(mu, sigma)``: ``(F,)`` mean and ``(F, F)`` unbiased covariance, both float64.
    """
    if x.dim() != 2 or x.shape[0] < 2:
        raise UserError(
            f"feature_stats needs an (N, F) tensor with N >= 2, got shape {tuple(x.shape)}; "
            "pass at least two feature vectors")
    x = x.detach().to(torch.float64)
    mu = x.mean(dim=0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return mu, sigma


def _psd_sqrt(sigma: Tensor) -> Tensor:
    """Symmetric square root of a PSD matrix ``(F, F)``; negative round-off eigenvalues -> 0."""
    evals, evecs = torch.linalg.eigh(sigma)
    return (evecs * evals.clamp_min(0.0).sqrt()) @ evecs.T


def frechet_from_stats(mu_a: Tensor, sigma_a: Tensor, mu_b: Tensor, sigma_b: Tensor) -> float:
    """Fréchet distance between ``N(mu_a, sigma_a)`` and ``N(mu_b, sigma_b)``.

    Args:
        mu_a, mu_b: ``(F,)`` means.
        sigma_a, sigma_b: ``(F, F)`` covariances.

    Returns:
        The squared Fréchet distance as a Python float (clamped at 0: for identical inputs
        round-off can otherwise give a tiny negative number).
    """
    mu_a, mu_b = mu_a.to(torch.float64), mu_b.to(torch.float64)
    sigma_a, sigma_b = sigma_a.to(torch.float64), sigma_b.to(torch.float64)
    root_a = _psd_sqrt(sigma_a)
    middle = root_a @ sigma_b @ root_a
    middle = (middle + middle.T) / 2  # symmetrise so eigh sees exactly symmetric input
    tr_sqrt = torch.linalg.eigvalsh(middle).clamp_min(0.0).sqrt().sum()
    diff = mu_a - mu_b
    d2 = diff @ diff + torch.trace(sigma_a) + torch.trace(sigma_b) - 2.0 * tr_sqrt
    return max(float(d2), 0.0)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    Args:
        a: ``(N, F)`` features, ``N >= 2``.
        b: ``(M, F)`` features, ``M >= 2``, same ``F``.

    Returns:
        The squared Fréchet distance (float64 arithmetic, returned as a Python float).
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise UserError(
            f"frechet_distance needs two (N, F) tensors with the same F, got {tuple(a.shape)} "
            f"and {tuple(b.shape)}; pass features from the same extractor")
    return frechet_from_stats(*feature_stats(a), *feature_stats(b))
