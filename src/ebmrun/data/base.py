"""In-memory datasets and a resumable batch iterator.

Small image sets (MNIST, Fashion-MNIST, CIFAR-10, an image folder) are held as one uint8
tensor and batched by indexing, so the training loop does no per-item PIL work. 2-D toy
densities are held as one float32 tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


def to_unit_range(x: Tensor, value_range: tuple[float, float]) -> Tensor:
    """Map images from ``value_range`` to [-1, 1], the evaluator's input range."""
    low, high = value_range
    return (x.float() - low) * (2.0 / (high - low)) - 1.0


@dataclass
class InMemoryData:
    """A dataset held in memory, split into train and test.

    Attributes:
        name: dataset name used in run-dir names and logs (e.g. ``"mnist"``, ``"8gaussians"``).
        train: ``(N, C, H, W)`` uint8 images, or ``(N, D)`` float32 points.
        test: same layout as ``train``.
        value_range: range of :meth:`to_float` output for images, e.g. ``(-1.0, 1.0)``.
        box: the box samplers start from (uniform) and clamp to, ``(low, high)``; for
            images it equals ``value_range``.
        train_labels / test_labels: ``(N,)`` int64 class labels, or ``None``.
        binarize: ``"dynamic"`` when the items are pixel probabilities to be binarised by a
            fresh Bernoulli draw each time they are used (done by objectives that model
            binary data, with their checkpointed generator), else ``None``.
    """

    name: str
    train: Tensor
    test: Tensor
    value_range: tuple[float, float]
    box: tuple[float, float]
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None
    classes: list[str] = field(default_factory=list)
    binarize: str | None = None

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Shape of one item, e.g. ``(1, 28, 28)`` or ``(2,)``."""
        return tuple(self.train.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.train.dim() == 4

    def to_float(self, x: Tensor) -> Tensor:
        """Convert stored items to model inputs: uint8 ``(B, C, H, W)`` -> float32 in
        ``value_range``; float points pass through unchanged."""
        if x.dtype != torch.uint8:
            return x.float()
        low, high = self.value_range
        return x.float().mul_((high - low) / 255.0).add_(low)


class BatchIterator:
    """Endless shuffled batches of indices, resumable exactly.

    Each epoch draws a fresh permutation from its own generator; the state (generator state,
    epoch, position in the permutation) is saved in checkpoints so a resumed run sees the
    same batches in the same order as an uninterrupted one.
    """

    def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool = True) -> None:
        if batch_size > n:
            batch_size = n
        self.n, self.batch_size, self.drop_last = n, batch_size, drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.position = 0
        self._perm = torch.randperm(n, generator=self.generator)

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full if (self.drop_last or rest == 0) else full + 1

    def next_indices(self) -> Tensor:
        """Indices ``(B,)`` of the next batch; starts a new epoch when the current one ends."""
        end = self.position + self.batch_size
        if end > self.n and (self.drop_last or self.position >= self.n):
            self._new_epoch()
            end = self.batch_size
        idx = self._perm[self.position : min(end, self.n)]
        self.position = min(end, self.n)
        return idx

    def _new_epoch(self) -> None:
        self.epoch += 1
        self.position = 0
        self._perm = torch.randperm(self.n, generator=self.generator)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "epoch": self.epoch,
                "position": self.position, "perm": self._perm.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._perm = state["perm"].clone()
