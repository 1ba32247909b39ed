"""Mirrored stride-2 convolution stacks shared by the auto-encoding models (DAE, VAE)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn


def conv_stacks(item_shape: Sequence[int], channels: Sequence[int],
                activation: Callable[[], nn.Module], family: str
                ) -> tuple[list[nn.Module], list[nn.Module], tuple[int, int, int]]:
    """Down: ``Conv2d(k4, s2, p1) + activation`` per entry of ``channels``, (C, H, W) →
    (channels[-1], H/2^k, W/2^k); up: the mirror image with transposed convs back to C,
    with no activation after the last layer. Returns (down layers, up layers, bottleneck
    shape). ``family`` names the model in the one-line errors."""
    if len(item_shape) != 3:
        raise ValueError(f"{family} arch=conv needs (C, H, W) images, got item shape "
                         f"{list(item_shape)} (fix: model.net.arch=mlp)")
    c, h, w = item_shape
    k = len(channels)
    if h % 2 ** k or w % 2 ** k:
        raise ValueError(f"{family} arch=conv needs image sides divisible by {2 ** k}, got "
                         f"{h}x{w} (fix: fewer model.net.conv_channels)")
    down: list[nn.Module] = []
    for c_in, c_out in zip([c, *channels[:-1]], channels):
        down += [nn.Conv2d(c_in, c_out, 4, 2, 1), activation()]
    up: list[nn.Module] = []
    widths = [*channels[::-1], c]
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        up += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), activation()]
    up.pop()  # the output layer is linear (the model maps it to its range)
    return down, up, (channels[-1], h // 2 ** k, w // 2 ** k)
