"""An exponential moving average of the model's weights, for sampling and evaluation.

    θ_ema ← decay · θ_ema + (1 − decay) · θ      after every training step

``optim.ema: 0.999`` turns it on; pictures, periodic evaluation, the final samples and
``task=sample``/``eval`` of the checkpoint then use θ_ema (checkpoints hold both: ``model``
the raw weights training resumes from, ``ema`` the average).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    """EMA of ``model``'s floating-point parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.model, self.decay = model, float(decay)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self) -> None:
        shadows, values = [], []
        for key, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                shadows.append(self.shadow[key])
                values.append(value)
            else:  # counters (BatchNorm's num_batches_tracked): the latest
                self.shadow[key].copy_(value)
        if shadows:  # one foreach kernel instead of one lerp per tensor (same values)
            torch._foreach_lerp_(shadows, values, 1 - self.decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Run the block with the EMA weights in the model, then put the raw ones back."""
        raw = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            self.model.load_state_dict(raw)

    def state_dict(self) -> dict:
        return {k: v.clone() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict | None) -> None:
        """``None`` (a checkpoint written without EMA): start the average from the weights."""
        source = self.model.state_dict() if state is None else state
        self.shadow = {k: v.detach().clone().to(self.shadow[k].device)
                       for k, v in source.items()}


def maybe_applied(ema: EMA | None) -> contextlib.AbstractContextManager:
    """:meth:`EMA.applied`, or nothing without an EMA."""
    return contextlib.nullcontext() if ema is None else ema.applied()
