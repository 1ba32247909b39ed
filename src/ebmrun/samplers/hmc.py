"""Hamiltonian Monte Carlo (HMC) with a leapfrog integrator.

Each step resamples the momentum p ~ N(0, I), integrates Hamilton's equations for

    H(x, p) = E(x)/T + ½‖p‖²

with L leapfrog steps of size ε, and accepts the end point with probability
min(1, exp(H_start − H_end)). Leapfrog is reversible and volume preserving, so that ratio
is the whole MH correction. The optimal acceptance is ≈ 0.65 (Beskos et al. 2013).

ε is jittered per chain and step (uniform in ε·[1 − jitter, 1 + jitter]): a fixed ε·L can
resonate with a Gaussian's period and make the chain return to where it started.

Box: ``reflect`` (default) mirrors a position that crosses a wall back inside and flips
that coordinate's momentum (Neal 2011, §5.5.1) — still reversible and volume preserving,
so exact for the box-truncated target; ``reject`` rejects end points outside the box.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ebmrun.samplers.base import EnergyFn, gaussian_like, per_chain_sum
from ebmrun.samplers.box import reflect_into_box
from ebmrun.samplers.metropolis import MetropolisSampler


class HMC(MetropolisSampler):
    """HMC, batched (one chain per row) for any tensor shape; L gradients per step.

    Args:
        step_size: initial leapfrog ε.
        leapfrog_steps: L.
        jitter: relative half-width of the random ε per chain and step (0 = fixed ε).
        adapt: ``shared`` | ``per_chain`` | ``none``; ``target_accept`` defaults to 0.65.
        adapt_steps: warm-up steps of Robbins–Monro adaptation of log ε.
        box_mode: ``reflect`` | ``reject`` (see the module docstring).
        steps, temperature, box, autocast: see :class:`ebmrun.samplers.base.Sampler`.
    """

    box_modes = ("reflect", "reject")
    capturable = True  # leapfrog, reflection and the MH accept are fixed-size tensor ops

    def __init__(self, step_size: float = 0.1, leapfrog_steps: int = 10, jitter: float = 0.2,
                 adapt: str = "shared", target_accept: float = 0.65, adapt_steps: int = 50,
                 box_mode: str = "reflect", steps: int = 100, temperature: float = 1.0,
                 box: Sequence[float] | None = None, autocast: str | None = None) -> None:
        super().__init__(step_size=step_size, target_accept=target_accept, adapt=adapt,
                         adapt_steps=adapt_steps, box_mode=box_mode, steps=steps,
                         temperature=temperature, box=box, autocast=autocast)
        if leapfrog_steps < 1:
            raise ValueError(f"leapfrog_steps must be >= 1, got {leapfrog_steps}")
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.leapfrog_steps = int(leapfrog_steps)
        self.jitter = float(jitter)

    def leapfrog(self, energy_fn: EnergyFn, x: Tensor, p: Tensor, grad: Tensor, step: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """L leapfrog steps of size ``step`` (shape ``(B, 1, ..., 1)``) from ``(x, p)`` with
        ``grad = ∇E(x)``, reflecting at the box walls in ``reflect`` mode.

        Returns the end point ``(y, p_end, E(y), ∇E(y))``. The map is volume preserving and
        reversible: leapfrog from ``(y, −p_end)`` returns to ``(x, −p)``.
        """
        inv_t = 1.0 / self.temperature
        y, energy = x, None
        p = p - (0.5 * inv_t) * step * grad  # half step in momentum
        for i in range(self.leapfrog_steps):
            y = y + step * p
            if self.box is not None and self.box_mode == "reflect":
                y, flip = reflect_into_box(y, *self.box)
                p = torch.where(flip, -p, p)
            energy, grad = self._energy_and_grad(energy_fn, y)
            last = i == self.leapfrog_steps - 1
            p = p - ((0.5 if last else 1.0) * inv_t) * step * grad
        return y, p, energy, grad

    @staticmethod
    def log_correction(p_start: Tensor, p_end: Tensor) -> Tensor:
        """Kinetic-energy change ``½‖p_start‖² − ½‖p_end‖²`` ``(B,)``: with the energy term
        of the MH ratio it makes ``H_start − H_end``."""
        return 0.5 * per_chain_sum(p_start.float() ** 2) - 0.5 * per_chain_sum(p_end.float() ** 2)

    def propose(self, energy_fn: EnergyFn, x: Tensor, state: dict, step: Tensor,
                generator: torch.Generator | None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if self.jitter > 0:  # drawn independently of the state, so the kernel stays reversible
            u = torch.rand(step.shape, device=x.device, generator=generator).to(step.dtype)
            step = step * (1.0 + self.jitter * (2.0 * u - 1.0))
        p = gaussian_like(x, generator)
        y, p_end, energy, grad = self.leapfrog(energy_fn, x, p, state["grad"], step)
        return y, energy, grad, self.log_correction(p, p_end)
