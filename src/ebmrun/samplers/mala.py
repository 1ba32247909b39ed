"""Metropolis-adjusted Langevin algorithm (MALA).

Proposal (one Langevin step for the target p(x) ∝ exp(-E(x)/T)):

    y = x − ε ∇E(x)/T + √(2ε) η,   η ~ N(0, I)
    log q(y|x) = −‖y − x + ε ∇E(x)/T‖² / (4ε) + const

accepted with probability min(1, exp(−(E(y) − E(x))/T) · q(x|y) / q(y|x)). Unlike
unadjusted Langevin the chain is exact for any ε; ε only sets speed. The optimal acceptance
in high dimension is ≈ 0.574 (Roberts & Rosenthal 1998), the default adaptation target.

Box: ``reflect`` (default) folds the proposal back into the box by mirror reflection and
uses the exact density of the reflected Gaussian (a sum over mirror images, see
:func:`ebmrun.samplers.box.log_reflected_normal`) in the MH ratio, so the chain stays exact
for the box-truncated target — and keeps moving when many coordinates sit at a wall (image
backgrounds at −1), where ``reject`` would refuse nearly every proposal.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ebmrun.samplers.base import EnergyFn, gaussian_like, per_chain_sum
from ebmrun.samplers.box import log_reflected_normal, reflect_into_box
from ebmrun.samplers.metropolis import MetropolisSampler


class MALA(MetropolisSampler):
    """MALA, batched (one chain per row) for any tensor shape.

    Args:
        step_size: initial ε (the drift is ε·∇E/T, the noise std √(2ε)).
        adapt: ``shared`` | ``per_chain`` | ``none``; ``target_accept`` defaults to 0.574.
        adapt_steps: warm-up steps of Robbins–Monro adaptation of log ε.
        box_mode: ``reflect`` | ``reject`` (see the module docstring).
        steps, temperature, box, autocast: see :class:`ebmrun.samplers.base.Sampler`.
    """

    box_modes = ("reflect", "reject")

    def __init__(self, step_size: float = 0.01, adapt: str = "shared",
                 target_accept: float = 0.574, adapt_steps: int = 50,
                 box_mode: str = "reflect", steps: int = 100, temperature: float = 1.0,
                 box: Sequence[float] | None = None, autocast: str | None = None) -> None:
        super().__init__(step_size=step_size, target_accept=target_accept, adapt=adapt,
                         adapt_steps=adapt_steps, box_mode=box_mode, steps=steps,
                         temperature=temperature, box=box, autocast=autocast)

    @property
    def capturable(self) -> bool:
        """Not with ``reflect`` in a box: the density of the reflected proposal sums over as
        many mirror images as the data need (a host-side count, see ``log_reflected_normal``)."""
        return not (self.box is not None and self.box_mode == "reflect")

    def proposal_mean(self, x: Tensor, grad: Tensor, step: Tensor) -> Tensor:
        """Mean of the Langevin proposal from ``x``: ``x − ε ∇E(x)/T`` (before any reflection)."""
        return x - step * grad / self.temperature

    def log_proposal(self, y: Tensor, x: Tensor, grad_x: Tensor, step: Tensor) -> Tensor:
        """log q(y | x) ``(B,)`` up to a constant that depends on ε only: the Gaussian
        N(x − ε∇E(x)/T, 2ε I), folded into the box by reflection in ``reflect`` mode."""
        mean, std = self.proposal_mean(x, grad_x, step), (2.0 * step).sqrt()
        if self.box is not None and self.box_mode == "reflect":  # sum over mirror images
            return log_reflected_normal(y, mean, std, *self.box)
        return -0.5 * per_chain_sum(((y - mean) / std).float() ** 2)

    def log_correction(self, x: Tensor, y: Tensor, grad_x: Tensor, grad_y: Tensor,
                       step: Tensor) -> Tensor:
        """``log q(x|y) − log q(y|x)`` ``(B,)``, the Hastings term of the MH ratio."""
        return self.log_proposal(x, y, grad_y, step) - self.log_proposal(y, x, grad_x, step)

    def propose(self, energy_fn: EnergyFn, x: Tensor, state: dict, step: Tensor,
                generator: torch.Generator | None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        y = self.proposal_mean(x, state["grad"], step) + (2.0 * step).sqrt() * gaussian_like(
            x, generator)
        if self.box is not None and self.box_mode == "reflect":
            y, _ = reflect_into_box(y, *self.box)
        energy_y, grad_y = self._energy_and_grad(energy_fn, y)
        return y, energy_y, grad_y, self.log_correction(x, y, state["grad"], grad_y, step)
