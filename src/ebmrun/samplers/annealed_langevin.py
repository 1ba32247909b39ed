"""Annealed Langevin dynamics: a temperature schedule and/or a noise-level (σ) schedule.

Temperature annealing (any energy): step t of n uses T_t going from T0 down to T,

    geometric: T_t = T0 · (T / T0)^(t/(n−1))      linear: T_t = T0 + (T − T0) · t/(n−1)
    x ← x − ε ∇E(x)/T_t + √(2ε) η

so chains start hot (exploring across barriers) and settle into p(x) ∝ exp(−E(x)/T). With
``anneal_fraction`` < 1 the schedule ends after that share of the run and the remaining
steps sample at T, so the chains can equilibrate at the target temperature.

Noise-level annealing (score-style models, NCSN; Song & Ermon 2019): with ``sigmas``
σ_1 > … > σ_L, the run is split into L equal blocks; block i uses

    ε_i = ε · σ_i² / σ_L²,   x ← x − ε_i ∇E(x, σ_i)/T_t + √(2ε_i) η

(NCSN writes α_i/2 for our ε_i). The energy is then called as ``energy_fn(x, sigma)`` with
``sigma`` a ``(B,)`` tensor filled with σ_i, i.e. a noise-conditional energy whose
``-∇_x E(x, σ)`` is the score at noise level σ. Both schedules can run together.

Box: values are clamped to the box after every step (as in :mod:`ebmrun.samplers.langevin`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ebmrun.samplers.base import EnergyFn, Sampler, gaussian_like, per_chain_norm

# T_t from (T0, T, fraction of the run done in [0, 1]).
SCHEDULES: dict[str, Callable[[float, float, float], float]] = {
    "geometric": lambda t0, t1, frac: t0 * (t1 / t0) ** frac,
    "linear": lambda t0, t1, frac: t0 + (t1 - t0) * frac,
}


def _with_sigma(energy_fn: Callable[[Tensor, Tensor], Tensor], sigma: Tensor, x: Tensor
                ) -> Tensor:
    return energy_fn(x, sigma)  # positional: any name works for the σ argument


class AnnealedLangevin(Sampler):
    """Unadjusted Langevin with annealed temperature and optional noise-level schedule.

    Args:
        step_size: ε (for the σ schedule: ε at the smallest σ_L).
        initial_temperature: T0 (``temperature`` is the final T); T0 = T disables annealing.
            ``None``: 10 for a plain energy, T (no temperature annealing) with ``sigmas``:
            NCSN anneals the noise level only (Song & Ermon 2019, Algorithm 1).
        schedule: ``geometric`` | ``linear`` temperature schedule.
        anneal_fraction: share of the run over which T0 → T (the rest runs at T).
        sigmas: decreasing noise levels σ_1 > … > σ_L, or ``None`` (plain energy ``E(x)``).
        steps_per_sigma: with ``sigmas``, sets the default ``steps`` to L · steps_per_sigma.
        grad_clip: clamp each input-gradient entry to ``±grad_clip`` (``None`` = off).
        steps, temperature, box, autocast: see :class:`Sampler`.
    """

    def __init__(self, step_size: float = 0.01, initial_temperature: float | None = None,
                 schedule: str = "geometric", anneal_fraction: float = 1.0,
                 sigmas: Sequence[float] | None = None,
                 steps_per_sigma: int | None = None, grad_clip: float | None = None,
                 steps: int = 200, temperature: float = 1.0,
                 box: Sequence[float] | None = None, autocast: str | None = None) -> None:
        if steps_per_sigma is not None and sigmas is None:
            raise ValueError("steps_per_sigma needs sigmas (the noise levels)")
        if sigmas is not None and steps_per_sigma is not None:
            if steps_per_sigma < 1:
                raise ValueError(f"steps_per_sigma must be >= 1, got {steps_per_sigma}")
            steps = len(sigmas) * int(steps_per_sigma)
        super().__init__(steps=steps, temperature=temperature, box=box, autocast=autocast)
        if step_size <= 0:
            raise ValueError(f"annealed_langevin step_size must be > 0, got {step_size}")
        if initial_temperature is None:
            initial_temperature = self.temperature if sigmas is not None else 10.0
        if initial_temperature <= 0:
            raise ValueError(f"initial_temperature must be > 0, got {initial_temperature}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if not 0.0 < anneal_fraction <= 1.0:
            raise ValueError(f"anneal_fraction must be in (0, 1], got {anneal_fraction}")
        self.anneal_fraction = float(anneal_fraction)
        self.sigmas = None if sigmas is None else [float(s) for s in sigmas]
        if self.sigmas is not None and (not self.sigmas or min(self.sigmas) <= 0):
            raise ValueError(f"sigmas must be a non-empty list of positive numbers, got {sigmas}")
        self.step_size = float(step_size)
        self.initial_temperature = float(initial_temperature)
        self.schedule = SCHEDULES[schedule]
        self.grad_clip = None if grad_clip is None else float(grad_clip)

    def chain_energy(self, energy_fn, x: Tensor, state: dict) -> Tensor:
        sigma = self.sigma_at(state["t"], state["steps"])
        if sigma is None:
            return super().chain_energy(energy_fn, x, state)
        rows = torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype)
        return self._energy(functools.partial(_with_sigma, energy_fn, rows), x)

    def target_score(self, energy_fn, x: Tensor) -> Tensor | None:
        # With sigmas the energy also takes σ; the samples target the smallest-σ model.
        if self.sigmas is not None:
            return None
        return super().target_score(energy_fn, x)

    def temperature_at(self, t: int, steps: int) -> float:
        """T_t of step ``t`` in a run of ``steps``: T0 at the first step, T from step
        ``anneal_fraction · (steps − 1)`` on."""
        span = self.anneal_fraction * (steps - 1)
        frac = min(t / span, 1.0) if span > 0 else 1.0
        return self.schedule(self.initial_temperature, self.temperature, frac)

    def sigma_at(self, t: int, steps: int) -> float | None:
        """σ of step ``t``: the run is split into ``len(sigmas)`` equal blocks."""
        if self.sigmas is None:
            return None
        return self.sigmas[min(t * len(self.sigmas) // max(steps, 1), len(self.sigmas) - 1)]

    def step(self, energy_fn: EnergyFn, x: Tensor, state: dict,
             generator: torch.Generator | None) -> tuple[Tensor, dict, dict[str, Tensor]]:
        t, steps = state["t"], state["steps"]
        temperature = self.temperature_at(t, steps)
        sigma = self.sigma_at(t, steps)
        step_size, energy = self.step_size, energy_fn
        stats = {}
        if sigma is not None:
            step_size = self.step_size * (sigma / self.sigmas[-1]) ** 2
            sigma_rows = torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype)
            energy = functools.partial(_with_sigma, energy_fn, sigma_rows)
            stats["sigma"] = torch.tensor(sigma)
        e, grad = self._energy_and_grad(energy, x)
        grad_norm = per_chain_norm(grad).mean()
        if self.grad_clip is not None:
            grad.clamp_(-self.grad_clip, self.grad_clip)
        # In place: x is this sampler's own copy (see Sampler.sample).
        x.add_(grad, alpha=-step_size / temperature)
        x.add_(gaussian_like(x, generator), alpha=(2.0 * step_size) ** 0.5)
        self.project(x)
        state["last_step_size"] = step_size
        return x, state, {"energy": e.mean(), "grad_norm": grad_norm,
                          "acceptance": torch.ones(()), "temperature": torch.tensor(temperature),
                          **stats}

    def final_stats(self, state: dict) -> dict[str, float]:
        return {"step_size": float(state.get("last_step_size", self.step_size))}
