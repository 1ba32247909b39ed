"""LISTA (Gregor & LeCun 2010): sparse inference unrolled into T trainable layers.

    z₁ = soft_θ(W_e y),   z_{k+1} = soft_θ(W_e y + S z_k),   k = 1 … T − 1

Initialised from a dictionary W with L = λ_max(WᵀW) as W_e = Wᵀ/L, S = I − WᵀW/L, θ = λ/L,
a T-layer network is exactly T ISTA iterations from z₀ = 0; training then regresses the
optimal codes. Tied: one (W_e, S, θ) shared by all layers (the paper's LISTA); untied:
each layer its own (more parameters, each layer then computes its own W_e y).

The parameters are stored multiplied by L — ``encoder`` = L·W_e (init Wᵀ), ``gram`` =
L·(I − S) (init WᵀW), ``threshold`` = L·θ (init λ) — with 1/L a fixed buffer. The function
is the same, but the stored numbers are O(0.1–1) instead of O(1/L), so Adam's
per-parameter step (≈ lr) means the same relative change for every matrix.

:class:`LISTA` holds the dictionary (a :class:`SparseCoding`, to compute the FISTA targets
and to decode) and one network per depth in ``depths``, trained side by side on the same
targets, so one run gives the whole LISTA-vs-FISTA table.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ebmrun.models.sparse_coding import SparseCoding
from ebmrun.models.sparse_inference import soft_threshold


class LISTANet(nn.Module):
    """``depth`` unrolled layers mapping signal rows ``(B, n)`` to codes ``(B, m)``."""

    def __init__(self, n: int, m: int, depth: int, tied: bool = True) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"LISTA depth must be >= 1, got {depth}")
        self.depth, self.tied = int(depth), bool(tied)
        n_enc = 1 if tied else depth
        n_gram = 1 if tied else max(depth - 1, 1)  # untied: layer k ≥ 2 uses gram[k − 2]
        self.encoder = nn.Parameter(torch.zeros(n_enc, m, n))
        self.gram = nn.Parameter(torch.zeros(n_gram, m, m))
        self.threshold = nn.Parameter(torch.zeros(n_enc, m))
        self.register_buffer("step", torch.tensor(1.0))  # 1/L of the initial dictionary

    @torch.no_grad()
    def init_from_dictionary(self, weight: Tensor, lipschitz: float, lam: float) -> None:
        """Set every layer to ISTA on dictionary ``weight`` ``(n, m)`` (see module doc)."""
        self.encoder.copy_(weight.T.expand_as(self.encoder))
        self.gram.copy_((weight.T @ weight).expand_as(self.gram))
        self.threshold.fill_(float(lam))
        self.step.fill_(1.0 / lipschitz)

    def layers(self, y: Tensor) -> list[Tensor]:
        """Codes after each layer: ``depth`` tensors ``(B, m)``."""
        out: list[Tensor] = []
        b = None
        for k in range(self.depth):
            i = 0 if self.tied else k
            if b is None or not self.tied:
                b = self.step * (y @ self.encoder[i].T)
            # Negative thresholds would turn shrinkage into expansion: keep them >= 0.
            theta = self.step * torch.relu(self.threshold[i])
            if k == 0:
                z = soft_threshold(b, theta)
            else:
                g = self.gram[0 if self.tied else k - 1]
                z = soft_threshold(b + z - self.step * (z @ g.T), theta)
            out.append(z)
        return out

    def forward(self, y: Tensor) -> Tensor:
        """Codes ``(B, m)`` after the last layer."""
        return self.layers(y)[-1]


class LISTA(nn.Module):
    """A dictionary plus LISTA encoders of several depths.

    Args:
        item_shape: shape of one data item (injected by the builder).
        n_atoms: m; must match the dictionary checkpoint when one is loaded.
        depths: T of each network trained (e.g. ``[1, 2, 3, 5]``).
        tied: share (W_e, S, θ) across layers (LISTA) or not (untied variant).
        lam: λ of the sparse-coding energy when the dictionary is learned in the same run;
            a dictionary loaded from a checkpoint brings its own λ (the targets must be
            the optimal codes of the energy that dictionary was learned for).
        patch_size, n_examples: as in :class:`SparseCoding` (must match a loaded dictionary).
    """

    def __init__(self, item_shape: list[int], n_atoms: int = 256,
                 depths: Sequence[int] = (1, 2, 3, 5), tied: bool = True,
                 lam: float = 0.5, patch_size: int | None = None,
                 n_examples: int = 100) -> None:
        super().__init__()
        depths = [int(d) for d in depths]
        if not depths or sorted(set(depths)) != depths or depths[0] < 1:
            raise ValueError(f"depths must be increasing positive integers, got {depths}")
        self.coder = SparseCoding(item_shape, n_atoms, lam, patch_size, n_examples)
        self.depths = depths
        self.nets = nn.ModuleList(LISTANet(self.coder.signal_dim, n_atoms, d, tied)
                                  for d in depths)
        # Whether the encoders were initialised from a dictionary (saved in checkpoints).
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def init_from_dictionary(self) -> float:
        """Initialise every network from the current dictionary; returns L."""
        lipschitz = self.coder.lipschitz(warm=False)
        for net in self.nets:
            net.init_from_dictionary(self.coder.weight, lipschitz, float(self.coder.lam))
        self.initialised.fill_(True)
        return lipschitz

    def encode(self, y: Tensor, index: int = -1) -> Tensor:
        """Codes ``(B, m)`` of signal rows ``y`` ``(B, n)`` by network ``depths[index]``."""
        return self.nets[index](y)

    @torch.no_grad()
    def energy(self, x: Tensor) -> Tensor:
        """E(x, z) ``(B,)`` at the deepest network's code z (amortised inference: an upper
        bound on min_z E), for items ``(B, *item_shape)``; summed over patches."""
        y = self.coder.signals(x)
        return self.coder.per_item(self.coder.energy_rows(y, self.encode(y)))

    def lista_parameters(self) -> Sequence[nn.Parameter]:
        return [p for net in self.nets for p in net.parameters()]
