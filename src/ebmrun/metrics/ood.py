"""Energies as anomaly scores: AUROC, and the out-of-distribution sets we score against.

A good energy model gives held-out data lower energy than anything else. AUROC is the
probability that a random outlier gets a higher energy than a random inlier (ties count
half): 1 = perfect separation, 0.5 = no idea, below 0.5 = outliers look *more* likely.
"""

from __future__ import annotations

import torch
from torch import Tensor


def auroc(inlier_scores: Tensor, outlier_scores: Tensor) -> float:
    """Area under the ROC curve for "higher score = outlier" (Mann-Whitney U statistic).

    Args:
        inlier_scores: ``(N,)`` scores of in-distribution items.
        outlier_scores: ``(M,)`` scores of outliers.
    """
    inl, out = inlier_scores.double().flatten(), outlier_scores.double().flatten()
    if inl.numel() == 0 or out.numel() == 0:
        raise ValueError("auroc needs at least one inlier and one outlier score")
    scores = torch.cat([inl, out])
    # average ranks (1-based) with ties sharing the mean rank of their group
    order = scores.argsort()
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=scores.dtype)
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True,
                                                  return_counts=True)
    first = torch.cumsum(counts, 0) - counts + 1  # first 1-based rank of each tie group
    mean_rank = (first + (counts - 1) / 2.0).to(scores.dtype)
    ranks[order] = mean_rank[inverse]
    n_in, n_out = len(inl), len(out)
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2.0
    return float(u / (n_in * n_out))


def uniform_noise_like(x: Tensor, value_range: tuple[float, float],
                       generator: torch.Generator) -> Tensor:
    """Uniform noise with the shape of ``x`` in the data's ``value_range``."""
    low, high = value_range
    noise = torch.rand(x.shape, generator=generator, device=generator.device)
    return (low + (high - low) * noise).to(x.device, x.dtype)


def flipped(x: Tensor) -> Tensor:
    """Images ``(N, C, H, W)`` flipped upside down and left-right (a 180° rotation):
    the same pixel statistics, wrong shapes."""
    return x.flip(-1).flip(-2)
