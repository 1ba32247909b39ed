"""Denoising auto-encoder (Vincent et al. 2008) as an energy model.

    r: (B, *item) -> (B, *item)        E(x) = ‖r(x) − x‖²  (summed over entries)   (B,)

The reconstruction error is low on the data manifold and grows as a point leaves it.
Trained on corrupted inputs (see :mod:`ebmrun.objectives.dae`), r(x̃) ≈ E[x | x̃], and for
Gaussian noise of std σ, (r(x) − x)/σ² estimates the score ∇ log p(x) (Vincent 2011).

Two architectures, picked by ``arch`` from :data:`ARCHITECTURES`:

- ``mlp``: flatten → ``hidden`` (ReLU) → linear code → ``hidden`` reversed → item;
- ``conv``: stride-2 convs (k4 p1) → linear code → linear → transposed convs (images).

With a ``value_range`` the output is a Tanh rescaled to it, so every data value can be
reconstructed; without one (e.g. 2-D points) the output is linear.

The module also keeps a small pool of training items (a buffer of fixed shape, filled by
the objective while training), so chains can start from data after a checkpoint is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ebmrun.models.conv_stacks import conv_stacks
from ebmrun.models.ebgan import ToRange


@dataclass(frozen=True)
class DAESettings:
    item_shape: tuple[int, ...]
    hidden: tuple[int, ...]
    code_dim: int
    conv_channels: tuple[int, ...]
    value_range: tuple[float, float] | None


def _output(s: DAESettings) -> list[nn.Module]:
    return [ToRange(*s.value_range)] if s.value_range is not None else []


def mlp_autoencoder(s: DAESettings) -> nn.Module:
    """``(B, *item) -> (B, *item)`` through a ``code_dim`` linear bottleneck."""
    d = int(torch.Size(s.item_shape).numel())
    sizes = [d, *s.hidden, s.code_dim]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    layers.pop()  # the code is linear
    back = sizes[::-1]
    for a, b in zip(back[:-1], back[1:]):
        layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    layers.pop()  # so is the output before the range map
    return nn.Sequential(*layers, *_output(s), nn.Unflatten(1, s.item_shape))


def conv_autoencoder(s: DAESettings) -> nn.Module:
    """Stride-2 convs (ReLU) → code → mirrored transposed convs; sides must divide by 2^k."""
    down, up, (ck, hk, wk) = conv_stacks(s.item_shape, s.conv_channels,
                                         lambda: nn.ReLU(inplace=True), "dae")
    return nn.Sequential(*down, nn.Flatten(), nn.Linear(ck * hk * wk, s.code_dim),
                         nn.Linear(s.code_dim, ck * hk * wk), nn.ReLU(inplace=True),
                         nn.Unflatten(1, (ck, hk, wk)), *up, *_output(s))


ARCHITECTURES: dict[str, Callable[[DAESettings], nn.Module]] = {
    "mlp": mlp_autoencoder, "conv": conv_autoencoder}


class DenoisingAutoEncoder(nn.Module):
    """The reconstruction function r and its energy.

    Args:
        item_shape: shape of one item (filled at build time).
        arch: ``mlp`` (any shape) or ``conv`` (images), see :data:`ARCHITECTURES`.
        hidden: MLP encoder widths (the decoder mirrors them).
        code_dim: bottleneck size.
        conv_channels: conv encoder widths (each layer halves the sides).
        value_range: ``[low, high]`` of the data (the output is squashed into it), or
            ``None`` for a linear output. The config takes it from ``dataset.value_range``.
        pool_size: training items kept as chain starts (``start_pool``, saved with the
            weights; ``pool_filled`` counts the items written so far).
    """

    def __init__(self, item_shape: Sequence[int], arch: str = "mlp",
                 hidden: Sequence[int] = (512,), code_dim: int = 128,
                 conv_channels: Sequence[int] = (32, 64),
                 value_range: Sequence[float] | None = (-1.0, 1.0), pool_size: int = 256) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown dae arch {arch!r} (choose from: {', '.join(ARCHITECTURES)})")
        if code_dim < 1 or pool_size < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"dae widths must be >= 1, got hidden={list(hidden)}, "
                             f"code_dim={code_dim}, pool_size={pool_size}")
        bounds = None
        if value_range is not None:
            low, high = (float(v) for v in value_range)
            if not low < high:
                raise ValueError(f"value_range must be [low, high] with low < high, got "
                                 f"{list(value_range)}")
            bounds = (low, high)
        self.item_shape = tuple(int(v) for v in item_shape)
        self.value_range = bounds
        self.net = ARCHITECTURES[arch](DAESettings(
            self.item_shape, tuple(hidden), int(code_dim), tuple(conv_channels), bounds))
        self.register_buffer("start_pool", torch.zeros(int(pool_size), *self.item_shape))
        self.register_buffer("pool_filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def remember(self, x: Tensor) -> None:
        """Write items ``x`` ``(k, *item)`` into the pool (a ring: the oldest go first)."""
        size = len(self.start_pool)
        # Slots computed on the pool's device: no host read of the count, so a training step
        # that calls this can be recorded as a CUDA graph (ebmrun.captured_step).
        k = min(len(x), size)
        idx = (self.pool_filled + torch.arange(k, device=self.start_pool.device)) % size
        self.start_pool[idx] = x[:k].detach().float()
        self.pool_filled += k

    def pooled(self) -> Tensor:
        """The pool's filled items ``(m, *item)`` (m <= pool_size)."""
        return self.start_pool[: min(int(self.pool_filled), len(self.start_pool))]

    def reconstruct(self, x: Tensor) -> Tensor:
        """r(x): ``(B, *item) -> (B, *item)``."""
        return self.net(x)

    def energy(self, x: Tensor) -> Tensor:
        """E(x) = ‖r(x) − x‖² per item ``(B,)``."""
        return (self.reconstruct(x) - x).pow(2).flatten(1).sum(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.energy(x)
