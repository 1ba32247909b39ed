"""Replica exchange (parallel tempering) for multimodal targets.

Every chain runs K replicas at temperatures geometric from T (the target) to T_max:
T_k = T · (T_max/T)^(k/(K−1)). Hot replicas cross energy barriers; swaps pass their states
down the ladder. Every ``swap_every`` steps, neighbouring replicas (k, k+1) exchange states
with probability

    min(1, exp((1/T_k − 1/T_{k+1}) · (E(x_k) − E(x_{k+1}))))

which keeps the product of the K tempered targets invariant, so the T replica alone is an
exact chain for p(x) ∝ exp(−E(x)/T). Even and odd pairs alternate between swap rounds
(non-reversible "DEO" scheme), which moves states along the ladder faster than random pairs.

Within each replica the move is a Langevin or MALA step on the tempered energy E(x)/T_k (the
inner sampler runs at temperature 1, so it needs no per-row temperatures). All K·B replica
rows are evaluated in one batch, so one step costs about K plain steps.

Box: inherited from the move (``langevin`` clamps, ``mala`` reflects proposals exactly).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ebmrun.samplers.base import EnergyFn, Sampler
from ebmrun.samplers.langevin import Langevin
from ebmrun.samplers.mala import MALA


def _langevin_move(step_size: float, adapt: str, adapt_steps: int, steps: int,
                   box: tuple[float, float] | None, autocast: str | None) -> Sampler:
    # Plain ULA (noise √(2ε), no gradient clamp): the tutorial variant would not sample.
    return Langevin(step_size=step_size, noise_std=None, grad_clip=None, steps=1,
                    temperature=1.0, box=box, autocast=autocast)


def _mala_move(step_size: float, adapt: str, adapt_steps: int, steps: int,
               box: tuple[float, float] | None, autocast: str | None) -> Sampler:
    return MALA(step_size=step_size, adapt=adapt, adapt_steps=adapt_steps, steps=steps,
                temperature=1.0, box=box, autocast=autocast)


MOVES: dict[str, Callable[..., Sampler]] = {"langevin": _langevin_move, "mala": _mala_move}


def swap_log_accept(energy_low: Tensor, energy_high: Tensor, temp_low: Tensor,
                    temp_high: Tensor) -> Tensor:
    """log acceptance ratio of exchanging the states of a colder replica (``temp_low``,
    energy ``energy_low``) and a hotter one: the ratio of the product of the two tempered
    targets after and before the swap, ``(1/T_low − 1/T_high)·(E_low − E_high)``; NaN → −inf.
    Shapes broadcast."""
    log_accept = (1.0 / temp_low - 1.0 / temp_high) * (energy_low - energy_high)
    return torch.nan_to_num(log_accept, nan=-math.inf)


def _tempered(energy_fn: EnergyFn, temperatures: Tensor, x: Tensor) -> Tensor:
    """E(x)/T_row for the stacked replicas ``(K·B, ...)``; ``temperatures`` is ``(K·B,)``."""
    return energy_fn(x) / temperatures


class ReplicaExchange(Sampler):
    """Parallel tempering; returns the T replica's states, one chain per batch row.

    Args:
        num_replicas: K (K = 1 is the plain move).
        max_temperature: T_max, the hottest replica (should flatten the barriers).
        swap_every: steps between swap rounds.
        move: ``langevin`` | ``mala`` within each replica.
        step_size: the move's ε (MALA: initial ε, adapted per replica row by default).
        adapt, adapt_steps: MALA step-size adaptation (ignored by ``langevin``) during the
            first ``adapt_steps`` sweeps; every temperature gets its own ε, pooled over the
            chains at that temperature (a property of the rung, not of a state, so the
            frozen kernel stays exact).
        steps, temperature, box, autocast: see :class:`Sampler` (``steps`` counts sweeps:
            one move of all K replicas).

    Stats: ``swap_acceptance`` (mean over all pairs and rounds) and ``swap_acceptance_min``
    (the worst neighbouring pair: the bottleneck of the ladder) besides the usual traces;
    ``energy`` is the T replica's mean energy, ``acceptance`` / ``grad_norm`` come from the
    move over all replicas (gradients of the tempered energies).
    """

    def __init__(self, num_replicas: int = 8, max_temperature: float = 10.0,
                 swap_every: int = 5, move: str = "mala", step_size: float = 0.05,
                 adapt: str = "shared", adapt_steps: int = 100, steps: int = 200,
                 temperature: float = 1.0, box: Sequence[float] | None = None,
                 autocast: str | None = None) -> None:
        super().__init__(steps=steps, temperature=temperature, box=box, autocast=autocast)
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if max_temperature < temperature:
            raise ValueError(f"max_temperature ({max_temperature}) must be >= temperature "
                             f"({temperature})")
        if swap_every < 1:
            raise ValueError(f"swap_every must be >= 1, got {swap_every}")
        if move not in MOVES:
            raise ValueError(f"move must be one of {', '.join(MOVES)}, got {move!r}")
        self.num_replicas = int(num_replicas)
        self.swap_every = int(swap_every)
        ratio = float(max_temperature) / self.temperature
        exponents = torch.arange(self.num_replicas) / max(self.num_replicas - 1, 1)
        self.temperatures = self.temperature * ratio ** exponents.double()  # (K,)
        self.move = MOVES[move](float(step_size), adapt, int(adapt_steps), self.steps, self.box,
                                autocast)

    def warmup_for(self, steps: int) -> int:
        return self.move.warmup_for(steps)

    def init_state(self, energy_fn: EnergyFn, x: Tensor, generator: torch.Generator | None
                   ) -> dict:
        batch, k = x.shape[0], self.num_replicas
        row_temps = self.temperatures.to(device=x.device, dtype=torch.float32)
        row_temps = row_temps.repeat_interleave(batch)  # replica-major rows: (K·B,)
        tempered = functools.partial(_tempered, energy_fn, row_temps)
        replicas = x.repeat(k, *([1] * (x.dim() - 1)))  # every replica starts at x0
        move_state = self.move.init_state(tempered, replicas, generator)
        move_state["groups"] = k  # adapt one ε per temperature rung
        return {"replicas": replicas, "tempered": tempered, "move": move_state,
                "swap_accept": torch.zeros(max(k - 1, 1), dtype=torch.float64),
                "swap_tries": torch.zeros(max(k - 1, 1), dtype=torch.float64), "rounds": 0}

    def step(self, energy_fn: EnergyFn, x: Tensor, state: dict,
             generator: torch.Generator | None) -> tuple[Tensor, dict, dict[str, Tensor]]:
        move_state = state["move"]
        move_state["t"], move_state["steps"] = state["t"], state["steps"]
        replicas, move_state, move_stats = self.move.step(
            state["tempered"], state["replicas"], move_state, generator)
        if self.num_replicas > 1 and (state["t"] + 1) % self.swap_every == 0:
            replicas = self._swap(energy_fn, replicas, state, generator)
            move_state = self.move.refresh_state(state["tempered"], replicas, move_state)
        state["replicas"], state["move"] = replicas, move_state
        x = replicas[: x.shape[0]].clone()  # the T replica (row block 0)
        return x, state, {"energy": self._energy(energy_fn, x).mean(),
                          "grad_norm": move_stats["grad_norm"],
                          "acceptance": move_stats["acceptance"]}

    def _swap(self, energy_fn: EnergyFn, replicas: Tensor, state: dict,
              generator: torch.Generator | None) -> Tensor:
        """One round of neighbour swaps (even pairs, then odd pairs next round)."""
        k = self.num_replicas
        stacked = replicas.reshape(k, -1, *replicas.shape[1:])  # (K, B, ...)
        energies = self._energy(energy_fn, replicas).double().reshape(k, -1)  # (K, B)
        low = torch.arange(state["rounds"] % 2, k - 1, 2)  # disjoint pairs (low, low + 1)
        state["rounds"] += 1
        if len(low) == 0:
            return replicas
        temps = self.temperatures.to(energies.device)
        log_accept = swap_log_accept(energies[low], energies[low + 1], temps[low, None],
                                     temps[low + 1, None])  # (P, B)
        uniform = torch.rand(log_accept.shape, device=replicas.device, generator=generator)
        accept = uniform.double().log() < log_accept
        state["swap_accept"][low] += accept.double().mean(1).cpu()
        state["swap_tries"][low] += 1
        swap = accept.reshape(accept.shape + (1,) * (replicas.dim() - 1))  # (P, B, 1, ...)
        lower, upper = stacked[low], stacked[low + 1]
        swapped = stacked.clone()
        swapped[low] = torch.where(swap, upper, lower)
        swapped[low + 1] = torch.where(swap, lower, upper)
        return swapped.reshape(replicas.shape)

    def final_stats(self, state: dict) -> dict[str, float]:
        stats = dict(self.move.final_stats(state["move"]))
        tried = state["swap_tries"] > 0
        if tried.any():
            rates = state["swap_accept"][tried] / state["swap_tries"][tried]
            stats |= {"swap_acceptance": float(rates.mean()),
                      "swap_acceptance_min": float(rates.min())}
        return stats
