"""The objective contract: how one model family is trained and sampled.

The runner owns the loop (data, optimizer steps, logging, checkpoints); an objective owns
the recipe: the loss of one batch, how negatives or fakes are made, how to draw samples,
and which pictures show progress. Objectives that need several optimizers (GANs) set
``manual_optimization = True`` and step their own optimizers inside ``training_step``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ebmrun.samplers.base import SampleResult


@dataclass(frozen=True)
class DataInfo:
    """What an objective may know about the data: item shape, value range, sampling box."""

    item_shape: tuple[int, ...]
    value_range: tuple[float, float]
    box: tuple[float, float]

    @property
    def is_image(self) -> bool:
        return len(self.item_shape) == 3


@dataclass
class OptimSettings:
    """Optimizer settings passed from ``cfg.optim`` (see ``ebmrun.config.OptimConfig``)."""

    name: str
    lr: float
    betas: tuple[float, float]
    weight_decay: float


OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def make_optimizer(params, settings: OptimSettings, **overrides) -> torch.optim.Optimizer:
    """Build the optimizer named in ``settings`` (``overrides`` replace lr/betas per network)."""
    kwargs = {"lr": settings.lr, "weight_decay": settings.weight_decay}
    if settings.name in ("adam", "adamw"):
        kwargs["betas"] = tuple(settings.betas)
    kwargs.update(overrides)
    return OPTIMIZERS[settings.name](params, **kwargs)


class Objective(ABC):
    """Base class of training recipes. ``model`` is the ``nn.Module`` that is checkpointed."""

    manual_optimization = False

    def __init__(self, model: nn.Module, data: DataInfo, generator: torch.Generator) -> None:
        self.model = model
        self.data = data
        self.generator = generator

    @abstractmethod
    def training_step(self, x: Tensor) -> dict[str, Tensor]:
        """Loss terms for one batch ``x`` ``(B, *item_shape)``; must hold ``"loss"`` (a scalar
        with grad) unless ``manual_optimization``. Other entries are logged as scalars."""

    def configure_optimizers(self, settings: OptimSettings) -> list[torch.optim.Optimizer]:
        """One optimizer over all model parameters by default."""
        return [make_optimizer(self.model.parameters(), settings)]

    @abstractmethod
    def generate(self, n: int, *, steps: int | None = None, generator: torch.Generator,
                 snapshot_every: int = 0) -> SampleResult:
        """Draw ``n`` new samples ``(n, *item_shape)`` in the data's value range."""

    def visuals(self, generator: torch.Generator) -> dict[str, Tensor]:
        """Image batches ``(N, C, H, W)`` to log as grids (name -> images)."""
        return {}

    def histograms(self) -> dict[str, Tensor]:
        """1-D tensors to log as histograms (e.g. energies of the last batch)."""
        return {}

    def state_dict(self) -> dict:
        """Training state beyond the model and optimizers (replay buffer, ...)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
