"""The denoising Markov chain: corrupt with Gaussian noise, then denoise by Tweedie's step.

    y = x + σ η,  η ~ N(0, I)          x ← y − σ² ∇E(y) / T

For an energy whose gradient is minus the score of the σ-smoothed data density,
y − σ²∇E(y) = y + σ² ∇ log p_σ(y) is the posterior mean E[x | y] (Tweedie's formula), so
each step adds noise and removes it again. A denoising auto-encoder r trained at noise σ
offers exactly such an energy (its gradient is −(r(y) − y)/σ², see
``DenoisingObjective.score_energy``), and the step becomes

    x ← r(x + σ η)

— the DAE Markov chain of Bengio et al. (2013, "Generalized denoising auto-encoders as
generative models"). With any other energy it is a noise-then-gradient-step chain (a
Langevin step of size σ² whose noise comes before the gradient step); only the input
gradient of the energy is used, as in every sampler here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ebmrun.samplers.base import EnergyFn, Sampler, gaussian_like, per_chain_norm


class DenoisingChain(Sampler):
    """Corrupt-then-denoise chain, batched (one chain per row) for any tensor shape.

    Args:
        sigma: σ of the Gaussian corruption, and the scale of the denoising step σ². For a
            DAE it must be the σ its score estimate uses (the config default follows
            ``model.objective.sigma``).
        steps, temperature, box, autocast: see :class:`Sampler`. The box clamps the
            denoised state, not the noisy one (a DAE is trained on unclamped noise).
    """

    def __init__(self, sigma: float = 0.5, steps: int = 50, temperature: float = 1.0,
                 box: Sequence[float] | None = None, autocast: str | None = None) -> None:
        super().__init__(steps=steps, temperature=temperature, box=box, autocast=autocast)
        if sigma <= 0:
            raise ValueError(f"dae_chain sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)

    def step(self, energy_fn: EnergyFn, x: Tensor, state: dict,
             generator: torch.Generator | None) -> tuple[Tensor, dict, dict[str, Tensor]]:
        y = x.add_(gaussian_like(x, generator), alpha=self.sigma)
        energy, grad = self._energy_and_grad(energy_fn, y)
        y.add_(grad, alpha=-self.sigma ** 2 / self.temperature)
        self.project(y)
        return y, state, {"energy": energy.mean(), "grad_norm": per_chain_norm(grad).mean(),
                          "acceptance": torch.ones(())}

    def final_stats(self, state: dict) -> dict[str, float]:
        return {"step_size": self.sigma ** 2, "sigma": self.sigma}
