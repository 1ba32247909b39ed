"""No training: for models whose energy is given in closed form (``model=analytic``).

The runner still works end to end: ``train`` logs the data's mean energy under the model
and the usual pictures (density, samples, chain paths) with no parameter ever changing, and
``task=sample`` needs no checkpoint (:attr:`NoTraining.needs_checkpoint` is ``False``): the
model is built from the config, e.g.

    ebmrun model=analytic dataset=toy2d task=sample sampler=replica_exchange
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ebmrun.logging import figures, plots2d
from ebmrun.objectives.base import DataInfo, Objective
from ebmrun.objectives.common import ChainsFromNoise
from ebmrun.samplers.base import Sampler


class NoTraining(ChainsFromNoise, Objective):
    """Samples a fixed energy; the loss is a constant zero.

    Args:
        model: module with ``energy(x) -> (B,)`` and no trainable parameters needed.
        sampler: draws samples from chains started uniformly in the data box.
        sample_steps: default sampler steps for ``generate`` (pictures, ``task=sample``).
    """

    train_metrics = ("loss", "energy_data")

    needs_checkpoint = False  # task=sample builds the model from the config instead

    def __init__(self, model: nn.Module, sampler: Sampler, data: DataInfo,
                 generator: torch.Generator, sample_steps: int = 500) -> None:
        super().__init__(model, data, generator)
        if sample_steps < 0:
            raise ValueError(f"sample_steps must be >= 0, got {sample_steps}")
        self.sampler = sampler
        self.sample_steps = int(sample_steps)
        self.device = next(model.parameters()).device

    def training_step(self, x: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            energy = self.model.energy(x).mean()
        # A leaf that requires grad: the runner's backward/optimizer step are no-ops.
        zero = torch.zeros((), device=x.device, requires_grad=True)
        return {"loss": zero, "energy_data": energy}

    def visuals(self, generator: torch.Generator) -> dict[str, Tensor]:
        """Images: samples. 2-D: exp(−E/T) | samples, and the chain paths over exp(−E/T)."""
        if self.data.is_image:
            return {"samples": self.generate(64, generator=generator).x}
        box = self.data.box
        fresh = self.generate(2000, generator=generator,
                              snapshot_every=max(self.sample_steps // 100, 1))
        target = plots2d.density_values(self.model.energy, box, item_shape=self.data.item_shape,
                                        temperature=self.sampler.temperature, device=self.device)
        panel = figures.panels_2d([figures.Panel("exp(−E/T)", values=target),
                                   figures.Panel("samples", points=fresh.x)], box)
        paths = figures.trajectories_figure(fresh.chain, box, background=target, n_chains=4)
        value_range = self.data.value_range
        return {"density_samples": plots2d.in_value_range(panel, value_range),
                "sampler_paths": plots2d.in_value_range(paths, value_range)}
