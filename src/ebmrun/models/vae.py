"""Variational auto-encoder (Kingma & Welling 2014) as an energy model: E(x) = −ELBO(x).

    q(z|x) = N(μ(x), diag σ²(x))      p(z) = N(0, I)      p(x|z) = likelihood(decoder(z))
    −ELBO(x) = E_q[−log p(x|z)] + KL(q(z|x) ‖ p(z)),   KL = ½ Σ (μ² + σ² − log σ² − 1)

The negative ELBO is the free energy: low for data-like x; the KL term is the spring that
pulls every code towards the origin. Likelihoods (:data:`LIKELIHOODS`):

- ``bernoulli`` for data in [0, 1]: the decoder gives logits, log p(x|z) = −BCE(logits, x)
  summed over pixels (binarised MNIST; on grey values it is the usual "BCE" loss);
- ``gaussian`` otherwise: the decoder gives the mean, with one standard deviation shared by
  all pixels, learned (``gaussian_std: null``; kept >= 1e-3) or fixed.

Architectures (:data:`ARCHITECTURES`): ``mlp`` (any item shape; ``hidden`` widths, the
decoder mirrors them: 784-400-20 is ``hidden: [400]``, ``z_dim: 20``) and ``conv``
(images; stride-2 convs, the decoder mirrors them with transposed convs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebmrun.models.conv_stacks import conv_stacks

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True), "tanh": nn.Tanh, "softplus": nn.Softplus,
    "elu": lambda: nn.ELU(inplace=True), "silu": lambda: nn.SiLU(inplace=True)}


class Bernoulli(nn.Module):
    """p(x|z) = Π Bernoulli(x_i; sigmoid(l_i)) with logits ``l`` from the decoder."""

    def log_prob(self, logits: Tensor, x: Tensor) -> Tensor:
        """``(N, *item)`` logits and targets in [0, 1] -> log-likelihoods ``(N,)``."""
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)

    def nll_sum(self, logits: Tensor, x: Tensor) -> Tensor:
        """−Σ log p over the whole batch (a scalar): one fused kernel each way."""
        return F.binary_cross_entropy_with_logits(logits, x, reduction="sum")

    def mean(self, logits: Tensor) -> Tensor:
        """Pixel probabilities (the decoder mean) in [0, 1]."""
        return torch.sigmoid(logits)


class Gaussian(nn.Module):
    """p(x|z) = N(x; m, s² I), ``m`` from the decoder, ``s`` shared by all entries:
    learned (``std=None``, starting at 1, floored at 1e-3) or fixed."""

    def __init__(self, std: float | None) -> None:
        super().__init__()
        if std is not None and std <= 0:
            raise ValueError(f"gaussian_std must be > 0 or null (learned), got {std}")
        self.log_std = nn.Parameter(torch.zeros(()), requires_grad=std is None)
        if std is not None:
            self.log_std.data.fill_(math.log(std))

    def log_prob(self, mean: Tensor, x: Tensor) -> Tensor:
        log_std = self.log_std.clamp(min=math.log(1e-3))
        z = (x - mean) * torch.exp(-log_std)
        per_entry = -0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        return per_entry.flatten(1).sum(1)

    def nll_sum(self, mean: Tensor, x: Tensor) -> Tensor:
        """−Σ log p over the whole batch (a scalar), with the squared error in one kernel."""
        log_std = self.log_std.clamp(min=math.log(1e-3))
        sq = F.mse_loss(mean, x, reduction="sum")
        return 0.5 * sq * torch.exp(-2 * log_std) + x.numel() * (
            log_std + 0.5 * math.log(2 * math.pi))

    def mean(self, mean: Tensor) -> Tensor:
        return mean


@dataclass(frozen=True)
class VAESettings:
    item_shape: tuple[int, ...]
    z_dim: int
    hidden: tuple[int, ...]
    conv_channels: tuple[int, ...]
    activation: Callable[[], nn.Module]


def mlp_coders(s: VAESettings) -> tuple[nn.Module, nn.Module]:
    """Encoder ``(B, *item) -> (B, 2·z)`` (μ and log σ² from one Linear: fewer kernels
    than two heads) and decoder ``(B, z) -> (B, *item)``."""
    d = int(torch.Size(s.item_shape).numel())
    enc: list[nn.Module] = [nn.Flatten()]
    for a, b in zip([d, *s.hidden[:-1]], s.hidden):
        enc += [nn.Linear(a, b), s.activation()]
    dec: list[nn.Module] = []
    widths = [s.z_dim, *s.hidden[::-1]]
    for a, b in zip(widths[:-1], widths[1:]):
        dec += [nn.Linear(a, b), s.activation()]
    return (nn.Sequential(*enc, nn.Linear(s.hidden[-1], 2 * s.z_dim)),
            nn.Sequential(*dec, nn.Linear(widths[-1], d), nn.Unflatten(1, s.item_shape)))


def conv_coders(s: VAESettings) -> tuple[nn.Module, nn.Module]:
    """Stride-2 convs (k4 p1) -> Linear to 2·z; Linear -> transposed convs back."""
    enc, up, (ck, hk, wk) = conv_stacks(s.item_shape, s.conv_channels, s.activation, "vae")
    return (nn.Sequential(*enc, nn.Flatten(), nn.Linear(ck * hk * wk, 2 * s.z_dim)),
            nn.Sequential(nn.Linear(s.z_dim, ck * hk * wk), s.activation(),
                          nn.Unflatten(1, (ck, hk, wk)), *up))


ARCHITECTURES: dict[str, Callable[[VAESettings], tuple[nn.Module, nn.Module]]] = {
    "mlp": mlp_coders, "conv": conv_coders}
LIKELIHOODS = ("auto", "bernoulli", "gaussian")


class VAE(nn.Module):
    """Encoder, decoder and likelihood; ELBO terms, importance weights and the energy.

    Args:
        item_shape: shape of one item (filled at build time).
        arch: ``mlp`` or ``conv`` (see :data:`ARCHITECTURES`).
        z_dim: latent dimension.
        hidden: MLP encoder widths (the decoder mirrors them).
        conv_channels: conv encoder widths (each layer halves the sides).
        activation: hidden nonlinearity, a key of :data:`ACTIVATIONS`.
        likelihood: ``bernoulli`` | ``gaussian`` | ``auto`` (Bernoulli iff ``value_range``
            is [0, 1]).
        value_range: the data's range (the config takes ``dataset.value_range``); ``None``
            for unbounded data (Gaussian).
        gaussian_std: fixed std of the Gaussian likelihood; ``None`` = learned.
    """

    def __init__(self, item_shape: Sequence[int], arch: str = "mlp", z_dim: int = 20,
                 hidden: Sequence[int] = (400,), conv_channels: Sequence[int] = (32, 64),
                 activation: str = "relu", likelihood: str = "auto",
                 value_range: Sequence[float] | None = None,
                 gaussian_std: float | None = None) -> None:
        super().__init__()
        for name, value, choices in (("arch", arch, ARCHITECTURES),
                                     ("activation", activation, ACTIVATIONS),
                                     ("likelihood", likelihood, LIKELIHOODS)):
            if value not in choices:
                raise ValueError(f"unknown vae {name} {value!r} (choose from: "
                                 f"{', '.join(choices)})")
        if z_dim < 1 or not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"vae needs z_dim >= 1 and hidden widths >= 1, got z_dim={z_dim}, "
                             f"hidden={list(hidden)}")
        bounds = None if value_range is None else tuple(float(v) for v in value_range)
        if likelihood == "auto":
            likelihood = "bernoulli" if bounds == (0.0, 1.0) else "gaussian"
        self.item_shape, self.z_dim = tuple(int(v) for v in item_shape), int(z_dim)
        self.likelihood_name = likelihood
        self.likelihood = Bernoulli() if likelihood == "bernoulli" else Gaussian(gaussian_std)
        self.encoder, self.decoder = ARCHITECTURES[arch](VAESettings(
            self.item_shape, self.z_dim, tuple(hidden), tuple(conv_channels),
            ACTIVATIONS[activation]))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """μ and log σ² of q(z|x), each ``(B, z_dim)``."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """Decoder output ``(N, *item)`` (logits or means) for latents ``(N, z_dim)``."""
        return self.decoder(z)

    def decode_mean(self, z: Tensor) -> Tensor:
        """E[x|z] ``(N, *item)``: probabilities (Bernoulli) or means (Gaussian)."""
        return self.likelihood.mean(self.decode(z))

    def elbo_terms(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Single-sample reconstruction term −log p(x|z), z = μ + σ·eps, and the closed-form
        KL(q(z|x) ‖ N(0, I)), each ``(B,)``; ``eps`` ``(B, z_dim)`` (zeros: z = μ)."""
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * eps
        recon = -self.likelihood.log_prob(self.decode(z), x)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(1)
        return recon, kl

    def batch_terms(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Batch means of the two terms of :meth:`elbo_terms` (scalars), the training loss's
        parts: the same values, computed with fused reductions (fewer kernels per step)."""
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * eps
        recon = self.likelihood.nll_sum(self.decode(z), x) / x.shape[0]
        kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum() / x.shape[0]
        return recon, kl

    def log_weights(self, x: Tensor, eps: Tensor) -> Tensor:
        """Importance log-weights log p(x|z_k) + log p(z_k) − log q(z_k|x) ``(K, B)`` for
        noise ``eps`` ``(K, B, z_dim)``, z_k = μ + σ·eps_k (the 2π terms cancel)."""
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * eps
        k, b = eps.shape[:2]
        target = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
        log_px = self.likelihood.log_prob(self.decode(z.reshape(k * b, -1)), target).view(k, b)
        log_pz_over_q = (0.5 * (eps.pow(2) - z.pow(2) + logvar)).sum(2)
        return log_px + log_pz_over_q

    def energy(self, x: Tensor, samples: int = 1, generator: torch.Generator | None = None
               ) -> Tensor:
        """−ELBO ``(B,)``: the reconstruction term averaged over ``samples`` draws of z plus
        the closed-form KL. Without a ``generator`` the draws come from a fixed seed, so the
        same x always gets the same energy."""
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(0)
        mu, logvar = self.encode(x)
        std = torch.exp(0.5 * logvar)
        recon = torch.zeros(x.shape[0], device=x.device)
        for _ in range(samples):
            eps = torch.randn(mu.shape, device=x.device, generator=generator)
            recon = recon - self.likelihood.log_prob(self.decode(mu + std * eps), x)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(1)
        return recon / samples + kl

    def forward(self, x: Tensor) -> Tensor:
        return self.energy(x)
