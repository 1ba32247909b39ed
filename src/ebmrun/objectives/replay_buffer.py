"""Replay buffer of persistent MCMC chains, kept as one preallocated tensor.

Keeping the buffer on the training device as a single tensor makes drawing a batch one
indexing op (no Python list of tensors, no host/device copies).

Each slot also carries its chain's *age*: the number of sampler runs (training steps in which
it was drawn) since the chain last started from uniform noise. A chain drawn at age a is run
by the sampler once more and written back at age a + 1; one restarted from noise is written
back at age 1. So age x ``sampler.steps`` is how many MCMC steps a negative has had; the
initial noise of a new buffer has age 0. The ages are bookkeeping only: they draw no random
numbers, so training is the same with or without them.
"""

from __future__ import annotations

import torch
from torch import Tensor


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


class ReplayBufferState:
    """Mixin for objectives whose training state is their replay buffer ``self.buffer``
    (saved in checkpoints) and whose histograms are the last step's ``self._last``
    (the deep EBM's contrastive divergence, JEM)."""

    buffer: ReplayBuffer
    _last: dict[str, Tensor]

    def histograms(self) -> dict[str, Tensor]:
        return dict(self._last)

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
