"""Contrastive embedding: an encoder f(x) -> h and a projection head g(h) -> z on the unit
sphere (SimCLR, Chen et al. 2020).

Pair energy: E(x, y) = −cos(z(x), z(y)), low for two views of one item. InfoNCE (the
objective) is the cross-entropy of picking the positive among a batch with logits −E/τ.

Per-item energy (``energy(x)``, for anomaly scores): E(x) = −max_k cos(z(x), m_k), the
similarity to the nearest of a bank of training embeddings m_k (the deep-kNN score of Sun
et al. 2022). The bank is a buffer of the model, filled during training, so it travels
with the checkpoint; while it is empty every energy is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_encoder(channels: int, image_hw: tuple[int, int], widths: Sequence[int],
                 feature_dim: int) -> nn.Sequential:
    """Conv(k3) then stride-2 Conv(k4) layers with ReLU, Flatten, Linear, ReLU:
    ``(B, C, H, W) -> (B, feature_dim)``."""
    layers: list[nn.Module] = []
    c_in = channels
    for i, c_out in enumerate(widths):
        conv = (nn.Conv2d(c_in, c_out, 3, padding=1) if i == 0
                else nn.Conv2d(c_in, c_out, 4, stride=2, padding=1))
        layers += [conv, nn.ReLU()]
        c_in = c_out
    with torch.no_grad():  # the flattened size depends on the image size
        flat = nn.Sequential(*layers)(torch.zeros(1, channels, *image_hw)).numel()
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, feature_dim), nn.ReLU())


def mlp_encoder(in_features: int, hidden: Sequence[int], feature_dim: int) -> nn.Sequential:
    """MLP with ReLU: ``(B, D) -> (B, feature_dim)``."""
    layers: list[nn.Module] = []
    width = in_features
    for h in [*hidden, feature_dim]:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers)


class ContrastiveEncoder(nn.Module):
    """Encoder + projection head + embedding bank.

    Args:
        item_shape: ``(C, H, W)`` images (CNN) or ``(D,)`` vectors (MLP); filled at build.
        conv_widths: CNN channels (first conv keeps the size, later ones halve it).
        mlp_hidden: MLP widths for vectors.
        feature_dim: size of h, the representation a linear probe reads.
        proj_dim: size of z, where the contrastive loss acts.
        bank_size: training embeddings kept for the per-item kNN energy.
    """

    def __init__(self, item_shape: Sequence[int], conv_widths: Sequence[int] = (32, 64, 128),
                 mlp_hidden: Sequence[int] = (128, 128), feature_dim: int = 128,
                 proj_dim: int = 64, bank_size: int = 4096) -> None:
        super().__init__()
        self.item_shape = tuple(int(s) for s in item_shape)
        if len(self.item_shape) == 3:
            c, h, w = self.item_shape
            self.encoder = conv_encoder(c, (h, w), conv_widths, feature_dim)
        elif len(self.item_shape) == 1:
            self.encoder = mlp_encoder(self.item_shape[0], mlp_hidden, feature_dim)
        else:
            raise ValueError(f"contrastive needs (C, H, W) images or (D,) vectors, got "
                             f"{list(item_shape)}")
        if min(feature_dim, proj_dim, bank_size) < 1:
            raise ValueError("feature_dim, proj_dim and bank_size must be >= 1")
        self.head = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU(),
                                  nn.Linear(feature_dim, proj_dim))
        self.register_buffer("bank", torch.zeros(bank_size, proj_dim))
        self.register_buffer("bank_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("examples", torch.zeros(16, *self.item_shape))
        self.register_buffer("examples_set", torch.zeros((), dtype=torch.bool))

    def features(self, x: Tensor) -> Tensor:
        """Representations h ``(B, feature_dim)`` (what the linear probe reads)."""
        return self.encoder(x)

    def embed(self, x: Tensor) -> Tensor:
        """Unit-norm projections z ``(B, proj_dim)``."""
        return F.normalize(self.head(self.encoder(x)), dim=1)

    def pair_energy(self, x: Tensor, y: Tensor) -> Tensor:
        """E(x, y) = −cos(z(x), z(y)) ``(B,)`` for two batches of items."""
        return -(self.embed(x) * self.embed(y)).sum(1)

    @torch.no_grad()
    def remember(self, z: Tensor) -> None:
        """Write embeddings ``(B, proj_dim)`` into the bank (first in, first out)."""
        size = self.bank.shape[0]
        z = z.detach()[-size:]
        slots = (self.bank_count + torch.arange(len(z), device=z.device)) % size
        self.bank[slots] = z.to(self.bank.dtype)
        self.bank_count += len(z)

    def energy(self, x: Tensor) -> Tensor:
        """E(x) = −max_k cos(z(x), bank_k) ``(B,)``; 0 while the bank is empty."""
        filled = int(min(int(self.bank_count), self.bank.shape[0]))
        if filled == 0:
            return torch.zeros(x.shape[0], device=x.device)
        return -(self.embed(x) @ self.bank[:filled].T).max(1).values

    def forward(self, x: Tensor) -> Tensor:
        return self.embed(x)
