"""Exact normalisers of 2-D energies on a grid, and the likelihoods they give.

For p(x) = exp(-E(x)) / Z on a box, Z = ∫ exp(-E) dx is computed by a Riemann sum on a
fine grid (``size`` × ``size`` cell centres). That makes any 2-D energy a normalised
density: exact test NLL, and KL(target ‖ model) against a histogram of the target.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

EnergyFn = Callable[[Tensor], Tensor]


def grid_points(box: tuple[float, float], size: int, device: torch.device | str = "cpu"
                ) -> tuple[Tensor, float]:
    """Cell centres ``(size * size, 2)`` of a square box, row-major (y outer, x inner),
    and the area of one cell."""
    low, high = box
    width = (high - low) / size
    centres = low + width * (torch.arange(size, dtype=torch.float64, device=device) + 0.5)
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], dim=1), width * width


@torch.no_grad()
def grid_energies(energy_fn: EnergyFn, box: tuple[float, float], size: int,
                  device: torch.device | str = "cpu", batch: int = 65536) -> tuple[Tensor, float]:
    """E on every grid cell centre ``(size * size,)`` float64, and the cell area."""
    points, area = grid_points(box, size, device)
    energies = [energy_fn(chunk.float()).double().flatten()
                for chunk in points.split(batch)]
    return torch.cat(energies), area


def log_normaliser(energies: Tensor, cell_area: float) -> float:
    """log Z = log Σ exp(-E_i) · area, computed stably."""
    return float(torch.logsumexp(-energies.double(), dim=0)) + math.log(cell_area)


def histogram_density(points: Tensor, box: tuple[float, float], size: int,
                      weights: Tensor | None = None, smoothing: float = 1e-12) -> Tensor:
    """Probability mass per grid cell ``(size * size,)`` of 2-D ``points`` ``(M, 2)``
    (optionally ``weights`` ``(M,)``), same cell order as :func:`grid_points`; points
    outside the box are dropped."""
    low, high = box
    cells = ((points.double() - low) / (high - low) * size).floor().long()
    inside = ((cells >= 0) & (cells < size)).all(dim=1)
    flat = cells[inside, 1] * size + cells[inside, 0]
    w = None if weights is None else weights.double()[inside]
    counts = torch.bincount(flat, weights=w, minlength=size * size).double() + smoothing
    return counts / counts.sum()


@torch.no_grad()  # metrics only: no graph (float() of a grad tensor warns on every eval)
def grid_report(energy_fn: EnergyFn, test: Tensor, target_points: Tensor,
                box: tuple[float, float], size: int, kl_bins: int = 50) -> dict[str, float]:
    """Exact likelihood metrics of a 2-D energy restricted to ``box``.

    Args:
        test: ``(N, 2)`` held-out points; their NLL is mean E + log Z.
        target_points: ``(M, 2)`` many samples of the target density, binned for
            KL(target ‖ model) = Σ_cells p_t log(p_t / p_model) on a coarser
            ``kl_bins`` × ``kl_bins`` grid (a histogram of M points needs cells that
            hold many of them; the model's fine-grid mass is summed into the same bins).

    Returns:
        ``log_z``, ``test_nll`` (nats per point), ``kl_target_model`` (nats).
    """
    energies, area = grid_energies(energy_fn, box, size, device=test.device)
    log_z = log_normaliser(energies, area)
    test_energy = torch.cat([energy_fn(chunk).double().flatten() for chunk in test.split(65536)])
    points, _ = grid_points(box, size, energies.device)
    model_mass = histogram_density(points, box, kl_bins, weights=torch.softmax(-energies, 0))
    target_mass = histogram_density(target_points.to(energies.device), box, kl_bins)
    kl = float((target_mass * (target_mass.log() - model_mass.clamp_min(1e-300).log())).sum())
    return {"log_z": log_z, "test_nll": float(test_energy.mean()) + log_z,
            "kl_target_model": max(kl, 0.0)}
