"""Random-walk Metropolis (RWM): the gradient-free baseline.

    y = x + ε η,   η ~ N(0, I),   accept with probability min(1, exp(−(E(y) − E(x))/T))

The Gaussian proposal is symmetric, so no proposal correction is needed. The optimal
acceptance in high dimension is ≈ 0.234 (Roberts, Gelman & Gilks 1997), the default target.

Box: ``reflect`` (default) folds proposals back into the box by mirror reflection, which
keeps the proposal symmetric (q(y|x) = q(x|y) summed over mirror images), so no correction
is needed; ``reject`` rejects proposals outside the box.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ebmrun.samplers.base import EnergyFn, gaussian_like
from ebmrun.samplers.box import reflect_into_box
from ebmrun.samplers.metropolis import MetropolisSampler


class RandomWalkMetropolis(MetropolisSampler):
    """Random-walk Metropolis, batched (one chain per row) for any tensor shape.

    Args:
        step_size: initial proposal std ε.
        track_grad_norm: also compute ∇E at each proposal so the ``grad_norm`` trace is
            filled, at the cost of one backward pass per step; ``False`` runs forward only
            and reports NaN.
        adapt: ``shared`` | ``per_chain`` | ``none``; ``target_accept`` defaults to 0.234.
        adapt_steps: warm-up steps of Robbins–Monro adaptation of log ε.
        box_mode: ``reflect`` | ``reject`` (see the module docstring).
        steps, temperature, box, autocast: see :class:`ebmrun.samplers.base.Sampler`.
    """

    box_modes = ("reflect", "reject")

    def __init__(self, step_size: float = 0.1, track_grad_norm: bool = True,
                 adapt: str = "shared", target_accept: float = 0.234,
                 adapt_steps: int = 50, box_mode: str = "reflect", steps: int = 100,
                 temperature: float = 1.0, box: Sequence[float] | None = None,
                 autocast: str | None = None) -> None:
        super().__init__(step_size=step_size, target_accept=target_accept, adapt=adapt,
                         adapt_steps=adapt_steps, box_mode=box_mode, steps=steps,
                         temperature=temperature, box=box, autocast=autocast)
        self.track_grad_norm = bool(track_grad_norm)

    capturable = True  # the proposal and the MH accept are fixed-size tensor ops

    def evaluate(self, energy_fn: EnergyFn, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.track_grad_norm:
            return self._energy_and_grad(energy_fn, x)
        return self._energy(energy_fn, x), None

    def propose(self, energy_fn: EnergyFn, x: Tensor, state: dict, step: Tensor,
                generator: torch.Generator | None
                ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        y = x + step * gaussian_like(x, generator)
        if self.box is not None and self.box_mode == "reflect":
            y, _ = reflect_into_box(y, *self.box)
        energy_y, grad_y = self.evaluate(energy_fn, y)
        return y, energy_y, grad_y, torch.zeros_like(energy_y)
