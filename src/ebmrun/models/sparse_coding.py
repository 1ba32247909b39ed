"""Sparse coding: a dictionary and the energy E(y, z) = ½‖y − Wz‖² + λ‖z‖₁.

The model holds what defines the energy — the dictionary ``W`` ``(n, m)`` (m atoms of unit
L2 norm) and λ — plus how items map to signals: whole items flattened (n = C·H·W), or,
with ``patch_size = p``, p×p patches (n = C·p·p) tiling each image. Inference (ISTA /
FISTA, :mod:`ebmrun.models.sparse_inference`) and learning live in the objectives.

λ is a buffer, not only a config value, so a checkpoint carries the energy it was trained
for: LISTA reads it from there. ``examples`` is a fixed batch of training items captured
at the first step; ``task=sample`` loads only the model's state and has no data, and
sparse coding reconstructs rather than samples, so these are what it reconstructs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ebmrun.models.sparse_inference import fista, power_iteration, sparse_energy


def tile_starts(size: int, patch: int) -> list[int]:
    """Start offsets of patches of side ``patch`` covering ``size`` pixels: a stride of
    ``patch``, plus one last patch flush with the far edge when ``size`` is not a multiple
    (28 with 8 → 0, 8, 16, 20), so no padding value has to be invented."""
    starts = list(range(0, size - patch + 1, patch))
    if starts[-1] + patch < size:
        starts.append(size - patch)
    return starts


class SparseCoding(nn.Module):
    """Dictionary ``weight`` ``(n, n_atoms)`` with unit-norm columns, λ, signal layout.

    Args:
        item_shape: shape of one data item (injected by the builder).
        n_atoms: m, the number of dictionary columns (overcomplete when m > n).
        lam: λ, the weight of the L1 penalty (in units of the data's values).
        patch_size: code p×p patches of images instead of whole items (``None``: whole).
        n_examples: how many training items to keep for reconstructions (``task=sample``).
    """

    def __init__(self, item_shape: list[int], n_atoms: int = 256, lam: float = 0.3,
                 patch_size: int | None = None, n_examples: int = 100) -> None:
        super().__init__()
        self.item_shape = tuple(int(s) for s in item_shape)
        if n_atoms < 1 or lam < 0 or n_examples < 1:
            raise ValueError(f"need n_atoms >= 1, lam >= 0, n_examples >= 1 (got {n_atoms}, "
                             f"{lam}, {n_examples})")
        if patch_size is not None:
            if len(self.item_shape) != 3 or not 1 <= patch_size <= min(self.item_shape[1:]):
                raise ValueError(f"patch_size={patch_size} needs images at least that large, "
                                 f"got item shape {list(self.item_shape)} "
                                 f"(fix: model.net.patch_size=null)")
            self.signal_shape: tuple[int, ...] = (self.item_shape[0], patch_size, patch_size)
        else:
            self.signal_shape = self.item_shape
        self.patch_size = patch_size
        self.n_atoms = int(n_atoms)
        weight = torch.randn(math.prod(self.signal_shape), self.n_atoms)
        self.weight = nn.Parameter(weight / weight.norm(dim=0, keepdim=True))
        self.register_buffer("lam", torch.tensor(float(lam)))
        self.register_buffer("examples", torch.zeros(n_examples, *self.item_shape))
        self.register_buffer("n_stored", torch.zeros((), dtype=torch.long))
        self._power_vector: Tensor | None = None  # warm start for the next power iteration

    @property
    def signal_dim(self) -> int:
        return self.weight.shape[0]

    @torch.no_grad()
    def normalise_(self) -> None:
        """Rescale every atom to unit L2 norm. Without it the L1 penalty shrinks codes and
        grows atoms without bound: W → ∞, z → 0, with the same reconstruction."""
        self.weight.div_(self.weight.norm(dim=0, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def lipschitz(self, warm: bool = True, max_iters: int = 1000) -> float:
        """L = λ_max(WᵀW) by power iteration, warm-started from the last eigenvector."""
        gram = self.weight.T @ self.weight
        value, self._power_vector = power_iteration(
            gram, self._power_vector if warm else None, max_iters=max_iters)
        return value

    # ---- items <-> signals ---------------------------------------------------------------

    def patches_per_item(self) -> int:
        if self.patch_size is None:
            return 1
        _, h, w = self.item_shape
        return len(tile_starts(h, self.patch_size)) * len(tile_starts(w, self.patch_size))

    def signals(self, x: Tensor) -> Tensor:
        """Items ``(B, *item_shape)`` → signal rows ``(B·P, n)``: the item flattened
        (P = 1), or its P covering patches (item-major: rows i·P … i·P + P − 1)."""
        if self.patch_size is None:
            return x.reshape(x.shape[0], -1)
        p = self.patch_size
        tiles = [x[:, :, i:i + p, j:j + p] for i in tile_starts(x.shape[2], p)
                 for j in tile_starts(x.shape[3], p)]
        return torch.stack(tiles, 1).reshape(x.shape[0] * len(tiles), -1)

    def items(self, rows: Tensor) -> Tensor:
        """Signal rows ``(B·P, n)`` → items ``(B, *item_shape)``; overlapping patch pixels
        are averaged."""
        if self.patch_size is None:
            return rows.reshape(rows.shape[0], *self.item_shape)
        p, (c, h, w) = self.patch_size, self.item_shape
        patches = rows.reshape(-1, self.patches_per_item(), c, p, p)
        out = rows.new_zeros(patches.shape[0], c, h, w)
        count = rows.new_zeros(1, 1, h, w)
        k = 0
        for i in tile_starts(h, p):
            for j in tile_starts(w, p):
                out[:, :, i:i + p, j:j + p] += patches[:, k]
                count[:, :, i:i + p, j:j + p] += 1
                k += 1
        return out / count

    def random_patches(self, x: Tensor, per_item: int, generator: torch.Generator) -> Tensor:
        """``per_item`` random p×p patches of every image of ``x``: rows ``(B·per_item, n)``
        (training sees every position, not only the tiling grid)."""
        p = self.patch_size
        windows = x.unfold(2, p, 1).unfold(3, p, 1)  # (B, C, H−p+1, W−p+1, p, p), a view
        b, n = x.shape[0], per_item
        rows = torch.randint(windows.shape[2], (b * n,), generator=generator, device=x.device)
        cols = torch.randint(windows.shape[3], (b * n,), generator=generator, device=x.device)
        which = torch.arange(b, device=x.device).repeat_interleave(n)
        return windows[which, :, rows, cols].reshape(b * n, -1)

    # ---- energy --------------------------------------------------------------------------

    def decode(self, z: Tensor) -> Tensor:
        """Codes ``(B, m)`` → reconstructed signal rows ``Wz`` ``(B, n)``."""
        return z @ self.weight.T

    def energy_rows(self, y: Tensor, z: Tensor) -> Tensor:
        """E(y, z) ``(B,)`` for signal rows ``y`` ``(B, n)`` and codes ``z`` ``(B, m)``."""
        return sparse_energy(y, z, self.weight, self.lam)

    @torch.no_grad()
    def energy(self, x: Tensor, iters: int = 100) -> Tensor:
        """min_z E(x, z) ``(B,)`` for items ``(B, *item_shape)``, approximated by ``iters``
        FISTA iterations from zero (with patches: summed over the covering patches)."""
        y = self.signals(x)
        z = fista(y, self.weight, self.lam, self.lipschitz(warm=False), iters)
        return self.per_item(self.energy_rows(y, z))

    def per_item(self, values: Tensor) -> Tensor:
        """Per-signal values ``(B·P,)`` → per-item sums ``(B,)``."""
        return values.reshape(-1, self.patches_per_item()).sum(1)

    @torch.no_grad()
    def remember(self, x: Tensor) -> None:
        """Keep the first items seen (once) as the fixed reconstruction examples."""
        stored = int(self.n_stored)
        take = min(len(self.examples) - stored, x.shape[0])
        if take > 0:
            self.examples[stored:stored + take] = x[:take].to(self.examples)
            self.n_stored += take

    def example_batch(self, n: int) -> Tensor:
        """``n`` stored examples ``(n, *item_shape)``, cycling when n exceeds the store."""
        stored = max(int(self.n_stored), 1)
        return self.examples[torch.arange(n, device=self.examples.device) % stored]


def atom_images(weight: Tensor, signal_shape: Sequence[int], value_range: tuple[float, float]
                ) -> Tensor:
    """Dictionary columns ``(n, m)`` as images ``(m, *signal_shape)``, each atom min–max
    scaled to ``value_range`` on its own (atoms have unit norm, far below pixel scale)."""
    atoms = weight.detach().T
    low, high = value_range
    a_min, a_max = atoms.min(1, keepdim=True).values, atoms.max(1, keepdim=True).values
    scaled = (atoms - a_min) / (a_max - a_min).clamp_min(1e-12)
    return (low + (high - low) * scaled).reshape(-1, *signal_shape)
