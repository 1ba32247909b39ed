"""Analytic energies for tests and demos: try any sampler with no training.

Each energy is defined on the first ``dims`` coordinates of the flattened item (2 for the
presets here); any further coordinates are i.i.d. N(0, rest_std²), so every energy works
for every data shape (2-D points, images) and the interesting structure is in (x₀, x₁).

``model=analytic`` builds one through :func:`build_analytic_energy`, picking the density by
name from :data:`ANALYTIC_DENSITIES` (``model.net.density=double_well``) with optional
constructor arguments (``+model.net.params.std=0.2``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

# 8gaussians of ebmrun.data.toy2d: radius 4/√2, std 0.5/√2, so ``mixture`` is that density.
RING_RADIUS = 4.0 / 1.414
RING_STD = 0.5 / 1.414


class AnalyticEnergy(nn.Module):
    """Base: ``energy(x) = head_energy(x[:, :dims]) + ½‖x[:, dims:]‖² / rest_std²``.

    Holds one frozen dummy parameter so ``next(model.parameters())`` finds the device; it
    takes no part in the energy, and nothing here is trained.
    """

    def __init__(self, item_shape: Sequence[int], dims: int, rest_std: float = 1.0) -> None:
        super().__init__()
        self.item_shape = tuple(int(s) for s in item_shape)
        total = math.prod(self.item_shape)
        if total < dims:
            raise ValueError(f"{type(self).__name__} needs items with >= {dims} values, got "
                             f"shape {self.item_shape}")
        if rest_std <= 0:
            raise ValueError(f"rest_std must be > 0, got {rest_std}")
        self.dims = dims
        self.rest_std = float(rest_std)
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)

    def head_energy(self, head: Tensor) -> Tensor:
        """Energy ``(B,)`` of the first ``dims`` coordinates ``(B, dims)``."""
        raise NotImplementedError

    def energy(self, x: Tensor) -> Tensor:
        """Energies ``(B,)`` of ``x`` ``(B, *item_shape)`` (low = likely)."""
        flat = x.flatten(1)
        rest = flat[:, self.dims:]
        return self.head_energy(flat[:, : self.dims]) + 0.5 * rest.pow(2).sum(1) / self.rest_std**2

    def forward(self, x: Tensor) -> Tensor:
        return self.energy(x)


class GaussianEnergy(AnalyticEnergy):
    """Gaussian N(mean, cov): ``E(x) = ½ (x − μ)ᵀ Σ⁻¹ (x − μ)``; p ∝ exp(−E/T) has
    covariance T·Σ.

    Args:
        mean: μ, length d (default a 2-D correlated Gaussian).
        cov: Σ, d × d symmetric positive definite.
    """

    def __init__(self, item_shape: Sequence[int], mean: Sequence[float] = (0.0, 0.0),
                 cov: Sequence[Sequence[float]] = ((1.0, 0.8), (0.8, 1.0)),
                 rest_std: float = 1.0) -> None:
        mean_t = torch.as_tensor(mean, dtype=torch.float64).flatten()
        super().__init__(item_shape, dims=len(mean_t), rest_std=rest_std)
        cov_t = torch.as_tensor(cov, dtype=torch.float64)
        if cov_t.shape != (len(mean_t), len(mean_t)):
            raise ValueError(f"cov must be {len(mean_t)}x{len(mean_t)}, got {tuple(cov_t.shape)}")
        if not torch.allclose(cov_t, cov_t.T) or torch.linalg.eigvalsh(cov_t).min() <= 0:
            raise ValueError("cov must be symmetric positive definite")
        self.register_buffer("mean", mean_t.float())
        self.register_buffer("cov", cov_t.float())
        self.register_buffer("precision", torch.linalg.inv(cov_t).float())

    def head_energy(self, head: Tensor) -> Tensor:
        d = head - self.mean.to(head.dtype)
        return 0.5 * ((d @ self.precision.to(head.dtype)) * d).sum(1)


class DoubleWell(AnalyticEnergy):
    """Two wells at x₀ = ±center separated by a barrier of height ``barrier`` (in units of
    E) at x₀ = 0; Gaussian with std ``std`` across (x₁):

        E(x) = barrier · (x₀² − c²)² / c⁴ + ½ x₁² / std²
    """

    def __init__(self, item_shape: Sequence[int], center: float = 1.5, barrier: float = 4.0,
                 std: float = 0.5, rest_std: float = 1.0) -> None:
        super().__init__(item_shape, dims=2, rest_std=rest_std)
        if center <= 0 or std <= 0:
            raise ValueError("center and std must be > 0")
        self.center, self.barrier, self.std = float(center), float(barrier), float(std)

    def head_energy(self, head: Tensor) -> Tensor:
        c2 = self.center**2
        return (self.barrier * (head[:, 0] ** 2 - c2) ** 2 / c2**2
                + 0.5 * head[:, 1] ** 2 / self.std**2)


class GaussianMixture(AnalyticEnergy):
    """Equal-weight (or ``weights``) mixture of isotropic Gaussians with std ``std``:
    ``E(x) = −log Σ_k w_k exp(−‖x − μ_k‖² / (2 std²))``.

    Args:
        n_modes, radius: modes evenly on a circle (default: the 8gaussians toy density).
        means: explicit ``(K, d)`` mode centres instead of the circle.
        weights: mixture weights (normalised here), default equal.
    """

    def __init__(self, item_shape: Sequence[int], n_modes: int = 8, radius: float = RING_RADIUS,
                 std: float = RING_STD, means: Sequence[Sequence[float]] | None = None,
                 weights: Sequence[float] | None = None, rest_std: float = 1.0) -> None:
        if means is None:
            angles = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
            means_t = radius * torch.stack([angles.cos(), angles.sin()], 1)
        else:
            means_t = torch.as_tensor(means, dtype=torch.float64)
        super().__init__(item_shape, dims=means_t.shape[1], rest_std=rest_std)
        k = means_t.shape[0]
        w = torch.full((k,), 1.0 / k) if weights is None else torch.as_tensor(weights).double()
        if w.shape != (k,) or (w <= 0).any() or std <= 0:
            raise ValueError(f"need {k} positive weights and std > 0")
        self.std = float(std)
        self.register_buffer("means", means_t.float())
        self.register_buffer("log_weights", (w / w.sum()).log().float())

    def head_energy(self, head: Tensor) -> Tensor:
        sq = (head[:, None, :] - self.means.to(head.dtype)).pow(2).sum(-1)  # (B, K)
        return -torch.logsumexp(self.log_weights.to(head.dtype) - sq / (2 * self.std**2), 1)

    def nearest_mode(self, x: Tensor) -> Tensor:
        """Index ``(B,)`` of the closest mode centre (for mode-coverage diagnostics)."""
        head = x.flatten(1)[:, : self.dims]
        return torch.cdist(head.float(), self.means).argmin(1)


ANALYTIC_DENSITIES: dict[str, type[AnalyticEnergy]] = {
    "gaussian": GaussianEnergy,
    "double_well": DoubleWell,
    "mixture": GaussianMixture,
}


def build_analytic_energy(item_shape: Sequence[int], density: str = "mixture",
                          params: Mapping[str, Any] | None = None) -> AnalyticEnergy:
    """The analytic energy named ``density`` (a key of :data:`ANALYTIC_DENSITIES`), built
    with its defaults updated by ``params``."""
    cls = ANALYTIC_DENSITIES.get(density)
    if cls is None:
        raise ValueError(f"unknown analytic density {density!r} (choose from: "
                         f"{', '.join(ANALYTIC_DENSITIES)})")
    try:
        return cls(item_shape, **dict(params or {}))
    except TypeError as exc:  # a misspelt parameter: name the valid ones
        valid = [p for p in inspect.signature(cls).parameters if p != "item_shape"]
        raise ValueError(f"bad params for density {density!r} ({exc}); valid: "
                         f"{', '.join(valid)}") from None
