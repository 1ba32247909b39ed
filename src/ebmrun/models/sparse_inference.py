"""Sparse inference: energy minimisation over codes for E(y, z) = ½‖y − Wz‖² + λ‖z‖₁.

Signals are rows: ``y`` ``(B, n)``, codes ``z`` ``(B, m)``, dictionary ``W`` ``(n, m)``.
Both solvers are proximal gradient descent with step 1/L, L = λ_max(WᵀW) (the Lipschitz
constant of the smooth part's gradient), written in the LISTA form

    z ← soft_{λ/L}(b + S z),   b = Wᵀy / L,   S = I − WᵀW / L

so one iteration costs one ``(B, m) × (m, m)`` product (the Gram matrix is formed once)
instead of two products with the ``(n, m)`` dictionary. Starting from z₀ = 0 the first
iteration is just ``soft(b)``: k iterations cost one ``Wᵀy`` plus k − 1 Gram products,
exactly what a k-layer LISTA network costs.

- ISTA (Daubechies et al. 2004): E(z_k) − E* = O(1/k), and E never increases.
- FISTA (Beck & Teboulle 2009): the same step at an extrapolated point (Nesterov momentum),
  E(z_k) − E* = O(1/k²); E may go up now and then.

The solvers are Python generators that yield the code after every iteration, so a caller
can score every iterate (code-error curves) without storing them all.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor


def soft_threshold(x: Tensor, theta: Tensor | float) -> Tensor:
    """The proximal map of θ‖·‖₁: ``sign(x) · max(|x| − θ, 0)`` (shape of ``x``; ``theta``
    broadcasts, e.g. one threshold per atom ``(m,)``)."""
    return torch.sign(x) * torch.relu(x.abs() - theta)


def power_iteration(gram: Tensor, vector: Tensor | None = None, max_iters: int = 1000,
                    tol: float = 1e-7) -> tuple[float, Tensor]:
    """Largest eigenvalue of a symmetric positive semi-definite ``gram`` ``(m, m)``.

    Returns ``(eigenvalue, unit eigenvector (m,))``. ``vector`` warm-starts the iteration
    (after a small dictionary update the previous eigenvector is almost right, so a few
    iterations suffice); otherwise a fixed all-ones start is used — deterministic, and
    never orthogonal to the top eigenvector of a Gram of non-negative images. Stops when
    the Rayleigh quotient changes by less than ``tol`` (relative) between iterations.
    """
    v = torch.ones(gram.shape[0], dtype=gram.dtype, device=gram.device) if vector is None \
        else vector.to(gram)
    v = v / v.norm().clamp_min(1e-30)
    value = 0.0
    for _ in range(max_iters):
        w = gram @ v
        new_value = float(v @ w)  # Rayleigh quotient: rises monotonically to λ_max
        v = w / w.norm().clamp_min(1e-30)
        if abs(new_value - value) <= tol * abs(new_value):
            value = new_value
            break
        value = new_value
    return value, v


def sparse_energy(y: Tensor, z: Tensor, weight: Tensor, lam: Tensor | float) -> Tensor:
    """E(y, z) = ½‖y − Wz‖² + λ‖z‖₁ per row: ``y`` ``(B, n)``, ``z`` ``(B, m)`` → ``(B,)``."""
    residual = y - z @ weight.T
    return 0.5 * residual.pow(2).sum(1) + lam * z.abs().sum(1)


def _lista_form(y: Tensor, weight: Tensor, lam: Tensor | float, lipschitz: float
                ) -> tuple[Tensor, Tensor, Tensor | float]:
    """``b = Wᵀy/L`` ``(B, m)``, ``S = I − WᵀW/L`` ``(m, m)`` and the threshold λ/L."""
    b = (y @ weight) / lipschitz
    gram = weight.T @ weight
    s = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device) - gram / lipschitz
    return b, s, lam / lipschitz


def ista_iterates(y: Tensor, weight: Tensor, lam: Tensor | float, lipschitz: float
                  ) -> Iterator[Tensor]:
    """ISTA from z₀ = 0: yields z₁, z₂, … ``(B, m)`` forever (the caller stops)."""
    b, s, theta = _lista_form(y, weight, lam, lipschitz)
    z = soft_threshold(b, theta)
    yield z
    while True:
        z = soft_threshold(torch.addmm(b, z, s), theta)  # S is symmetric: z S = (S z)ᵀ
        yield z


def fista_iterates(y: Tensor, weight: Tensor, lam: Tensor | float, lipschitz: float
                   ) -> Iterator[Tensor]:
    """FISTA from z₀ = 0: yields z₁, z₂, … ``(B, m)`` forever (the caller stops).

    z_k = soft(b + S p_k), t_{k+1} = (1 + √(1 + 4t_k²))/2,
    p_{k+1} = z_k + ((t_k − 1)/t_{k+1}) (z_k − z_{k−1}), with p₁ = z₀ = 0, t₁ = 1.
    """
    b, s, theta = _lista_form(y, weight, lam, lipschitz)
    z_prev = soft_threshold(b, theta)  # p₁ = 0, so S p₁ = 0
    yield z_prev
    t = (1.0 + math.sqrt(5.0)) / 2.0  # t₂
    point = z_prev  # p₂ = z₁ + 0 · (z₁ − z₀): t₁ = 1 gives no momentum yet
    while True:
        z = soft_threshold(torch.addmm(b, point, s), theta)
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        point = z + ((t - 1.0) / t_next) * (z - z_prev)
        z_prev, t = z, t_next
        yield z


def run(iterates: Iterator[Tensor], iters: int) -> Tensor:
    """The code after ``iters`` (≥ 1) iterations of a solver generator."""
    if iters < 1:
        raise ValueError(f"need at least one iteration, got {iters}")
    for k, z in enumerate(iterates, start=1):
        if k == iters:
            return z
    raise AssertionError("unreachable: solver generators never end")


def ista(y: Tensor, weight: Tensor, lam: Tensor | float, lipschitz: float, iters: int) -> Tensor:
    """``iters`` ISTA iterations from zero: codes ``(B, m)``."""
    return run(ista_iterates(y, weight, lam, lipschitz), iters)


def fista(y: Tensor, weight: Tensor, lam: Tensor | float, lipschitz: float, iters: int
          ) -> Tensor:
    """``iters`` FISTA iterations from zero: codes ``(B, m)``."""
    return run(fista_iterates(y, weight, lam, lipschitz), iters)


# Inference algorithms by config name (``model.objective.inference``).
SOLVERS = {"ista": ista_iterates, "fista": fista_iterates}
