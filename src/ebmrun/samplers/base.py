"""The sampler contract shared by every MCMC algorithm.

A sampler only ever sees an energy function ``energy_fn(x: (B, ...)) -> (B,)`` (low = likely)
and a batch of starting points, one independent chain per batch row. It knows nothing of
models, optimizers, replay buffers or training mode, and never touches parameter gradients:
input gradients come from ``torch.autograd.grad`` with respect to ``x`` only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ebmrun.samplers import graphed
from ebmrun.samplers.box import parse_box
from ebmrun.samplers.energy_eval import (AUTOCAST_DTYPES, EnergyFn, autocast_dtype_for,
                                         energy_and_grad, energy_only)


@dataclass
class SampleResult:
    """Output of :meth:`Sampler.sample`.

    Attributes:
        x: final states, same shape as ``x0``.
        stats: diagnostics for people tuning the sampler. Per-step traces are 1-D tensors of
            length ``steps`` on the chains' device (``energy``: mean energy, ``grad_norm``:
            mean per-chain L2 norm of the input gradient, ``acceptance``: mean acceptance
            rate, plus any extra per-step stat a sampler reports, e.g. ``temperature``);
            scalars are floats (``step_size`` after adaptation, ``acceptance_rate`` overall,
            sampler-specific extras such as ``swap_acceptance``).
        chain: snapshots ``[x_t]`` taken every ``snapshot_every`` steps (first and last
            included) when requested, else empty.
        chain_traces: with :attr:`Sampler.record_chains` on, per-chain per-step traces
            ``(B, steps)`` for convergence diagnostics: ``energy`` (E of every chain after
            every step) and, for items of at most :data:`TRACE_MAX_DIMS` numbers, every
            coordinate ``x[i]``; else empty.
        score: with :attr:`Sampler.record_chains` on and small items, the target's score
            ``−∇E(x)/T`` at the final states (shape of ``x``), for the kernel Stein
            discrepancy; else ``None``.
    """

    x: Tensor
    stats: dict[str, Tensor | float] = field(default_factory=dict)
    chain: list[Tensor] = field(default_factory=list)
    chain_traces: dict[str, Tensor] = field(default_factory=dict)
    score: Tensor | None = None

    def summary(self) -> dict[str, float]:
        """Scalar view of ``stats`` (traces reduced to their last / mean value) for logs."""
        out: dict[str, float] = {}
        for key, value in self.stats.items():
            if isinstance(value, Tensor):
                if value.numel() == 0:
                    continue
                out[f"{key}_last"] = float(value[-1])
                out[f"{key}_mean"] = float(value.float().mean())
            else:
                out[key] = float(value)
        return out


@dataclass
class Loop:
    """What :meth:`Sampler.run_loop` leaves behind: final states ``x`` ``(B, ...)``, per-step
    traces ``(steps,)`` on x's device, the sampler's state, snapshots and per-chain rows."""

    x: Tensor
    traces: dict[str, Tensor]
    state: dict
    chain: list[Tensor] = field(default_factory=list)
    per_chain: list[Tensor] = field(default_factory=list)


TRACE_MAX_DIMS = 16  # items up to this size (2-D toys, analytic targets) trace coordinates


class Sampler(ABC):
    """Base class: batched chains, temperature, optional box constraint, snapshots.

    Args:
        steps: default number of steps when ``sample`` is called without ``steps``.
        temperature: T in p(x) ∝ exp(-E(x)/T); high T explores, low T settles.
        box: ``[low, high]`` clamp applied after every step (e.g. ``[-1, 1]`` for images).
        autocast: ``"bf16"`` runs the energy in bfloat16 autocast (faster on CPUs with
            AVX-512 BF16, and on GPUs for large energies); ``"auto"`` picks bf16 only on
            CPUs that compute it natively (see :func:`autocast_dtype_for`); ``None`` keeps
            float32.
    """

    #: Record per-chain traces and the final score for diagnostics (``task=sample`` turns it
    #: on); costs one extra energy evaluation per step.
    record_chains: bool = False
    #: Whether :meth:`step` can be recorded in a CUDA graph: no host syncs (``float(t)``,
    #: ``.item()``, boolean indexing) and no Python branch on tensor values. Samplers that
    #: say so run their whole loop as one replayed graph on CUDA.
    capturable: bool = False
    #: Use CUDA graphs where :attr:`capturable` (``device.cuda_graphs``; off = plain eager).
    cuda_graphs: bool = True
    #: Every move is taken (no accept step): the acceptance rate is 1 without reading the
    #: per-step trace.
    always_accepts: bool = False

    def __init__(self, steps: int = 60, temperature: float = 1.0,
                 box: Sequence[float] | None = None, autocast: str | None = None) -> None:
        if steps < 0:
            raise ValueError(f"sampler steps must be >= 0, got {steps}")
        if temperature <= 0:
            raise ValueError(f"sampler temperature must be > 0, got {temperature}")
        self.steps = int(steps)
        self.temperature = float(temperature)
        self.box = parse_box(box)
        if autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast={autocast!r} is invalid (choose from: auto, bf16, fp16, "
                             f"null)")
        self.autocast = autocast

    def sample(self, energy_fn: EnergyFn, x0: Tensor, *, steps: int | None = None,
               generator: torch.Generator | None = None, snapshot_every: int = 0) -> SampleResult:
        """Run ``steps`` MCMC steps from ``x0`` ``(B, ...)``; returns the final states and stats.

        On CUDA, a loop that can be captured (see :mod:`ebmrun.samplers.graphed`) is recorded
        once as a CUDA graph and replayed: the same kernels and random numbers, without the
        per-kernel launch cost that makes small energies launch-bound.
        """
        steps = self.steps if steps is None else int(steps)
        captured = graphed.replay_or_none(self, energy_fn, x0, steps, generator,
                                          snapshot_every)
        loop = captured if captured is not None else self.run_loop(
            energy_fn, x0, steps, generator, snapshot_every)
        return self.finish(energy_fn, loop, steps)

    def run_loop(self, energy_fn: EnergyFn, x0: Tensor, steps: int,
                 generator: torch.Generator | None, snapshot_every: int = 0) -> "Loop":
        """The ``steps`` MCMC steps themselves, without a host sync while the chains run:
        per-step statistics go into traces on x's device, read once at the end."""
        x = self.project(x0.detach().clone())
        device = x.device
        traces = {name: torch.zeros(steps, device=device)
                  for name in ("energy", "grad_norm", "acceptance")}
        chain = [x.clone()] if snapshot_every > 0 else []
        state = self.init_state(energy_fn, x, generator)
        state["steps"] = steps
        record = self.record_chains
        small = x[0].numel() <= TRACE_MAX_DIMS
        per_chain: list[Tensor] = []
        for t in range(steps):
            state["t"] = t  # schedules and warm-up windows read the step index from here
            x, state, step_stats = self.step(energy_fn, x, state, generator)
            for name, value in step_stats.items():
                trace = traces.get(name)
                if trace is None:  # extra per-step stats (temperature, ...) become traces too
                    trace = traces[name] = torch.zeros(steps, device=device)
                trace[t] = value
            if snapshot_every > 0 and ((t + 1) % snapshot_every == 0 or t + 1 == steps):
                chain.append(x.clone())
            if record:  # (B, 1 + D): energy, then the coordinates of small items
                row = [self.chain_energy(energy_fn, x, state)[:, None].float()]
                per_chain.append(torch.cat(row + ([x.flatten(1).float()] if small else []), 1)
                                 .cpu())
        return Loop(x=x, traces=traces, state=state, chain=chain, per_chain=per_chain)

    def finish(self, energy_fn: EnergyFn, loop: "Loop", steps: int) -> SampleResult:
        """The :class:`SampleResult` of a finished loop with its run-level stats. The traces
        stay on the chains' device: copying them to the host here would make the CPU wait
        for the chains before it can queue the rest of a training step."""
        x = loop.x
        stats: dict[str, Tensor | float] = dict(loop.traces)
        stats.update(self.final_stats(loop.state))
        stats["warmup_steps"] = float(self.warmup_for(steps))
        if steps:
            # Reading the trace is a host sync; samplers that take every move skip it.
            stats["acceptance_rate"] = (1.0 if self.always_accepts
                                        else float(stats["acceptance"].mean()))
        result = SampleResult(x=x.detach(), stats=stats, chain=loop.chain)
        record, small = self.record_chains, x[0].numel() <= TRACE_MAX_DIMS
        if record and loop.per_chain:
            stacked = torch.stack(loop.per_chain, 2)  # (B, 1 + D, steps)
            result.chain_traces["energy"] = stacked[:, 0]
            for i in range(1, stacked.shape[1]):
                result.chain_traces[f"x[{i - 1}]"] = stacked[:, i]
        if record and small:
            result.score = self.target_score(energy_fn, x)
        return result

    def chain_energy(self, energy_fn: EnergyFn, x: Tensor, state: dict) -> Tensor:
        """Each chain's energy ``(B,)`` at ``x`` for the diagnostic traces."""
        return self._energy(energy_fn, x)

    def target_score(self, energy_fn: EnergyFn, x: Tensor) -> Tensor | None:
        """Score ``∇log p = −∇E(x)/T`` of the target at ``x`` (``None`` where the energy
        needs more than ``x``, e.g. noise-conditional energies)."""
        return -self._energy_and_grad(energy_fn, x)[1].detach() / self.temperature

    def warmup_for(self, steps: int) -> int:
        """How many of a run's first ``steps`` are warm-up (adaptation still changing the
        kernel): diagnostics discard them. Samplers that do not adapt: 0."""
        return 0

    def project(self, x: Tensor) -> Tensor:
        """Apply the box constraint in place (a no-op without one)."""
        return x.clamp_(*self.box) if self.box is not None else x

    def init_state(self, energy_fn: EnergyFn, x: Tensor, generator: torch.Generator | None
                   ) -> dict:
        """Per-run state carried across steps (cached energies, step sizes, ...).

        :meth:`sample` adds ``state["steps"]`` (the run's length) and sets ``state["t"]``
        (the index of the step about to run) before every :meth:`step`.
        """
        return {}

    def refresh_state(self, energy_fn: EnergyFn, x: Tensor, state: dict) -> dict:
        """Recompute whatever ``state`` caches about ``x`` after someone else changed ``x``
        (e.g. replica exchange swapping chains); keeps adapted settings such as step sizes.
        Samplers without a cache keep the default no-op."""
        return state

    def final_stats(self, state: dict) -> dict[str, float]:
        """Scalars to report after the run, e.g. the adapted step size."""
        return {}

    @abstractmethod
    def step(self, energy_fn: EnergyFn, x: Tensor, state: dict,
             generator: torch.Generator | None) -> tuple[Tensor, dict, dict[str, Tensor]]:
        """One MCMC step for every chain: returns new x, new state and this step's stats
        (0-d tensors for ``energy``, ``grad_norm``, ``acceptance``)."""

    def _energy_and_grad(self, energy_fn: EnergyFn, x: Tensor) -> tuple[Tensor, Tensor]:
        return energy_and_grad(energy_fn, x, autocast_dtype_for(self.autocast, x.device))

    def _energy(self, energy_fn: EnergyFn, x: Tensor) -> Tensor:
        return energy_only(energy_fn, x, autocast_dtype_for(self.autocast, x.device))


def gaussian_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``x`` drawn from ``generator`` (on x's device)."""
    return torch.empty_like(x).normal_(generator=generator)


def per_chain_norm(g: Tensor) -> Tensor:
    """L2 norm of each chain's gradient: ``(B, ...) -> (B,)``."""
    return g.flatten(1).norm(dim=1)


def per_chain_sum(v: Tensor) -> Tensor:
    """Sum over every dimension but the batch: ``(B, ...) -> (B,)``."""
    return v.flatten(1).sum(dim=1)


def per_chain_view(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-chain ``(B,)`` tensor to ``(B, 1, ..., 1)`` so it broadcasts over ``like``."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))
