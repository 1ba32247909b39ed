"""Noise-contrastive estimation (Gutmann & Hyvärinen 2010): learn an energy by telling
data from samples of a known noise distribution q.

With ν noise samples per data item and the model's log-density log p(x) = −E(x) (the
normaliser is a free parameter: the network's last bias), the classifier's logit is

    G(x) = −E(x) − log q(x) − log ν
    loss = mean_data softplus(−G(x)) + ν · mean_noise softplus(G(y))

(the negated log-likelihood of "data" for data and "noise" for noise). At the optimum
exp(−E) is the normalised data density, so NCE also learns log Z = 0; the logged
``log_z_is`` = log mean_noise exp(−E(y) − log q(y)) (importance sampling with q) shows
how close it is. NCE works when q overlaps the data: a Gaussian fitted to the data
(``noise: gaussian``, default) suits 2-D toys and small images; ``uniform`` fills the box.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebmrun.objectives.base import DataInfo
from ebmrun.objectives.score_matching import DirectEnergyObjective
from ebmrun.samplers.base import Sampler


def nce_loss(e_data: Tensor, e_noise: Tensor, log_q_data: Tensor, log_q_noise: Tensor,
             ratio: float) -> tuple[Tensor, Tensor]:
    """NCE loss (scalar) and classifier accuracy from energies and noise log-densities of
    data ``(B,)`` and noise ``(νB,)`` items; ``ratio`` = ν."""
    log_ratio = math.log(ratio)
    g_data = -e_data - log_q_data - log_ratio
    g_noise = -e_noise - log_q_noise - log_ratio
    loss = F.softplus(-g_data).mean() + ratio * F.softplus(g_noise).mean()
    correct = torch.cat([g_data > 0, g_noise < 0]).float().mean()
    return loss, correct


class UniformNoise:
    """Uniform on the data box: q(x) = (high − low)^(−D)."""

    def __init__(self, data: DataInfo, scale: float = 1.0) -> None:
        self.item_shape, (self.low, self.high) = data.item_shape, data.box
        self.dim = math.prod(data.item_shape)

    def fit(self, x: Tensor) -> None:
        """Nothing to fit: the box is known."""

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        u = torch.rand(n, *self.item_shape, generator=generator, device=device)
        return u * (self.high - self.low) + self.low

    def log_prob(self, x: Tensor) -> Tensor:
        return torch.full((x.shape[0],), -self.dim * math.log(self.high - self.low),
                          device=x.device)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class GaussianNoise:
    """A Gaussian fitted to the first training batch: its mean, and its covariance times
    ``scale²`` (wider noise covers the tails) plus a small ridge (a batch smaller than the
    dimension gives a singular covariance)."""

    RIDGE = 1e-3  # relative to the mean variance

    def __init__(self, data: DataInfo, scale: float = 1.0) -> None:
        self.item_shape, self.scale = data.item_shape, float(scale)
        self.mean: Tensor | None = None
        self.scale_tril: Tensor | None = None

    def fit(self, x: Tensor) -> None:
        flat = x.detach().flatten(1).double()
        mean = flat.mean(0)
        cov = torch.cov(flat.T).reshape(flat.shape[1], flat.shape[1]) * self.scale**2
        ridge = self.RIDGE * float(cov.diagonal().mean()) + 1e-8
        cov = cov + ridge * torch.eye(len(mean), dtype=cov.dtype, device=cov.device)
        self.mean, self.scale_tril = mean.float(), torch.linalg.cholesky(cov).float()

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        mean, tril = self.mean.to(device), self.scale_tril.to(device)
        eps = torch.randn(n, len(mean), generator=generator, device=device)
        return (mean + eps @ tril.T).reshape(n, *self.item_shape)

    def log_prob(self, x: Tensor) -> Tensor:
        mean, tril = self.mean.to(x.device), self.scale_tril.to(x.device)
        z = torch.linalg.solve_triangular(tril, (x.flatten(1) - mean).T, upper=False)
        log_det = tril.diagonal().log().sum()
        return -0.5 * z.pow(2).sum(0) - log_det - 0.5 * len(mean) * math.log(2 * math.pi)

    def state_dict(self) -> dict:
        return {"mean": self.mean, "scale_tril": self.scale_tril}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.scale_tril = state.get("mean"), state.get("scale_tril")


NOISES = {"gaussian": GaussianNoise, "uniform": UniformNoise}


class NCE(DirectEnergyObjective):
    """Noise-contrastive estimation for any energy network.

    Args:
        noise: ``gaussian`` (fitted to the first batch) | ``uniform`` (the data box).
        noise_scale: gaussian: covariance multiplied by ``noise_scale²``.
        noise_ratio: ν, noise samples per data item.
        lr, betas, sample_steps: see :class:`DirectEnergyObjective`.
    """

    train_metrics = ("loss", "accuracy", "energy_data", "energy_noise", "log_z_is")

    def __init__(self, model: nn.Module, sampler: Sampler, data: DataInfo,
                 generator: torch.Generator, noise: str = "gaussian", noise_scale: float = 1.0,
                 noise_ratio: int = 4, lr: float | None = 1e-3,
                 betas: list[float] | None = None, sample_steps: int = 256) -> None:
        super().__init__(model, sampler, data, generator, lr, betas, sample_steps)
        if noise not in NOISES:
            raise ValueError(f"noise={noise!r} is invalid (choose from: {', '.join(NOISES)})")
        if noise_scale <= 0 or noise_ratio < 1:
            raise ValueError(f"need noise_scale > 0 and noise_ratio >= 1, got {noise_scale}, "
                             f"{noise_ratio}")
        self.noise = NOISES[noise](data, noise_scale)
        self.noise_ratio = int(noise_ratio)
        self.fitted = False

    def training_step(self, x: Tensor) -> dict[str, Tensor]:
        self.remember(x)
        if not self.fitted:
            self.noise.fit(x)
            self.fitted = True
        y = self.noise.sample(self.noise_ratio * x.shape[0], self.generator, x.device)
        energies = self.model.energy(torch.cat([x, y]))
        e_data, e_noise = energies[: x.shape[0]], energies[x.shape[0]:]
        log_q_noise = self.noise.log_prob(y)
        loss, accuracy = nce_loss(e_data, e_noise, self.noise.log_prob(x), log_q_noise,
                                  self.noise_ratio)
        with torch.no_grad():
            log_w = -e_noise - log_q_noise
            log_z = torch.logsumexp(log_w, 0) - math.log(len(log_w))
        self._last = {"energy/data": e_data.detach(), "energy/noise": e_noise.detach()}
        return {"loss": loss, "accuracy": accuracy, "log_z_is": log_z,
                "energy_data": e_data.mean().detach(), "energy_noise": e_noise.mean().detach()}

    def state_dict(self) -> dict:
        return {"fitted": self.fitted, "noise": self.noise.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.fitted = bool(state.get("fitted", False))
        self.noise.load_state_dict(state.get("noise", {}))
