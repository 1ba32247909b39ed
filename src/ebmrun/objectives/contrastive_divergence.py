"""Contrastive divergence with persistent chains (replay buffer) for deep EBMs.

    loss = mean E(x_data) − mean E(x_sample) + α · mean(E(x_data)² + E(x_sample)²)

The first term is the (negated) log-likelihood gradient estimated with one batch of model
samples; the α term keeps energies near zero so they cannot drift off together.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ebmrun.logging import figures, plots2d
from ebmrun.objectives.base import DataInfo, Objective
from ebmrun.objectives.common import ChainsFromNoise
from ebmrun.objectives.replay_buffer import ReplayBuffer, ReplayBufferCD
from ebmrun.samplers.base import Sampler


class ContrastiveDivergence(ReplayBufferCD, ChainsFromNoise, Objective):
    """Persistent contrastive divergence (Du & Mordatch 2019; UvA tutorial 8 recipe).

    Args:
        model: module with ``energy(x) -> (B,)``.
        sampler: makes negatives from buffer starts (``sampler.steps`` steps per batch).
        alpha: weight of the energy-magnitude regulariser.
        data_noise_std: std of Gaussian noise added to real images (smooths the data
            distribution so the energy surface is not infinitely sharp at the data).
        buffer_size: replay buffer slots; 0 = short-run non-persistent chains from noise.
        reinit_fraction: share of each batch restarted from uniform noise.
        sample_steps: default steps for fresh samples drawn from noise (visuals, task=sample).
        chain_steps_max: ``None``: every training chain runs ``sampler.steps`` (K); an int
            above K: each batch's chains run a length drawn uniformly from K..chain_steps_max.
    """

    @property
    def capturable_step(self) -> bool:
        """Images with a fixed chain length only: 2-D data keeps a growing window of recent
        points for its pictures, and a drawn chain length is read on the host."""
        return self.data.is_image and self.chain_steps_max is None

    train_metrics = ("loss", "loss_cd", "loss_reg", "energy_data", "energy_sample",
                     "energy_gap", "sampler/*", "buffer/age_mean", "buffer/reinit_share")
    # The replay buffer scored like fresh samples (persistent chains on MNIST-like images).
    eval_metrics = ("buffer/*",)

    def __init__(self, model: nn.Module, sampler: Sampler, data: DataInfo,
                 generator: torch.Generator, alpha: float = 0.1, data_noise_std: float = 0.005,
                 buffer_size: int = 8192, reinit_fraction: float = 0.05,
                 sample_steps: int = 256, chain_steps_max: int | None = None) -> None:
        super().__init__(model, data, generator)
        if not 0.0 <= reinit_fraction <= 1.0:
            raise ValueError(f"reinit_fraction must be in [0, 1], got {reinit_fraction}")
        self.sampler = sampler
        self.alpha = float(alpha)
        self.data_noise_std = float(data_noise_std)
        self.persistent = buffer_size > 0
        self.reinit_fraction = float(reinit_fraction) if self.persistent else 1.0
        self.sample_steps = int(sample_steps)
        if chain_steps_max is not None and chain_steps_max <= sampler.steps:
            raise ValueError(f"chain_steps_max must be above sampler.steps ({sampler.steps}) "
                             f"or null, got {chain_steps_max}")
        self.chain_steps_max = None if chain_steps_max is None else int(chain_steps_max)
        device = next(model.parameters()).device
        # buffer_size == 0: every chain starts from noise (short-run MCMC, Nijkamp 2019).
        self.buffer = ReplayBuffer(max(buffer_size, 1), data.item_shape, data.box, device,
                                   generator)
        self._last: dict[str, Tensor] = {}
        # Recent real points (non-image data): the "target" panel of the 2-D pictures.
        self._recent_data = torch.empty(0, *data.item_shape, device=device)

    RECENT_POINTS = 8192

    def training_step(self, x: Tensor) -> dict[str, Tensor]:
        batch = x.shape[0]
        if not self.data.is_image:
            self._recent_data = torch.cat([x.detach(), self._recent_data])[: self.RECENT_POINTS]
        x = self.noisy_data(x)
        chains = self.negatives(batch)
        energies = self.model.energy(torch.cat([x, chains.x]))
        loss, scalars = self.contrastive_terms(energies[:batch], energies[batch:], chains)
        return {
            "loss": loss,
            **scalars,
            # Persistent chains only: how old the negatives are, how many restarted.
            **({f"buffer/{k}": v for k, v in self.buffer.stats().items()}
               if self.persistent else {}),
        }

    def visuals(self, generator: torch.Generator) -> dict[str, Tensor]:
        if not self.data.is_image:
            return self._visuals_2d(generator)
        fresh = self.generate(64, generator=generator, snapshot_every=max(self.sample_steps // 8, 1))
        # Chain film: one row per snapshot, 8 chains side by side.
        chain = torch.stack([snap[:8] for snap in fresh.chain]).flatten(0, 1)
        pictures = {"samples_from_noise": fresh.x, "langevin_chain": chain}
        if self.persistent:  # short-run chains (buffer_size 0) keep no buffer to show
            pictures["buffer"] = self.buffer_picture()
        return pictures

    def _visuals_2d(self, generator: torch.Generator) -> dict[str, Tensor]:
        """Left to right: data histogram, learned exp(−E), samples from noise, buffer."""
        box, device = self.data.box, self.buffer.data.device
        fresh = self.generate(2000, generator=generator)
        panel = figures.panels_2d([
            figures.Panel("data", points=self._recent_data),
            figures.Panel("exp(−E)", values=plots2d.density_values(
                self.model.energy, box, item_shape=self.data.item_shape, device=device)),
            figures.Panel("samples from noise", points=fresh.x),
            figures.Panel("replay buffer", points=self.buffer.data)], box)
        return {"data_model_samples_buffer": plots2d.in_value_range(panel, self.data.value_range)}
