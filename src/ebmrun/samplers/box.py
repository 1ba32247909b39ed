"""Box constraints of the samplers: ``[low, high]`` per coordinate (images: ``[-1, 1]``).

Clamping after a step is the unadjusted samplers' way; the exact (MH) samplers instead
reject proposals outside the box or fold them back in by mirror reflection, whose proposal
density is a sum over mirror images (:func:`log_reflected_normal`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def parse_box(box: Sequence[float] | None) -> tuple[float, float] | None:
    """Validate a ``[low, high]`` box constraint (``None`` = unconstrained)."""
    if box is None:
        return None
    low, high = (float(v) for v in box)
    if not low < high:
        raise ValueError(f"box must be [low, high] with low < high, got {list(box)}")
    return low, high


def reflect_into_box(x: Tensor, low: float, high: float) -> tuple[Tensor, Tensor]:
    """Fold ``x`` back into ``[low, high]`` by mirror reflections at the walls.

    Returns the reflected tensor and a bool mask (shape of ``x``) of the entries that were
    mirrored an odd number of times, i.e. whose velocity must flip (HMC). Reflection keeps
    a symmetric proposal symmetric, so random-walk Metropolis stays exact with it.
    """
    width = high - low
    shifted = x - low
    folds = torch.floor(shifted / width)
    odd = torch.remainder(folds, 2) == 1
    inside = torch.remainder(shifted, 2 * width)  # in [0, 2w): one period of the fold
    return low + width - (inside - width).abs(), odd


def log_reflected_normal(y: Tensor, mean: Tensor, std: Tensor, low: float, high: float
                         ) -> Tensor:
    """Per-chain log density ``(B,)`` (up to a constant that depends only on ``std``) of
    ``y = reflect_into_box(z)`` for ``z ~ N(mean, std² I)``; ``std`` broadcasts over ``y``.

    The reflected point ``y`` has pre-images ``y + 2kW`` and ``2·low − y + 2kW`` (k ∈ ℤ,
    W = high − low), so its density is the sum of the normal density over them. Only the
    shifts k that bring some pre-image within 8 std of its mean are kept (the dropped terms
    weigh < e^-32 each); with the mean inside the box and std ≪ W these are the point itself
    and its mirror images at the two walls.
    """
    width, reach = high - low, 8.0 * float(std.max())
    terms = []
    # Family 1 (y + 2kW) and family 2 (2·low − y + 2kW): z − mean for k = 0 is `offset`.
    for offset in (y - mean, 2 * low - y - mean):
        lo, hi = float(offset.min()) - reach, float(offset.max()) + reach
        for k in range(math.ceil(-hi / (2 * width)), math.floor(-lo / (2 * width)) + 1):
            terms.append(-0.5 * ((offset + 2 * k * width) / std).float() ** 2)
    return torch.logsumexp(torch.stack(terms), dim=0).flatten(1).sum(1)


def in_box(x: Tensor, box: tuple[float, float] | None) -> Tensor:
    """``(B,)`` bool: whether every coordinate of each chain lies within ``box``."""
    if box is None:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return ((x >= box[0]) & (x <= box[1])).flatten(1).all(dim=1)
