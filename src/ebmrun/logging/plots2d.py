"""Pictures of 2-D densities, samples and chains, drawn with torch alone (no matplotlib).

Every function returns an RGB image ``(3, H, W)`` in [0, 1] over the square box
``[low, high]²``: x₀ runs left to right, x₁ bottom to top (like a plot). Densities and
histograms share one colormap (viridis: dark = empty, yellow = dense), so the learned
density, the target and the samples can be compared side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Box = tuple[float, float]

# Viridis at 0, .25, .5, .75, 1 — interpolated linearly in between.
_VIRIDIS = torch.tensor([[0.267, 0.005, 0.329], [0.229, 0.322, 0.546], [0.128, 0.567, 0.551],
                         [0.369, 0.789, 0.383], [0.993, 0.906, 0.144]])
# Distinct line colours for chain trajectories (Tableau 10).
_PALETTE = torch.tensor([[0.12, 0.47, 0.71], [1.0, 0.50, 0.05], [0.17, 0.63, 0.17],
                         [0.84, 0.15, 0.16], [0.58, 0.40, 0.74], [0.55, 0.34, 0.29],
                         [0.89, 0.47, 0.76], [0.50, 0.50, 0.50], [0.74, 0.74, 0.13],
                         [0.09, 0.75, 0.81]])


def colorize(values: Tensor) -> Tensor:
    """Map ``(H, W)`` values in [0, 1] to ``(3, H, W)`` viridis colours."""
    v = values.float().cpu().clamp(0, 1) * (len(_VIRIDIS) - 1)
    low = v.floor().long().clamp(max=len(_VIRIDIS) - 2)
    frac = (v - low)[..., None]
    rgb = _VIRIDIS[low] * (1 - frac) + _VIRIDIS[low + 1] * frac  # (H, W, 3)
    return rgb.permute(2, 0, 1).contiguous()


def grid_points(box: Box, res: int) -> Tensor:
    """Pixel centres ``(res·res, 2)`` in image order (row-major, top row = largest x₁)."""
    low, high = box
    step = (high - low) / res
    coords = low + step * (torch.arange(res) + 0.5)
    ys, xs = torch.meshgrid(coords.flip(0), coords, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], 1)


def to_pixels(points: Tensor, box: Box, res: int) -> tuple[Tensor, Tensor]:
    """Row and column indices ``(N,)`` of points ``(N, ≥2)`` (clamped to the image)."""
    low, high = box
    scaled = (points[:, :2].float().cpu() - low) / (high - low) * res
    col = scaled[:, 0].floor().long().clamp(0, res - 1)
    row = (res - 1 - scaled[:, 1].floor().long()).clamp(0, res - 1)
    return row, col


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


def density_image(energy_fn: Callable[[Tensor], Tensor], box: Box, **kwargs) -> Tensor:
    """Heat map of exp(−E(x)/T) as ``(3, res, res)`` (arguments of :func:`density_values`)."""
    return colorize(density_values(energy_fn, box, **kwargs))


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


def histogram_image(points: Tensor, box: Box, *, res: int = 128, blur: float = 1.0) -> Tensor:
    """Histogram heat map ``(3, res, res)`` of points ``(N, ≥2)``."""
    return colorize(histogram_values(points, box, res=res, blur=blur))


def trajectory_image(chain: Sequence[Tensor], box: Box, *, res: int = 256, n_chains: int = 6,
                     background: Tensor | None = None, points_per_segment: int = 24) -> Tensor:
    """Paths of the first ``n_chains`` chains through snapshots ``[(B, ≥2), ...]``.

    Each chain gets its own colour; its start is marked with a black-edged white square,
    its end with a black one. ``background`` ``(res, res)`` values in [0, 1] (e.g. the
    density or the samples' histogram) are drawn beneath in light grey.
    """
    image = torch.ones(3, res, res)
    if background is not None:
        image = image - 0.35 * F.interpolate(background[None, None].float(), size=(res, res),
                                             mode="bilinear")[0]
    path = torch.stack([snap[:n_chains, :2].detach().float().cpu() for snap in chain])  # (S,C,2)
    t = torch.linspace(0, 1, points_per_segment)[None, :, None, None]
    # Points along every segment between consecutive snapshots: (S-1, P, C, 2).
    dense = path[:-1, None] * (1 - t) + path[1:, None] * t if len(path) > 1 else path[:, None]
    for c in range(path.shape[1]):
        row, col = to_pixels(dense[:, :, c].reshape(-1, 2), box, res)
        image[:, row, col] = _PALETTE[c % len(_PALETTE)][:, None]
        for snap, inner in ((path[0, c], 1.0), (path[-1, c], 0.0)):
            r, q = (int(i) for i in to_pixels(snap[None], box, res))
            image[:, max(r - 2, 0):r + 3, max(q - 2, 0):q + 3] = 0.0
            image[:, max(r - 1, 0):r + 2, max(q - 1, 0):q + 2] = inner
    return image


def side_by_side(panels: Sequence[Tensor], pad: int = 4, pad_value: float = 1.0) -> Tensor:
    """Concatenate ``(3, H, W_i)`` panels left to right with ``pad`` pixels between them."""
    height = max(p.shape[1] for p in panels)
    pieces: list[Tensor] = []
    for i, panel in enumerate(panels):
        if panel.shape[1] != height:  # e.g. a 256-px trajectory beside 128-px maps
            panel = F.interpolate(panel[None], size=(height, height * panel.shape[2]
                                                     // panel.shape[1]), mode="nearest")[0]
        if i:
            pieces.append(torch.full((3, height, pad), pad_value))
        pieces.append(panel)
    return torch.cat(pieces, dim=2)


def in_value_range(image: Tensor, value_range: tuple[float, float]) -> Tensor:
    """An RGB image in [0, 1] mapped into ``value_range`` as a batch ``(1, 3, H, W)``.

    Objective ``visuals`` are image batches in the data's value range (the logger maps that
    range back to [0, 1]); a 2-D dataset's range is its box, e.g. [-4.5, 4.5].
    """
    low, high = value_range
    return (image * (high - low) + low)[None]
