"""Energy-based GAN (Zhao, Mathieu & LeCun 2016): a generator and an auto-encoder
discriminator whose reconstruction error is the energy.

    D(x) = mean over pixels of (Dec(Enc(x)) − x)²        (B,)   low = looks like data

Two architectures, picked by ``arch`` from :data:`ARCHITECTURES`:

- ``conv``: DCGAN/infoGAN-like generator (``gen_fc`` Linear layers → Linear → stride-2
  transposed convs, BatchNorm, ReLU) and a conv auto-encoder (stride-2 convs → Linear code
  → Linear → transposed convs; BatchNorm in the decoder with ``disc_norm``).
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
    gen_fc: tuple[int, ...] = ()
    disc_norm: bool = False
    disc_act: str = "leaky_relu"
    decoder_out: str = "range"


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


def _up_stack(channels: Sequence[int], out_channels: int, norm: bool,
              value_range: tuple[float, float] | None) -> list:
    """Transposed convs k4 s2 p1 (each doubles H and W) ending at ``out_channels``, then a
    Tanh rescaled to ``value_range`` (``None``: a linear output)."""
    layers: list[nn.Module] = []
    widths = [*channels, out_channels]
    for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
        last = i == len(widths) - 2
        layers.append(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=last or not norm))
        if not last:
            layers += [nn.BatchNorm2d(c_out)] if norm else []
            layers.append(nn.ReLU(inplace=True))
    return layers + ([ToRange(*value_range)] if value_range is not None else [])


def conv_generator(s: NetSettings) -> nn.Module:
    """``(B, z_dim) -> (B, C, H, W)``: ``gen_fc`` Linear layers, a Linear to
    ``gen_channels[0]`` maps of size H/2^k, then k transposed convs; BatchNorm + ReLU
    between (DCGAN; with ``gen_fc=[1024]`` and ``gen_channels=[128, 64]`` the infoGAN G)."""
    c, h, w = _image_grid_sizes(s)
    k = len(s.gen_channels)
    c0, h0, w0 = s.gen_channels[0], h // 2 ** k, w // 2 ** k
    return nn.Sequential(
        *_mlp([s.z_dim, *s.gen_fc, c0 * h0 * w0], lambda: nn.ReLU(inplace=True), norm=True),
        nn.Unflatten(1, (c0, h0, w0)),
        *_up_stack(s.gen_channels, c, norm=True, value_range=s.value_range))


def conv_autoencoder(s: NetSettings) -> AutoEncoder:
    """Encoder: stride-2 convs (k4 p1, ``disc_act``) → Linear code; decoder mirrors it with
    ReLU, and BatchNorm with ``disc_norm`` (then the training energies of a batch depend on
    the batch: real and fake batches are passed separately; in eval mode the running
    statistics make D(x) per-sample again). ``decoder_out``: ``range`` (Tanh rescaled to
    the data range) or ``linear``."""
    c, h, w = _image_grid_sizes(s)
    k = len(s.disc_channels)
    hk, wk, ck = h // 2 ** k, w // 2 ** k, s.disc_channels[-1]
    act = DISC_ACTIVATIONS[s.disc_act]
    down: list[nn.Module] = []
    for c_in, c_out in zip([c, *s.disc_channels[:-1]], s.disc_channels):
        down += [nn.Conv2d(c_in, c_out, 4, 2, 1), act()]
    encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(ck * hk * wk, s.code_dim))
    decoder = nn.Sequential(
        *_mlp([s.code_dim, ck * hk * wk], lambda: nn.ReLU(inplace=True), norm=s.disc_norm),
        nn.Unflatten(1, (ck, hk, wk)),
        *_up_stack(s.disc_channels[::-1], c, norm=s.disc_norm,
                   value_range=s.value_range if s.decoder_out == "range" else None))
    return AutoEncoder(encoder, decoder)


DISC_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "leaky_relu": lambda: nn.LeakyReLU(0.2, inplace=True),
    "relu": lambda: nn.ReLU(inplace=True),
}


def dcgan_init(net: nn.Module) -> None:
    """DCGAN initialisation: conv/linear weights N(0, 0.02), biases 0, BatchNorm scales
    N(1, 0.02), shifts 0 (what the popular PyTorch EBGAN does)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


# init name -> what it does to a freshly built network (``default``: PyTorch's own)
INITS: dict[str, Callable[[nn.Module], None]] = {"default": lambda net: None,
                                                  "dcgan": dcgan_init}


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
        gen_fc: conv generator: widths of Linear+BN+ReLU layers before the one that makes
            the first feature maps (``[1024]`` with ``gen_channels=[128, 64]``: infoGAN).
        disc_norm: BatchNorm in the conv decoder (training energies then depend on the
            batch; eval-mode energies use running statistics).
        disc_act: conv encoder activation, ``leaky_relu`` (0.2) or ``relu``.
        decoder_out: ``range`` (Tanh rescaled to ``value_range``) or ``linear``.
        init: ``default`` (PyTorch's) or ``dcgan`` (N(0, 0.02)), see :data:`INITS`.
        target_grad: let the generator's gradient flow through the target ``x`` of
            ‖Dec(Enc(x)) − x‖² as well as through the reconstruction (the energy's exact
            gradient). ``false`` detaches the target, as the popular PyTorch EBGAN does
            (``mse(D(G(z)), G(z).detach())``): same energy values, G then only moves
            towards images that D reconstructs well.
    """

    def __init__(self, item_shape: Sequence[int], arch: str = "conv", z_dim: int = 32,
                 code_dim: int = 32, value_range: Sequence[float] = (-1.0, 1.0),
                 gen_channels: Sequence[int] = (64, 32), disc_channels: Sequence[int] = (32, 64),
                 mlp_gen_hidden: Sequence[int] = (800, 800),
                 mlp_enc_hidden: Sequence[int] = (512,), mlp_dec_hidden: Sequence[int] = (512,),
                 channels_last: bool = False, gen_fc: Sequence[int] = (),
                 disc_norm: bool = False, disc_act: str = "leaky_relu",
                 decoder_out: str = "range", init: str = "default",
                 target_grad: bool = True) -> None:
        super().__init__()
        for what, name, known in (("arch", arch, ARCHITECTURES), ("init", init, INITS),
                                  ("disc_act", disc_act, DISC_ACTIVATIONS),
                                  ("decoder_out", decoder_out, ("range", "linear"))):
            if name not in known:
                raise ValueError(f"unknown ebgan {what} {name!r} (choose from: "
                                 f"{', '.join(known)})")
        low, high = (float(v) for v in value_range)
        if not low < high:
            raise ValueError(f"value_range must be [low, high] with low < high, got "
                             f"{list(value_range)}")
        if z_dim < 1 or code_dim < 1:
            raise ValueError(f"z_dim and code_dim must be >= 1, got {z_dim}, {code_dim}")
        settings = NetSettings(
            tuple(int(v) for v in item_shape), int(z_dim), int(code_dim), (low, high),
            tuple(gen_channels), tuple(disc_channels), tuple(mlp_gen_hidden),
            tuple(mlp_enc_hidden), tuple(mlp_dec_hidden), tuple(int(v) for v in gen_fc),
            bool(disc_norm), disc_act, decoder_out)
        build_generator, build_discriminator = ARCHITECTURES[arch]
        self.item_shape, self.z_dim = settings.item_shape, settings.z_dim
        self.code_dim = settings.code_dim
        self.value_range = (low, high)
        self.generator = build_generator(settings)
        self.discriminator = build_discriminator(settings)
        INITS[init](self)
        self.target_grad = bool(target_grad)
        # BatchNorm in D makes a training batch's energies depend on each other: the
        # objective then passes real and fake batches separately.
        self.batch_dependent_energy = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.discriminator.modules())
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
        target = x if self.target_grad else x.detach()
        return (recon - target).pow(2).flatten(1).mean(1), code

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
