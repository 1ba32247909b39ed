"""2-D toy densities, generated in code.

The usual set from the FFJORD / score-matching literature (Grathwohl et al. 2019,
``toy_data.py``), written with torch and an explicit ``torch.Generator`` so a seed fixes the
data set. All of them lie roughly within ``[-4, 4]^2``. Where the FFJORD code places points
deterministically (equal counts per ring or arm), points here pick their ring / arm at
random: the same density, and any ``n`` works.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ebmrun.data.base import InMemoryData
from ebmrun.data.root import as_range
from ebmrun.errors import UserError

Sampler = Callable[[int, torch.Generator], Tensor]

# 8gaussians: unit-circle centres scaled by 4, std 0.5, all divided by sqrt(2) (FFJORD).
_G8_SCALE = 4.0 / 1.414
_G8_STD = 0.5 / 1.414
_G8_CENTERS = _G8_SCALE * torch.tensor(
    [[math.cos(a), math.sin(a)] for a in (k * math.pi / 4 for k in range(8))])


def _rand(n: int, g: torch.Generator) -> Tensor:
    return torch.rand(n, generator=g)


def _randn(*shape: int, g: torch.Generator) -> Tensor:
    return torch.randn(*shape, generator=g)


def eight_gaussians(n: int, generator: torch.Generator) -> Tensor:
    """Equal mixture of 8 isotropic Gaussians on a circle of radius ~2.83; ``(n, 2)``."""
    which = torch.randint(0, 8, (n,), generator=generator)
    return _G8_CENTERS[which] + _G8_STD * _randn(n, 2, g=generator)


def two_spirals(n: int, generator: torch.Generator) -> Tensor:
    """Two interleaved spiral arms (1.5 turns), mirrored through the origin; ``(n, 2)``."""
    t = _rand(n, generator).sqrt() * (540.0 * 2 * math.pi / 360.0)
    x = -torch.cos(t) * t + 0.5 * _rand(n, generator)
    y = torch.sin(t) * t + 0.5 * _rand(n, generator)
    sign = torch.randint(0, 2, (n, 1), generator=generator) * 2 - 1  # which arm
    return sign * torch.stack([x, y], 1) / 3 + 0.1 * _randn(n, 2, g=generator)


def checkerboard(n: int, generator: torch.Generator) -> Tensor:
    """Uniform on the 8 dark squares (side 2) of a 4x4 board covering ``[-4, 4]^2``;
    ``(n, 2)``."""
    x1 = _rand(n, generator) * 4 - 2
    x2 = _rand(n, generator) - torch.randint(0, 2, (n,), generator=generator) * 2
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1) * 2


def rings(n: int, generator: torch.Generator) -> Tensor:
    """Four concentric circles of radii 0.75, 1.5, 2.25, 3 with noise 0.08; ``(n, 2)``."""
    radius = 0.75 * (torch.randint(0, 4, (n,), generator=generator) + 1)
    angle = 2 * math.pi * _rand(n, generator)
    circle = torch.stack([torch.cos(angle), torch.sin(angle)], 1) * radius[:, None]
    return circle + 0.08 * _randn(n, 2, g=generator)


def moons(n: int, generator: torch.Generator) -> Tensor:
    """Two interleaving half circles (sklearn ``make_moons``, noise 0.1), scaled by 2 and
    centred; ``(n, 2)``."""
    t = math.pi * _rand(n, generator)
    inner = torch.randint(0, 2, (n, 1), generator=generator).bool()
    outer_pts = torch.stack([torch.cos(t), torch.sin(t)], 1)
    inner_pts = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], 1)
    x = torch.where(inner, inner_pts, outer_pts) + 0.1 * _randn(n, 2, g=generator)
    return x * 2 + torch.tensor([-1.0, -0.2])


def swissroll(n: int, generator: torch.Generator) -> Tensor:
    """2-D Swiss roll (sklearn ``make_swiss_roll`` x/z, noise 1.0) divided by 5; ``(n, 2)``."""
    t = 1.5 * math.pi * (1 + 2 * _rand(n, generator))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) + _randn(n, 2, g=generator)
    return x / 5


def pinwheel(n: int, generator: torch.Generator) -> Tensor:
    """Five curved arms (radial std 0.3, tangential std 0.1, rate 0.25) scaled by 2;
    ``(n, 2)``."""
    arm = torch.randint(0, 5, (n,), generator=generator)
    features = _randn(n, 2, g=generator) * torch.tensor([0.3, 0.1]) + torch.tensor([1.0, 0.0])
    angle = arm * (2 * math.pi / 5) + 0.25 * torch.exp(features[:, 0])
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Row vector times the rotation [[cos, -sin], [sin, cos]], as in FFJORD's einsum.
    return 2 * torch.stack([features[:, 0] * cos + features[:, 1] * sin,
                            -features[:, 0] * sin + features[:, 1] * cos], 1)


TOY_DENSITIES: dict[str, Sampler] = {
    "8gaussians": eight_gaussians,
    "2spirals": two_spirals,
    "checkerboard": checkerboard,
    "rings": rings,
    "moons": moons,
    "swissroll": swissroll,
    "pinwheel": pinwheel,
}


def _log_density_8gaussians(x: Tensor) -> Tensor:
    """Exact log-density of :func:`eight_gaussians` at ``x`` ``(B, 2)`` -> ``(B,)``."""
    sq = ((x[:, None, :] - _G8_CENTERS.to(x)) ** 2).sum(-1)  # (B, 8)
    log_norm = math.log(8) + math.log(2 * math.pi * _G8_STD**2)
    return torch.logsumexp(-sq / (2 * _G8_STD**2), dim=1) - log_norm


def _log_density_checkerboard(x: Tensor) -> Tensor:
    """Exact log-density of :func:`checkerboard`: ``-log 32`` on the dark squares, ``-inf``
    elsewhere; ``(B, 2)`` -> ``(B,)``."""
    cell = torch.floor(x / 2)  # square index per axis, -2..1 inside the board
    inside = ((cell >= -2) & (cell <= 1)).all(1) & ((cell[:, 0] + cell[:, 1]) % 2 == 0)
    return torch.where(inside, torch.full_like(x[:, 0], -math.log(32.0)),
                       torch.full_like(x[:, 0], -math.inf))


# Densities with an easy closed form, for exact likelihood / KL diagnostics.
TOY_LOG_DENSITIES: dict[str, Callable[[Tensor], Tensor]] = {
    "8gaussians": _log_density_8gaussians,
    "checkerboard": _log_density_checkerboard,
}


def log_density(name: str, x: Tensor) -> Tensor:
    """Exact log-density of toy density ``name`` at points ``x`` ``(B, 2)`` -> ``(B,)``;
    UserError for a density without a closed form here (see ``TOY_LOG_DENSITIES``)."""
    fn = TOY_LOG_DENSITIES.get(name)
    if fn is None:
        raise UserError(f"no closed-form log-density for toy density {name!r}; fix: use one "
                        f"of {', '.join(TOY_LOG_DENSITIES)} or skip the exact-likelihood check")
    return fn(x)


def _check_name(name: str) -> Sampler:
    sampler = TOY_DENSITIES.get(name)
    if sampler is None:
        raise UserError(f"unknown toy density {name!r}; fix: set dataset.name to one of "
                        f"{', '.join(TOY_DENSITIES)}")
    return sampler


def load_toy2d(name: str, n_train: int = 50000, n_test: int = 10000, seed: int = 0,
               box: tuple[float, float] = (-4.5, 4.5)) -> InMemoryData:
    """Sample a 2-D toy data set.

    Args:
        name: a key of :data:`TOY_DENSITIES`.
        n_train / n_test: number of points in each split.
        seed: seeds the train generator; the test set comes from a separate generator
            (seed + 2**32) so it does not depend on ``n_train``.
        box: the square ``[low, high]^2`` samplers start from and clamp to (a list is
            accepted); also ``value_range``.

    Returns:
        InMemoryData with train ``(n_train, 2)`` and test ``(n_test, 2)`` float32 points,
        no labels.
    """
    sampler = _check_name(name)
    box = as_range(box, "dataset.box")
    if int(n_train) < 1 or int(n_test) < 0:
        raise UserError(f"toy2d needs n_train >= 1 and n_test >= 0, got {n_train} and "
                        f"{n_test}; fix: set dataset.n_train / dataset.n_test")
    train = sampler(int(n_train), torch.Generator().manual_seed(int(seed)))
    test = sampler(int(n_test), torch.Generator().manual_seed(int(seed) + 2**32))
    return InMemoryData(name=name, train=train.float().contiguous(),
                        test=test.float().contiguous(), value_range=box, box=box)
