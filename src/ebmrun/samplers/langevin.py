"""Unadjusted Langevin dynamics (ULA).

    x ← x − ε ∇E(x) / T + σ η,   η ~ N(0, I),   σ = √(2ε) by default

The UvA tutorial variant used to train deep EBMs (fixed small noise σ = 0.005, input
gradient clamped to ±0.03, step ε = 10, values clamped to [-1, 1]) is a setting of this
same sampler: ``noise_std=0.005, grad_clip=0.03, step_size=10, box=[-1, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ebmrun.samplers.base import EnergyFn, Sampler, gaussian_like, per_chain_norm


class Langevin(Sampler):
    """Unadjusted Langevin sampler, batched (one chain per row) for any tensor shape.

    Args:
        step_size: ε.
        noise_std: fixed noise std σ; ``None`` uses the diffusion's √(2ε).
        grad_clip: clamp each input-gradient entry to ``±grad_clip`` (``None`` = off);
            stabilises early training when energies are steep.
        steps, temperature, box, autocast: see :class:`Sampler`.
    """

    capturable = True  # fixed-size tensor ops only: the whole loop replays as a CUDA graph
    always_accepts = True  # unadjusted: no accept step

    def __init__(self, step_size: float = 10.0, noise_std: float | None = 0.005,
                 grad_clip: float | None = 0.03, steps: int = 60, temperature: float = 1.0,
                 box: Sequence[float] | None = None, autocast: str | None = None) -> None:
        super().__init__(steps=steps, temperature=temperature, box=box, autocast=autocast)
        if step_size <= 0:
            raise ValueError(f"langevin step_size must be > 0, got {step_size}")
        self.step_size = float(step_size)
        self.noise_std = math.sqrt(2.0 * step_size) if noise_std is None else float(noise_std)
        self.grad_clip = None if grad_clip is None else float(grad_clip)

    def step(self, energy_fn: EnergyFn, x: Tensor, state: dict,
             generator: torch.Generator | None) -> tuple[Tensor, dict, dict[str, Tensor]]:
        energy, grad = self._energy_and_grad(energy_fn, x)
        grad_norm = per_chain_norm(grad).mean()
        if self.grad_clip is not None:
            grad.clamp_(-self.grad_clip, self.grad_clip)
        # In-place updates: x is this sampler's own copy, so no new tensors per step.
        x.add_(grad, alpha=-self.step_size / self.temperature)
        if self.noise_std > 0:
            x.add_(gaussian_like(x, generator), alpha=self.noise_std)
        self.project(x)
        return x, state, {"energy": energy.mean(), "grad_norm": grad_norm,
                          "acceptance": x.new_ones(())}

    def final_stats(self, state: dict) -> dict[str, float]:
        return {"step_size": self.step_size}
