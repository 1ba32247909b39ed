"""Shared machinery of the Metropolis–Hastings samplers (MALA, HMC, random-walk Metropolis).

A subclass only proposes: :meth:`MetropolisSampler.propose` returns the proposal ``y``, its
energy (and input gradient), and the log proposal-correction term. This base class does the
rest for every chain at once: the accept/reject test for the target
``p(x) ∝ exp(-E(x)/T)``, the box, the cache of energies/gradients at the current states,
shared (or warm-up-only per-chain) step sizes, and their Robbins–Monro adaptation during
warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ebmrun.samplers.base import EnergyFn, Sampler, per_chain_norm, per_chain_view
from ebmrun.samplers.box import in_box

ADAPT_MODES = ("shared", "per_chain", "none")


def _pool(values: Tensor, groups: int) -> Tensor:
    """Mean of ``values`` ``(B,)`` within ``groups`` equal contiguous blocks, broadcast back."""
    blocks = values.reshape(groups, -1)
    return blocks.mean(1, keepdim=True).expand_as(blocks).reshape(values.shape)


@dataclass(frozen=True)
class StepSizeAdapter:
    """Robbins–Monro on the log step size toward a target acceptance probability, during
    warm-up only.

        log ε ← log ε + γ_t (α − α*),   γ_t = gain · (t + 1)^(−decay)

    Acceptance above target grows ε, below target shrinks it; the decaying gain
    (Σγ = ∞, Σγ² < ∞ for 0.5 < decay ≤ 1) makes ε converge instead of jittering.

    Why every mode ends with one ε per group: a step size frozen per chain is a function of
    where that chain spent its warm-up, so after warm-up each chain runs a kernel keyed to its
    own position (on 0.5·N(0, 0.1²) + 0.5·N(0, 3²) chains in the narrow component keep a
    tiny ε and stay there: MALA's variance came out 2.57 for a true 4.505). Pooling the
    adapted ε over the chains (cross-chain adaptation, as in Hoffman, Radul & Sountsov 2021)
    makes the frozen kernel the same for every chain, hence π-invariant given ε, and the
    samples after warm-up exact. ``groups`` > 1 pools within equal blocks of rows instead
    (replica exchange: one ε per temperature rung, a property of the row, not the state).

    Args:
        mode: ``shared`` (one ε per group from the group-mean acceptance), ``per_chain``
            (each row its own ε during warm-up, replaced by the group's geometric mean when
            warm-up ends) or ``none``.
        target: α*, e.g. 0.574 (MALA), 0.65 (HMC), 0.234 (random walk).
        steps: warm-up length; ε is frozen from step ``steps`` on.
    """

    mode: str
    target: float
    steps: int
    gain: float = 1.0
    decay: float = 0.6

    def __post_init__(self) -> None:
        if self.mode not in ADAPT_MODES:
            raise ValueError(f"adapt must be one of {', '.join(ADAPT_MODES)}, got {self.mode!r}")
        if not 0.0 < self.target < 1.0:
            raise ValueError(f"target_accept must be in (0, 1), got {self.target}")
        if self.steps < 0:
            raise ValueError(f"adapt_steps must be >= 0, got {self.steps}")

    @property
    def active(self) -> bool:
        return self.mode != "none" and self.steps > 0

    def warmup_for(self, steps: int) -> int:
        """Warm-up length of a run of ``steps``: ``self.steps``, or the first half of a run
        too short for it (short-run chains called with fewer steps, e.g. in training)."""
        if not self.active:
            return 0
        return self.steps if self.steps < steps else steps // 2

    def update(self, log_step: Tensor, accept_prob: Tensor, t: int, warmup: int,
               groups: int = 1) -> Tensor:
        """New log step sizes ``(B,)`` after step ``t`` of a run whose first ``warmup``
        steps adapt, with acceptance probabilities ``(B,)``."""
        if self.mode == "none" or t >= warmup:
            return log_step
        accept = accept_prob.float()
        if self.mode == "shared":
            accept = _pool(accept, groups)
        log_step = log_step + self.gain * (t + 1.0) ** -self.decay * (accept - self.target)
        if t == warmup - 1:  # warm-up ends: one frozen ε per group
            log_step = _pool(log_step, groups)
        return log_step


class MetropolisSampler(Sampler):
    """Base of the MH samplers: batched accept/reject, box, step sizes, adaptation, stats.

    State per run: ``energy`` ``(B,)`` and ``grad`` (shape of ``x``, or ``None`` for
    samplers that need no gradient) at the current states, and ``log_step`` ``(B,)``.

    Box handling: a proposal with any coordinate outside the box is rejected (its target
    density is zero), which is exact for the box-truncated target. Samplers whose
    ``box_modes`` include ``"reflect"`` may instead fold proposals back in by reflection.

    Args:
        step_size: initial ε (a proposal scale; its meaning is the subclass's).
        target_accept: acceptance probability the adaptation aims for.
        adapt: ``shared`` | ``per_chain`` | ``none`` (see :class:`StepSizeAdapter`).
        adapt_steps: warm-up steps during which ε adapts (the first ``adapt_steps`` steps of
            every ``sample`` call; each call starts again from ``step_size``, so the same
            seed gives the same chains). With adaptation on it must be < ``steps``: the
            steps after warm-up are the exact ones.
        box_mode: ``reject`` or, where supported, ``reflect``.
        steps, temperature, box, autocast: see :class:`Sampler`.
    """

    box_modes: tuple[str, ...] = ("reject",)

    def __init__(self, step_size: float, target_accept: float, adapt: str = "shared",
                 adapt_steps: int = 50, box_mode: str = "reject", steps: int = 100,
                 temperature: float = 1.0, box: Sequence[float] | None = None,
                 autocast: str | None = None) -> None:
        super().__init__(steps=steps, temperature=temperature, box=box, autocast=autocast)
        if step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {step_size}")
        if box_mode not in self.box_modes:
            raise ValueError(f"box_mode must be one of {', '.join(self.box_modes)} for "
                             f"{type(self).__name__}, got {box_mode!r}")
        self.step_size = float(step_size)
        self.box_mode = box_mode
        self.adapter = StepSizeAdapter(adapt, float(target_accept), int(adapt_steps))
        if self.adapter.active and self.adapter.steps >= self.steps > 0:
            raise ValueError(f"adapt_steps={adapt_steps} must be < steps={steps} with adapt="
                             f"{adapt}: the step size would adapt for the whole run and the "
                             f"samples would not be exact (fix: raise steps, lower adapt_steps "
                             f"or set adapt=none)")

    def warmup_for(self, steps: int) -> int:
        return self.adapter.warmup_for(steps)

    # ----------------------------------------------------------------- subclass hooks
    def evaluate(self, energy_fn: EnergyFn, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Energy ``(B,)`` and input gradient at ``x``; gradient-free samplers may override
        this to skip the backward pass."""
        return self._energy_and_grad(energy_fn, x)

    def propose(self, energy_fn: EnergyFn, x: Tensor, state: dict, step: Tensor,
                generator: torch.Generator | None
                ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """Proposal for every chain.

        Args:
            x: current states ``(B, ...)``; ``state`` holds their ``energy`` and ``grad``.
            step: per-chain step sizes shaped ``(B, 1, ..., 1)``.

        Returns:
            ``y`` (shape of ``x``), ``E(y)`` ``(B,)``, ``∇E(y)`` (or ``None``) and the log
            correction ``(B,)`` added to ``-(E(y) - E(x)) / T`` in the acceptance ratio
            (``log q(x|y) - log q(y|x)``; kinetic-energy change for HMC).
        """
        raise NotImplementedError

    # ----------------------------------------------------------------- the shared step
    def log_accept_ratio(self, y: Tensor, energy_x: Tensor, energy_y: Tensor,
                         log_correction: Tensor) -> Tensor:
        """log of the MH ratio ``(B,)`` for moving x → y (clamp at 0 for the probability):
        ``−(E(y) − E(x))/T + log_correction``, −inf outside the box (the truncated target
        is zero there) and for NaN/inf energies (never accepted)."""
        log_alpha = -(energy_y - energy_x) / self.temperature + log_correction
        log_alpha = torch.where(in_box(y, self.box), log_alpha, -math.inf)
        return torch.nan_to_num(log_alpha, nan=-math.inf, posinf=-math.inf, neginf=-math.inf)

    def init_state(self, energy_fn: EnergyFn, x: Tensor, generator: torch.Generator | None
                   ) -> dict:
        log_step = torch.full((x.shape[0],), math.log(self.step_size), device=x.device)
        return self.refresh_state(energy_fn, x, {"log_step": log_step})

    def refresh_state(self, energy_fn: EnergyFn, x: Tensor, state: dict) -> dict:
        state["energy"], state["grad"] = self.evaluate(energy_fn, x)
        return state

    def step(self, energy_fn: EnergyFn, x: Tensor, state: dict,
             generator: torch.Generator | None) -> tuple[Tensor, dict, dict[str, Tensor]]:
        step = per_chain_view(state["log_step"].exp(), x).to(x.dtype)
        y, energy_y, grad_y, log_correction = self.propose(energy_fn, x, state, step, generator)
        accept_prob = self.log_accept_ratio(y, state["energy"], energy_y,
                                            log_correction).clamp(max=0.0).exp()
        uniform = torch.rand(accept_prob.shape, device=x.device, generator=generator)
        accept = uniform < accept_prob
        x = torch.where(per_chain_view(accept, x), y, x)
        state["energy"] = torch.where(accept, energy_y, state["energy"])
        if grad_y is not None:
            state["grad"] = torch.where(per_chain_view(accept, y), grad_y, state["grad"])
        state["log_step"] = self.adapter.update(state["log_step"], accept_prob, state["t"],
                                                self.warmup_for(state["steps"]),
                                                state.get("groups", 1))
        grad = state["grad"]
        grad_norm = (per_chain_norm(grad).mean() if grad is not None
                     else torch.full((), math.nan, device=x.device))
        return x, state, {"energy": state["energy"].mean(), "grad_norm": grad_norm,
                          "acceptance": accept_prob.mean(),
                          "step_size_trace": state["log_step"].exp().mean()}

    def final_stats(self, state: dict) -> dict[str, float]:
        """Mean, min and max per-chain step size after the run (equal when shared)."""
        steps = state["log_step"].exp()
        return {"step_size": float(steps.mean()), "step_size_min": float(steps.min()),
                "step_size_max": float(steps.max())}
