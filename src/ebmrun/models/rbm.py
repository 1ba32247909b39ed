"""Restricted Boltzmann machine with binary visible and hidden units.

    E(v, h) = −bᵀv − cᵀh − vᵀWh,        v ∈ {0, 1}^V, h ∈ {0, 1}^H
    F(v)    = −log Σ_h exp(−E(v, h)) = −bᵀv − Σ_j softplus(c_j + (vᵀW)_j)

The free energy F(v) is the model's energy (``energy``): p(v) = exp(−F(v)) / Z. Both
conditionals factorise, which is what block Gibbs sampling (:mod:`ebmrun.samplers.gibbs`)
and annealed importance sampling (:mod:`ebmrun.metrics.ais`) use:

    p(h_j = 1 | v) = σ(c_j + (vᵀW)_j)        p(v_i = 1 | h) = σ(b_i + (Wh)_i)

Visible units take values in [0, 1]: binary states, or grey values read as probabilities
(the free energy is defined for both). Mapping data into [0, 1] is the objective's job.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RBM(nn.Module):
    """Binary–binary RBM over the flattened data item.

    Args:
        item_shape: shape of one data item (filled at build time); V = its number of values.
        hidden: number of hidden units H (500: the usual MNIST setting).
        init_std: std of the initial weights (Hinton's guide: 0.01); biases start at 0.
    """

    def __init__(self, item_shape: Sequence[int], hidden: int = 500,
                 init_std: float = 0.01) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"rbm hidden must be >= 1, got {hidden}")
        if init_std < 0:
            raise ValueError(f"rbm init_std must be >= 0, got {init_std}")
        self.item_shape = tuple(int(s) for s in item_shape)
        self.visible = math.prod(self.item_shape)
        self.hidden = int(hidden)
        self.weight = nn.Parameter(torch.randn(self.visible, self.hidden) * init_std)  # W (V, H)
        self.visible_bias = nn.Parameter(torch.zeros(self.visible))  # b (V,)
        self.hidden_bias = nn.Parameter(torch.zeros(self.hidden))  # c (H,)

    # ---- the block conditionals (the protocol of ebmrun.samplers.gibbs) ------------------

    def hidden_logits(self, v: Tensor) -> Tensor:
        """Pre-activations ``c + vᵀW`` ``(B, H)`` of ``v`` ``(B, V)`` (or ``(B, *item)``)."""
        return torch.addmm(self.hidden_bias, v.flatten(1), self.weight)

    def visible_logits(self, h: Tensor) -> Tensor:
        """Pre-activations ``b + Wh`` ``(B, V)`` of ``h`` ``(B, H)``."""
        return torch.addmm(self.visible_bias, h, self.weight.t())

    def free_energy(self, v: Tensor, hidden_logits: Tensor | None = None) -> Tensor:
        """F(v) ``(B,)`` of ``v`` ``(B, V)`` (or ``(B, *item)``); pass ``hidden_logits``
        when they are already computed (a Gibbs step has them) to skip the matmul."""
        v = v.flatten(1)
        if hidden_logits is None:
            hidden_logits = self.hidden_logits(v)
        return -(v @ self.visible_bias) - F.softplus(hidden_logits).sum(1)

    def joint_energy(self, v: Tensor, h: Tensor) -> Tensor:
        """E(v, h) ``(B,)`` of ``v`` ``(B, V)`` and ``h`` ``(B, H)``."""
        v = v.flatten(1)
        return -(v @ self.visible_bias) - (h @ self.hidden_bias) - ((v @ self.weight) * h).sum(1)

    def energy(self, x: Tensor) -> Tensor:
        """The free energy ``(B,)`` of ``x`` ``(B, *item_shape)`` with values in [0, 1]."""
        return self.free_energy(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.free_energy(x)

    def filters(self, n: int) -> Tensor:
        """The weights of the first ``n`` hidden units as items ``(n, *item_shape)``, each
        scaled to [0, 1] (what a hidden unit looks for in the data)."""
        w = self.weight.detach()[:, :n].t()
        low, high = w.min(1, keepdim=True).values, w.max(1, keepdim=True).values
        return ((w - low) / (high - low).clamp_min(1e-12)).reshape(-1, *self.item_shape)
