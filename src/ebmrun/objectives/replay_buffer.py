"""Replay buffer of persistent MCMC chains, kept as one preallocated tensor.

Keeping the buffer on the training device as a single tensor makes drawing a batch one
indexing op (no Python list of tensors, no host/device copies).

Each slot also carries its chain's *age*: the number of sampler runs (training steps in which
it was drawn) since the chain last started from uniform noise. A chain drawn at age a is run
by the sampler once more and written back at age a + 1; one restarted from noise is written
back at age 1. So age x ``sampler.steps`` is how many MCMC steps a negative has had; the
initial noise of a new buffer has age 0. The ages are bookkeeping only: they draw no random
numbers, so training is the same with or without them.

:class:`ReplayBufferCD` holds what the objectives trained by contrastive divergence against
such a buffer (the deep EBM's, JEM) share: data noise, the negative phase, the loss terms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ebmrun.samplers.base import SampleResult, Sampler

if TYPE_CHECKING:
    from torch import nn

    from ebmrun.objectives.base import DataInfo


class ReplayBuffer:
    """``size`` stored samples of shape ``item_shape``, initialised uniformly in ``box``.

    Each draw takes ``n`` random slots; a ``reinit_fraction`` of them (Bernoulli per row,
    i.e. Binomial(n, p) in total) restarts from fresh uniform noise so the buffer keeps
    exploring. After sampling, the caller writes the chains back with :meth:`push`.
    :meth:`stats` describes the chains of the last draw (see the module docstring).
    """

    def __init__(self, size: int, item_shape: tuple[int, ...], box: tuple[float, float],
                 device: torch.device, generator: torch.Generator) -> None:
        if size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {size}")
        self.box = box
        self.generator = generator
        self.data = self.uniform(size, item_shape, device)
        self.ages = torch.zeros(size, dtype=torch.int64, device=device)  # (size,)
        # The last draw's chains: their ages after this run of the sampler, and which
        # restarted from noise (the stats of :meth:`stats`).
        self._drawn_ages = torch.zeros(0, dtype=torch.int64, device=device)
        self._drawn_fresh = torch.zeros(0, dtype=torch.bool, device=device)

    def uniform(self, n: int, item_shape: tuple[int, ...], device: torch.device) -> Tensor:
        """``(n, *item_shape)`` uniform samples in the box."""
        low, high = self.box
        return torch.rand(n, *item_shape, device=device, generator=self.generator) \
            .mul_(high - low).add_(low)

    def draw(self, n: int, reinit_fraction: float) -> tuple[Tensor, Tensor]:
        """Starting points ``(n, *item_shape)`` and the slots ``(n,)`` they came from."""
        device = self.data.device
        # Distinct slots (no replacement): writing chains back to repeated indices would be
        # a race with several threads, and resumed runs would not be bit-identical.
        if n <= len(self.data):
            idx = torch.randperm(len(self.data), device=device, generator=self.generator)[:n]
        else:  # a buffer smaller than the batch: slots repeat (the last write wins)
            idx = torch.randint(len(self.data), (n,), device=device, generator=self.generator)
        x0 = self.data[idx]
        fresh = torch.rand(n, device=device, generator=self.generator) < reinit_fraction
        if device.type == "cuda":
            # No host sync, so the step can be a CUDA graph: every row draws noise and the
            # fresh ones take it (CUDA's random stream is not the CPU's anyway).
            noise = self.uniform(n, tuple(self.data.shape[1:]), device)
            x0 = torch.where(fresh.view(-1, *([1] * (x0.dim() - 1))), noise, x0)
        else:
            n_fresh = int(fresh.sum())
            if n_fresh:
                x0[fresh] = self.uniform(n_fresh, tuple(self.data.shape[1:]), device)
        # The age each chain will have once the sampler has run it (0 + 1 for fresh ones).
        self._drawn_ages = torch.where(fresh, 0, self.ages[idx]) + 1
        self._drawn_fresh = fresh
        return x0, idx

    def push(self, idx: Tensor, x: Tensor) -> None:
        """Store the chains' new states ``x`` ``(n, ...)`` in slots ``idx`` ``(n,)`` (the
        slots of the last :meth:`draw`, so their ages advance with them)."""
        self.data[idx] = x.detach().to(self.data.dtype)
        self.ages[idx] = self._drawn_ages

    def stats(self) -> dict[str, Tensor]:
        """Of the last draw's chains: ``age_mean`` (mean sampler runs since their start
        from noise, this step's included) and ``reinit_share`` (share started from noise
        this step). 0-d tensors, as training outputs are."""
        return {"age_mean": self._drawn_ages.float().mean(),
                "reinit_share": self._drawn_fresh.float().mean()}

    def state_dict(self) -> dict:
        return {"data": self.data, "ages": self.ages}

    def load_state_dict(self, state: dict) -> None:
        if state["data"].shape != self.data.shape:
            raise ValueError(f"replay buffer shape {tuple(state['data'].shape)} does not match "
                             f"{tuple(self.data.shape)}")
        self.data.copy_(state["data"])
        # Checkpoints from before the ages were kept: their chains count from age 0 again.
        if "ages" in state:
            self.ages.copy_(state["ages"])
        else:
            self.ages.zero_()


class ReplayBufferCD:
    """Mixin: contrastive divergence with negatives from a replay buffer of persistent
    chains, the parts the deep EBM's contrastive divergence and JEM share. One home for
    their data noise, negative phase, contrastive loss terms, buffer pictures and samples,
    and their training state (the buffer, saved in checkpoints) and histograms (the last
    step's energies).

    The objective sets ``buffer``, ``sampler``, ``alpha``, ``data_noise_std`` and
    ``reinit_fraction`` (besides the :class:`~ebmrun.objectives.base.Objective` attributes
    ``model``, ``data``, ``generator``); ``persistent = False`` (short-run chains) runs
    every chain from noise and writes nothing back.
    """

    model: nn.Module
    data: DataInfo
    generator: torch.Generator
    buffer: ReplayBuffer
    sampler: Sampler
    alpha: float
    data_noise_std: float
    reinit_fraction: float
    persistent = True
    # None: every negative chain runs sampler.steps (K). An int K_max > K: each training
    # batch's chains run a number of steps drawn uniformly from K..K_max (chain_steps).
    chain_steps_max: int | None = None
    _last: dict[str, Tensor]

    def noisy_data(self, x: Tensor) -> Tensor:
        """Real items ``x`` ``(B, ...)`` with Gaussian noise of std ``data_noise_std``
        (clamped to the box): a data distribution the energy can fit without infinitely
        sharp wells. Draws from ``generator`` only when the std is positive."""
        if self.data_noise_std <= 0:
            return x
        x = x + self.data_noise_std * torch.randn(x.shape, device=x.device,
                                                  generator=self.generator)
        return x.clamp_(*self.data.box)

    def negatives(self, n: int) -> SampleResult:
        """The negative phase: ``n`` chains drawn from the buffer (a ``reinit_fraction``
        of them restarted from noise), run by the sampler on :meth:`chain_energy` and,
        if persistent, written back. The result's ``x`` is ``(n, *item_shape)``."""
        x0, slots = self.buffer.draw(n, self.reinit_fraction)
        chains = self.sampler.sample(self.chain_energy(slots), x0, steps=self.chain_steps(),
                                     generator=self.generator)
        if self.persistent:
            self.buffer.push(slots, chains.x)
        return chains

    def chain_steps(self) -> int | None:
        """This batch's chain length: ``None`` (the sampler's K) unless ``chain_steps_max``
        is set, then uniform on K..K_max from ``generator``, so the model also meets the
        states its chains reach past K (short-run chains sampled longer than trained)."""
        if self.chain_steps_max is None:
            return None
        low = self.sampler.steps
        return int(torch.randint(low, self.chain_steps_max + 1, (1,), generator=self.generator,
                                 device=self.generator.device).item())

    def chain_energy(self, slots: Tensor):
        """The energy function ``(B, ...) -> (B,)`` the chains of buffer ``slots`` ``(n,)``
        run on: E(x) (JEM may condition them on a label per slot)."""
        return self.model.energy

    def contrastive_terms(self, e_data: Tensor, e_sample: Tensor,
                          chains: SampleResult) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss ``mean E(x_data) − mean E(x_sample) + α · mean(E(x_data)² +
        E(x_sample)²)`` (with grad) of energies ``(B,)`` of the data and of the negatives
        ``chains``, and the scalars to log: ``loss_cd``, ``loss_reg``, ``energy_data``,
        ``energy_sample``, ``energy_gap``, ``sampler/*``. Keeps the energies for
        :meth:`histograms`."""
        loss_cd = e_data.mean() - e_sample.mean()
        loss_reg = self.alpha * (e_data.pow(2).mean() + e_sample.pow(2).mean())
        self._last = {"energy/data": e_data.detach(), "energy/samples": e_sample.detach()}
        return loss_cd + loss_reg, {
            "loss_cd": loss_cd.detach(),
            "loss_reg": loss_reg.detach(),
            "energy_data": e_data.mean().detach(),
            "energy_sample": e_sample.mean().detach(),
            "energy_gap": (e_sample.mean() - e_data.mean()).detach(),
            "sampler/grad_norm": chains.stats["grad_norm"].mean(),
            # Acceptance and (adapted) step size: constant for Langevin, telling for MH samplers.
            **{f"sampler/{k}": chains.stats[k] for k in ("acceptance_rate", "step_size")
               if k in chains.stats},
            # A drawn chain length (chain_steps_max): this batch's, as a curve over the run.
            **({"sampler/chain_steps": float(chains.stats["energy"].numel())}
               if self.chain_steps_max is not None else {}),
        }

    def replay_samples(self, n: int, generator: torch.Generator) -> Tensor | None:
        """``n`` random buffer slots ``(n, *item_shape)``; ``None`` for short-run chains."""
        if not self.persistent:
            return None
        data = self.buffer.data
        slots = torch.randperm(len(data), device=data.device, generator=generator)[:n]
        return data[slots]

    def buffer_picture(self, n: int = 64) -> Tensor:
        """``n`` buffer slots ``(n, *item_shape)``, the same slots at every step (a fixed
        draw, so the picture shows the chains changing)."""
        slots = torch.randperm(len(self.buffer.data), generator=torch.Generator().manual_seed(0))
        return self.buffer.data[slots[:n].to(self.buffer.data.device)]

    def histograms(self) -> dict[str, Tensor]:
        return dict(self._last)

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
