"""Helpers several objectives share: one home each."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebmrun.samplers.base import SampleResult, Sampler

BINARIZE_TEST_SEED = 20160601  # the fixed draw of the binarised test split (VAE, RBM)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run pictures in eval mode (BatchNorm running stats, as ``task=sample`` sees them)
    and leave the module in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def with_box(sampler: Sampler, box: tuple[float, float] | None) -> Sampler:
    """A shallow copy of ``sampler`` whose box constraint is ``box``, applied also to any
    sampler it holds as an attribute (e.g. replica exchange's inner move)."""
    clone = copy.copy(sampler)
    clone.box = box
    for name, value in vars(sampler).items():
        if isinstance(value, Sampler):
            setattr(clone, name, with_box(value, box))
    return clone


def interleave_rows(inputs: Tensor, recon: Tensor, row: int = 8) -> Tensor:
    """``(N, ...)`` inputs and reconstructions -> ``(2N', ...)`` (N' = N rounded down to a
    multiple of ``row``): a row of inputs, then their reconstructions, and so on (for a
    ``row``-wide grid)."""
    row = max(1, min(row, inputs.shape[0]))
    n = inputs.shape[0] - inputs.shape[0] % row
    pairs = torch.stack([inputs[:n].reshape(-1, row, *inputs.shape[1:]),
                         recon[:n].reshape(-1, row, *inputs.shape[1:])], dim=1)
    return pairs.flatten(0, 2)


def binarize(x: Tensor, generator: torch.Generator) -> Tensor:
    """One Bernoulli draw per pixel with the grey value ``x`` in [0, 1] as probability."""
    return torch.bernoulli(x, generator=generator)


def uniform_in_box(n: int, item_shape: Sequence[int], box: tuple[float, float],
                   device: torch.device, generator: torch.Generator) -> Tensor:
    """Uniform noise ``(n, *item_shape)`` in ``box`` (chain starts of fresh samples)."""
    low, high = box
    return torch.rand(n, *item_shape, device=device, generator=generator) * (high - low) + low


def random_shift(x: Tensor, shift: int, generator: torch.Generator, fill: float) -> Tensor:
    """Images ``(B, C, H, W)``, each translated by its own random offset in
    [−shift, shift]² (uncovered pixels set to ``fill``): same shape."""
    b, c, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), value=fill)
    di = torch.randint(0, 2 * shift + 1, (b, 1), generator=generator, device=x.device)
    dj = torch.randint(0, 2 * shift + 1, (b, 1), generator=generator, device=x.device)
    rows = (di + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dj + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


class ChainsFromNoise:
    """``generate`` and ``energy`` of families whose fresh samples are sampler chains on
    the model's energy started uniformly in the data box (deep EBM, fixed energies, score
    matching, NCE). Mixed in before :class:`Objective`; uses ``self.model``, ``self.data``,
    ``self.sampler`` and ``self.sample_steps``."""

    def chain_starts(self, n: int, generator: torch.Generator) -> Tensor:
        """Uniform starts ``(n, *item_shape)`` in the sampling box."""
        device = next(self.model.parameters()).device
        return uniform_in_box(n, self.data.item_shape, self.data.box, device, generator)

    def sampling_energy(self, x: Tensor) -> Tensor:
        """The energy the sampler sees ``(B,)`` (noise-conditional families override it)."""
        return self.model.energy(x)

    def generate(self, n: int, *, steps: int | None = None, generator: torch.Generator,
                 snapshot_every: int = 0) -> SampleResult:
        """``n`` chains from :meth:`chain_starts`, ``steps`` (default ``sample_steps``)
        steps of the ``sampler`` group."""
        steps = self.sample_steps if steps is None else steps
        return self.sampler.sample(self.sampling_energy, self.chain_starts(n, generator),
                                   steps=steps, generator=generator,
                                   snapshot_every=snapshot_every)

    def energy(self, x: Tensor) -> Tensor:
        """The model's energy ``(B,)``."""
        return self.model.energy(x)
