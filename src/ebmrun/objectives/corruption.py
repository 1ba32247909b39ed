"""Corruption processes C(x̃ | x) for denoising auto-encoders.

Each kind takes clean items ``x`` ``(B, ...)``, a per-item strength ``level`` ``(B,)`` and
the data's ``(low, high)`` range, and returns corrupted items of the same shape:

- ``gaussian``: x̃ = x + σ·ε, ε ~ N(0, I); ``level`` is σ in data units (not clamped: the
  score estimate (r(x̃) − x̃)/σ² is derived for exactly this additive noise);
- ``masking``: each entry is set to ``low`` (the background, black for images) with
  probability ``level``;
- ``salt_and_pepper``: each entry is set, with probability ``level``, to ``low`` or
  ``high`` (one half each).

``ladder`` is the default sequence of strengths the evaluation measures the energy at
(``0`` = clean), in units of the half-width of the data range for ``gaussian``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Range = tuple[float, float]


def _per_item(level: Tensor, like: Tensor) -> Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` so one strength applies to a whole item."""
    return level.to(like).reshape(-1, *([1] * (like.dim() - 1)))


def gaussian(x: Tensor, level: Tensor, value_range: Range, generator: torch.Generator
             ) -> Tensor:
    """x + σ ε with σ = ``level`` per item."""
    noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    return x + _per_item(level, x) * noise


def masking(x: Tensor, level: Tensor, value_range: Range, generator: torch.Generator
            ) -> Tensor:
    """Entries dropped to the background ``low`` with probability ``level``."""
    hit = torch.rand(x.shape, device=x.device, generator=generator) < _per_item(level, x)
    return x.masked_fill(hit, value_range[0])


def salt_and_pepper(x: Tensor, level: Tensor, value_range: Range, generator: torch.Generator
                    ) -> Tensor:
    """Entries replaced with probability ``level`` by ``low`` or ``high`` (half each)."""
    u = torch.rand(x.shape, device=x.device, generator=generator)
    rate = _per_item(level, x)
    # One uniform draw decides both: u < rate/2 -> pepper (low), rate/2 <= u < rate -> salt.
    out = x.masked_fill(u < rate, value_range[1])
    return out.masked_fill(u < rate * 0.5, value_range[0])


@dataclass(frozen=True)
class Corruption:
    """A corruption kind: how to apply it, what its level means, its evaluation ladder."""

    apply: Callable[[Tensor, Tensor, Range, torch.Generator], Tensor]
    level_name: str
    ladder: tuple[float, ...]
    relative_to_range: bool  # ladder levels scale with the half-width of the data range


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian": Corruption(gaussian, "sigma", (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0), True),
    "masking": Corruption(masking, "rate", (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7), False),
    "salt_and_pepper": Corruption(salt_and_pepper, "rate",
                                  (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5), False),
}


def get_corruption(kind: str) -> Corruption:
    """The :class:`Corruption` named ``kind``; ValueError listing the choices otherwise."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r} (choose from: {', '.join(CORRUPTIONS)})")
    return CORRUPTIONS[kind]


def default_ladder(kind: str, value_range: Range) -> list[float]:
    """The evaluation strengths of ``kind`` for data in ``value_range``."""
    corruption = get_corruption(kind)
    scale = (value_range[1] - value_range[0]) / 2 if corruption.relative_to_range else 1.0
    return [round(level * scale, 6) for level in corruption.ladder]


def check_levels(kind: str, levels: Sequence[float]) -> None:
    """ValueError unless every level is valid for ``kind`` (σ >= 0, rates in [0, 1])."""
    corruption = get_corruption(kind)
    if not levels:
        raise ValueError(f"{kind} corruption needs at least one level")
    for level in levels:
        if level < 0 or (corruption.level_name == "rate" and level > 1):
            raise ValueError(f"{kind} {corruption.level_name} must be "
                             f"{'in [0, 1]' if corruption.level_name == 'rate' else '>= 0'}, "
                             f"got {level}")
