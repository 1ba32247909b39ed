"""Underdamped (kinetic) Langevin dynamics with the BAOAB splitting (Leimkuhler & Matthews
2013, "Rational construction of stochastic numerical methods for molecular sampling").

The chain carries a momentum p next to x and integrates, for U(x) = E(x)/T,

    dx = p dt,   dp = −∇U(x) dt − γ p dt + √(2γ) dW

one step of size h as B A O A B:

    B: p ← p − (h/2) ∇U(x)          A: x ← x + (h/2) p
    O: p ← c·p + √(1 − c²)·ξ,  c = e^(−γh),  ξ ~ N(0, I)   (exact Ornstein–Uhlenbeck)
    A: x ← x + (h/2) p               B: p ← p − (h/2) ∇U(x)

One gradient per step (the last B's gradient is the next step's first). The momentum lets
the chain travel in straight lines between noise kicks, so it mixes faster than overdamped
Langevin at the same cost; γ interpolates between HMC-like ballistic motion (small) and
overdamped Langevin (large). Unadjusted: the stationary law is exp(−U) up to an O(h²)
error in x (BAOAB's is particularly small), not exact.

Box: positions leaving the box are mirrored back in and their momentum flipped, as in HMC.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ebmrun.samplers.base import EnergyFn, Sampler, gaussian_like, per_chain_norm
from ebmrun.samplers.box import reflect_into_box


class UnderdampedLangevin(Sampler):
    """BAOAB underdamped Langevin, batched (one chain per row) for any tensor shape.

    Args:
        step_size: h.
        friction: γ (per unit time); ``c = exp(−γh)`` is the share of momentum kept per step.
        steps, temperature, box, autocast: see :class:`Sampler`. Momenta start from
            N(0, I) at every ``sample`` call.
    """

    def __init__(self, step_size: float = 0.1, friction: float = 1.0, steps: int = 200,
                 temperature: float = 1.0, box: Sequence[float] | None = None,
                 autocast: str | None = None) -> None:
        super().__init__(steps=steps, temperature=temperature, box=box, autocast=autocast)
        if step_size <= 0:
            raise ValueError(f"underdamped_langevin step_size must be > 0, got {step_size}")
        if friction <= 0:
            raise ValueError(f"friction must be > 0, got {friction}")
        self.step_size = float(step_size)
        self.friction = float(friction)

    capturable = True  # BAOAB: fixed-size tensor ops, no accept step
    always_accepts = True

    def init_state(self, energy_fn: EnergyFn, x: Tensor, generator: torch.Generator | None
                   ) -> dict:
        energy, grad = self._energy_and_grad(energy_fn, x)
        return {"p": gaussian_like(x, generator), "energy": energy, "grad": grad}

    def _drift(self, x: Tensor, p: Tensor, h: float) -> tuple[Tensor, Tensor]:
        """A: x ← x + h·p, mirrored at the box walls (momentum flipped there)."""
        x = x + h * p
        if self.box is not None:
            x, flip = reflect_into_box(x, *self.box)
            p = torch.where(flip, -p, p)
        return x, p

    def step(self, energy_fn: EnergyFn, x: Tensor, state: dict,
             generator: torch.Generator | None) -> tuple[Tensor, dict, dict[str, Tensor]]:
        h, inv_t = self.step_size, 1.0 / self.temperature
        c = math.exp(-self.friction * h)
        p = state["p"] - (0.5 * h * inv_t) * state["grad"]  # B
        x, p = self._drift(x, p, 0.5 * h)  # A
        p = c * p + math.sqrt(1.0 - c * c) * gaussian_like(p, generator)  # O
        x, p = self._drift(x, p, 0.5 * h)  # A
        energy, grad = self._energy_and_grad(energy_fn, x)
        p = p - (0.5 * h * inv_t) * grad  # B
        state.update(p=p, energy=energy, grad=grad)
        return x, state, {"energy": energy.mean(), "grad_norm": per_chain_norm(grad).mean(),
                          "acceptance": x.new_ones(())}

    def final_stats(self, state: dict) -> dict[str, float]:
        return {"step_size": self.step_size}
