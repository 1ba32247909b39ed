"""Energy-based GAN (Zhao, Mathieu & LeCun 2016): a generator and an auto-encoder
discriminator whose reconstruction error is the energy.

    D(x) = mean over pixels of (Dec(Enc(x)) − x)²        (B,)   low = looks like data

Two architectures, picked by ``arch`` from :data:`ARCHITECTURES`:

- ``conv``: DCGAN/infoGAN-like generator (Linear → stride-2 transposed convs, BatchNorm,
  ReLU) and a conv auto-encoder (stride-2 convs → Linear code → Linear → transposed convs).
- ``mlp``: the paper's fully connected MNIST grid (any item shape, flattened): generator
  and encoder/decoder widths and depths are lists.

The decoder and the generator end in a Tanh rescaled to ``value_range``, so the
reconstruction can reach every data value: a Sigmoid decoder on [-1, 1] data (a common
slip) can never reconstruct the dark half of the range, and training yields noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


class ToRange(nn.Module):
    """Tanh rescaled from (-1, 1) to ``(low, high)`` (the identity map for [-1, 1] data)."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = float(low), float(high)

    def forward(self, u: Tensor) -> Tensor:
        t = torch.tanh(u)
        if (self.low, self.high) == (-1.0, 1.0):
            return t
        return self.low + (self.high - self.low) * (t + 1) * 0.5


@dataclass(frozen=True)
class NetSettings:
    """Everything a builder may need (both architectures read their own fields)."""

    item_shape: tuple[int, ...]
    z_dim: int
    code_dim: int
    value_range: tuple[float, float]
    gen_channels: tuple[int, ...]
    disc_channels: tuple[int, ...]
    mlp_gen_hidden: tuple[int, ...]
    mlp_enc_hidden: tuple[int, ...]
    mlp_dec_hidden: tuple[int, ...]


class AutoEncoder(nn.Module):
    """``encoder: (B, *item) -> (B, code_dim)``, ``decoder: (B, code_dim) -> (B, *item)``."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Reconstruction (shape of ``x``) and code ``(B, code_dim)``."""
        code = self.encoder(x)
        return self.decoder(code), code


def _image_grid_sizes(s: NetSettings) -> tuple[int, int, int]:
    """Channels and the spatial size after ``len(channels)`` stride-2 halvings."""
    if len(s.item_shape) != 3:
        raise ValueError(f"ebgan arch=conv needs (C, H, W) images, got item shape "
                         f"{list(s.item_shape)} (fix: model.net.arch=mlp for vectors)")
    c, h, w = s.item_shape
    factor = 2 ** max(len(s.gen_channels), len(s.disc_channels))
    if h % factor or w % factor:
        raise ValueError(f"ebgan arch=conv needs image sides divisible by {factor}, got "
                         f"{h}x{w} (fix: fewer model.net.gen_channels/disc_channels)")
    return c, h, w


def _up_stack(channels: Sequence[int], out_channels: int, norm: bool, value_range) -> list:
    """Transposed convs k4 s2 p1 (each doubles H and W) ending at ``out_channels``."""
    layers: list[nn.Module] = []
    widths = [*channels, out_channels]
    for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
        last = i == len(widths) - 2
        layers.append(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=last or not norm))
        if not last:
            layers += [nn.BatchNorm2d(c_out)] if norm else []
            layers.append(nn.ReLU(inplace=True))
    return layers + [ToRange(*value_range)]


def conv_generator(s: NetSettings) -> nn.Module:
    """``(B, z_dim) -> (B, C, H, W)``: Linear to ``gen_channels[0]`` maps of size H/2^k,
    then k transposed convs; BatchNorm + ReLU between (DCGAN)."""
    c, h, w = _image_grid_sizes(s)
    k = len(s.gen_channels)
    c0, h0, w0 = s.gen_channels[0], h // 2 ** k, w // 2 ** k
    return nn.Sequential(
        nn.Linear(s.z_dim, c0 * h0 * w0, bias=False), nn.BatchNorm1d(c0 * h0 * w0),
        nn.ReLU(inplace=True), nn.Unflatten(1, (c0, h0, w0)),
        *_up_stack(s.gen_channels, c, norm=True, value_range=s.value_range))


def conv_autoencoder(s: NetSettings) -> AutoEncoder:
    """Encoder: stride-2 convs (k4 p1, LeakyReLU) → Linear code; decoder mirrors it with
    ReLU. No BatchNorm: an energy must not depend on which other images share the batch."""
    c, h, w = _image_grid_sizes(s)
    k = len(s.disc_channels)
    hk, wk, ck = h // 2 ** k, w // 2 ** k, s.disc_channels[-1]
    down: list[nn.Module] = []
    for c_in, c_out in zip([c, *s.disc_channels[:-1]], s.disc_channels):
        down += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
    encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(ck * hk * wk, s.code_dim))
    decoder = nn.Sequential(
        nn.Linear(s.code_dim, ck * hk * wk), nn.ReLU(inplace=True), nn.Unflatten(1, (ck, hk, wk)),
        *_up_stack(s.disc_channels[::-1], c, norm=False, value_range=s.value_range))
    return AutoEncoder(encoder, decoder)


def _mlp(sizes: Sequence[int], act: Callable[[], nn.Module], norm: bool) -> list[nn.Module]:
    """Linear layers between consecutive ``sizes``, each followed by (BN and) ``act``."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b, bias=not norm), *([nn.BatchNorm1d(b)] if norm else []), act()]
    return layers


def mlp_generator(s: NetSettings) -> nn.Module:
    """``(B, z_dim) -> (B, *item)``: ``mlp_gen_hidden`` Linear+BN+ReLU layers, Linear out."""
    d = int(torch.Size(s.item_shape).numel())
    sizes = [s.z_dim, *s.mlp_gen_hidden]
    return nn.Sequential(*_mlp(sizes, lambda: nn.ReLU(inplace=True), norm=True),
                         nn.Linear(sizes[-1], d), ToRange(*s.value_range),
                         nn.Unflatten(1, s.item_shape))


def mlp_autoencoder(s: NetSettings) -> AutoEncoder:
    """Flatten → ``mlp_enc_hidden`` → code (linear) → ``mlp_dec_hidden`` → item."""
    d = int(torch.Size(s.item_shape).numel())
    act = lambda: nn.LeakyReLU(0.2, inplace=True)  # noqa: E731
    enc = [d, *s.mlp_enc_hidden]
    dec = [s.code_dim, *s.mlp_dec_hidden]
    encoder = nn.Sequential(nn.Flatten(), *_mlp(enc, act, norm=False),
                            nn.Linear(enc[-1], s.code_dim))
    decoder = nn.Sequential(*_mlp(dec, act, norm=False), nn.Linear(dec[-1], d),
                            ToRange(*s.value_range), nn.Unflatten(1, s.item_shape))
    return AutoEncoder(encoder, decoder)


# arch name -> (generator builder, discriminator builder)
ARCHITECTURES: dict[str, tuple[Callable[[NetSettings], nn.Module],
                               Callable[[NetSettings], AutoEncoder]]] = {
    "conv": (conv_generator, conv_autoencoder),
    "mlp": (mlp_generator, mlp_autoencoder),
}


class EBGAN(nn.Module):
    """Generator ``G: (B, z_dim) -> (B, *item)`` and auto-encoder discriminator ``D``.

    Args:
        item_shape: shape of one data item (filled at build time).
        arch: ``conv`` (images) or ``mlp`` (any shape); see :data:`ARCHITECTURES`.
        z_dim: latent size of the generator.
        code_dim: size of the discriminator's code (the pulling-away term acts on it).
        value_range: ``[low, high]`` of the data; generator and decoder outputs are a Tanh
            rescaled to it. Defaults to ``[-1, 1]`` (ebmrun's image scaling); set it for
            other data, e.g. ``model.net.value_range=[-4.5,4.5]`` for toy2d with ``mlp``.
        gen_channels: conv generator widths, first = after the Linear; each layer doubles
            the side, so sides must be divisible by ``2**len``.
        disc_channels: conv encoder widths (the decoder mirrors them).
        mlp_gen_hidden / mlp_enc_hidden / mlp_dec_hidden: fully connected widths (``mlp``).
        channels_last: NHWC activations for the convs (often faster with oneDNN on CPU).
    """

    def __init__(self, item_shape: Sequence[int], arch: str = "conv", z_dim: int = 32,
                 code_dim: int = 32, value_range: Sequence[float] = (-1.0, 1.0),
                 gen_channels: Sequence[int] = (64, 32), disc_channels: Sequence[int] = (32, 64),
                 mlp_gen_hidden: Sequence[int] = (800, 800),
                 mlp_enc_hidden: Sequence[int] = (512,), mlp_dec_hidden: Sequence[int] = (512,),
                 channels_last: bool = False) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown ebgan arch {arch!r} (choose from: "
                             f"{', '.join(ARCHITECTURES)})")
        low, high = (float(v) for v in value_range)
        if not low < high:
            raise ValueError(f"value_range must be [low, high] with low < high, got "
                             f"{list(value_range)}")
        if z_dim < 1 or code_dim < 1:
            raise ValueError(f"z_dim and code_dim must be >= 1, got {z_dim}, {code_dim}")
        settings = NetSettings(
            tuple(int(v) for v in item_shape), int(z_dim), int(code_dim), (low, high),
            tuple(gen_channels), tuple(disc_channels), tuple(mlp_gen_hidden),
            tuple(mlp_enc_hidden), tuple(mlp_dec_hidden))
        build_generator, build_discriminator = ARCHITECTURES[arch]
        self.item_shape, self.z_dim = settings.item_shape, settings.z_dim
        self.code_dim = settings.code_dim
        self.value_range = (low, high)
        self.generator = build_generator(settings)
        self.discriminator = build_discriminator(settings)
        self.channels_last = bool(channels_last and len(self.item_shape) == 3)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def _in(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def reconstruct(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Discriminator pass: reconstruction ``(B, *item)`` and code ``(B, code_dim)``."""
        return self.discriminator(self._in(x))

    def energy_and_code(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Energies ``(B,)`` (mean squared reconstruction error) and codes ``(B, code_dim)``
        from one discriminator pass (the objective needs both for generated batches)."""
        recon, code = self.reconstruct(x)
        return (recon - x).pow(2).flatten(1).mean(1), code

    def energy(self, x: Tensor) -> Tensor:
        """D(x): per-sample mean squared reconstruction error ``(B,)`` of ``x`` ``(B, *item)``."""
        return self.energy_and_code(x)[0]

    def encode(self, x: Tensor) -> Tensor:
        """Discriminator codes ``(B, code_dim)`` of ``x`` ``(B, *item)``."""
        return self.discriminator.encoder(self._in(x))

    def generate(self, z: Tensor) -> Tensor:
        """G(z): images ``(B, *item)`` in ``value_range`` from latents ``(B, z_dim)``."""
        return self.generator(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.energy(x)
