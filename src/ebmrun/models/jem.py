"""A classifier read as an energy model (JEM, Grathwohl et al. 2020).

The logits f(x) ``(B, K)`` of an ordinary classifier define

    p(x, y) ∝ exp(f(x)[y]),   E(x, y) = −f(x)[y],   E(x) = −logsumexp_y f(x)[y],

and p(y | x) = softmax(f(x)) is the usual classifier. The body is the deep EBM's tutorial
CNN (no batch norm: JEM's SGLD needs a deterministic f), with K outputs instead of one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ebmrun.models.deep_ebm import conv_energy_body, resolve_polyphase


class ClassifierEnergy(nn.Module):
    """Logits ``f(x)`` of a CNN classifier, and the energies they define.

    Args:
        item_shape: ``(C, H, W)`` of one image (filled at build time).
        num_classes: K, the number of logits.
        conv_channels / conv_hidden: widths of the tutorial CNN body.
        spectral_norm: spectral normalisation on every layer.
        channels_last / polyphase_first_conv: CPU speed switches, as for ``deep_ebm``.
    """

    def __init__(self, item_shape: Sequence[int], num_classes: int = 10,
                 conv_channels: Sequence[int] = (32, 64, 64, 128), conv_hidden: int = 128,
                 spectral_norm: bool = False, channels_last: bool = True,
                 polyphase_first_conv: bool | str = "auto") -> None:
        super().__init__()
        self.item_shape = tuple(int(s) for s in item_shape)
        if len(self.item_shape) != 3:
            raise ValueError(f"jem needs (C, H, W) images, got items of shape {self.item_shape}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        c, h, w = self.item_shape
        self.body = conv_energy_body(c, (h, w), conv_channels, conv_hidden, spectral_norm,
                                     resolve_polyphase(polyphase_first_conv),
                                     out_features=self.num_classes)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def logits(self, x: Tensor) -> Tensor:
        """f(x): ``(B, K)`` logits of ``x`` ``(B, C, H, W)``."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.body(x)

    def energy(self, x: Tensor) -> Tensor:
        """E(x) = −logsumexp_y f(x)[y]: ``(B,)``."""
        return -torch.logsumexp(self.logits(x), dim=1)

    def class_energy(self, x: Tensor, y: Tensor) -> Tensor:
        """E(x, y) = −f(x)[y] for labels ``y`` ``(B,)``: ``(B,)``. A label −1 (the
        convention of ``compose.labels``) gives that row E(x) instead, so chains on either
        share one forward pass."""
        logits = self.logits(x)
        y = y.view(-1, 1).to(x.device)
        picked = -logits.gather(1, y.clamp(min=0)).squeeze(1)
        return torch.where(y.squeeze(1) >= 0, picked, -torch.logsumexp(logits, dim=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(x)
