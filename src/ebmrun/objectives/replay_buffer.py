"""Replay buffer of persistent MCMC chains, kept as one preallocated tensor.

Keeping the buffer on the training device as a single tensor makes drawing a batch one
indexing op (no Python list of tensors, no host/device copies).
"""

from __future__ import annotations

import torch
from torch import Tensor


class ReplayBuffer:
    """``size`` stored samples of shape ``item_shape``, initialised uniformly in ``box``.

    Each draw takes ``n`` random slots; a ``reinit_fraction`` of them (Bernoulli per row,
    i.e. Binomial(n, p) in total) restarts from fresh uniform noise so the buffer keeps
    exploring. After sampling, the caller writes the chains back with :meth:`push`.
    """

    def __init__(self, size: int, item_shape: tuple[int, ...], box: tuple[float, float],
                 device: torch.device, generator: torch.Generator) -> None:
        if size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {size}")
        self.box = box
        self.generator = generator
        self.data = self.uniform(size, item_shape, device)

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
        return x0, idx

    def push(self, idx: Tensor, x: Tensor) -> None:
        """Store the chains' new states ``x`` ``(n, ...)`` in slots ``idx`` ``(n,)``."""
        self.data[idx] = x.detach().to(self.data.dtype)

    def state_dict(self) -> dict:
        return {"data": self.data}

    def load_state_dict(self, state: dict) -> None:
        if state["data"].shape != self.data.shape:
            raise ValueError(f"replay buffer shape {tuple(state['data'].shape)} does not match "
                             f"{tuple(self.data.shape)}")
        self.data.copy_(state["data"])
