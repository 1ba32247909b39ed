"""The values behind 2-D pictures, computed with torch: densities and histograms on a pixel
grid over the square box ``[low, high]²`` (x₀ left to right, x₁ bottom to top, like a plot),
scaled to [0, 1]. :mod:`ebmrun.logging.figures` draws them with axes, titles and a colour bar.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Box = tuple[float, float]


def grid_points(box: Box, res: int) -> Tensor:
    """Pixel centres ``(res·res, 2)`` in image order (row-major, top row = largest x₁)."""
    low, high = box
    step = (high - low) / res
    coords = low + step * (torch.arange(res) + 0.5)
    ys, xs = torch.meshgrid(coords.flip(0), coords, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], 1)


@torch.no_grad()
def density_values(energy_fn: Callable[[Tensor], Tensor], box: Box, *, res: int = 128,
                   temperature: float = 1.0, item_shape: Sequence[int] = (2,),
                   device: torch.device | str = "cpu", chunk: int = 8192) -> Tensor:
    """exp(−E(x)/T) on the pixel grid, scaled to a maximum of 1: ``(res, res)``.

    Items with more than two values are evaluated at (x₀, x₁, 0, …, 0).
    """
    points = grid_points(box, res)
    flat = torch.zeros(len(points), int(torch.tensor(item_shape).prod()))
    flat[:, :2] = points
    items = flat.reshape(len(points), *item_shape)
    energy = torch.cat([energy_fn(part.to(device)).float().cpu() for part in items.split(chunk)])
    log_p = -(energy - energy[torch.isfinite(energy)].min()) / temperature
    density = torch.nan_to_num(log_p.exp(), nan=0.0)
    return (density / density.max().clamp_min(1e-30)).reshape(res, res)


def _blur(image: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of a ``(H, W)`` image (sigma in pixels)."""
    if sigma <= 0:
        return image
    radius = max(int(3 * sigma), 1)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = F.conv2d(image[None, None], kernel.view(1, 1, 1, -1), padding=(0, radius))
    return F.conv2d(out, kernel.view(1, 1, -1, 1), padding=(radius, 0))[0, 0]


def histogram_values(points: Tensor, box: Box, *, res: int = 128, blur: float = 1.0) -> Tensor:
    """2-D histogram of points ``(N, ≥2)`` (first two coordinates), lightly blurred so a
    few thousand samples read as a density, scaled to a maximum of 1: ``(res, res)``."""
    low, high = box
    pts = points[:, :2].detach().float().cpu()
    pts = pts[torch.isfinite(pts).all(1)]
    hist = torch.histogramdd(pts, bins=[res, res], range=[low, high, low, high]).hist
    image = _blur(hist.T.flip(0), blur)  # rows = x₁ from top to bottom
    return image / image.max().clamp_min(1e-12)


def in_value_range(image: Tensor, value_range: tuple[float, float]) -> Tensor:
    """An RGB image in [0, 1] mapped into ``value_range`` as a batch ``(1, 3, H, W)``.

    Objective ``visuals`` are image batches in the data's value range (the logger maps that
    range back to [0, 1]); a 2-D dataset's range is its box, e.g. [-4.5, 4.5].
    """
    low, high = value_range
    return (image * (high - low) + low)[None]
