"""Pictures with axes, titles, colour bars and labels, drawn with matplotlib (Agg, no display).

Every function returns an RGB image ``(3, H, W)`` in [0, 1] (for ``RunLogger.image``, PNG
files, or an objective's ``visuals`` via :func:`ebmrun.logging.plots2d.in_value_range`).
2-D pictures show the square box ``[low, high]²`` with x₀ to the right and x₁ up; densities
and histograms share viridis (dark = empty, yellow = dense) and one colour bar.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ebmrun.logging.plots2d import histogram_values

Box = tuple[float, float]
PANEL_INCHES = 3.4  # one 2-D panel: ~340 px at DPI, legible at 100 % zoom
DPI = 100


def _pyplot():
    """matplotlib's pyplot on the Agg backend (imported on first use: the CLI starts fast)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    # TensorBoard shows pictures in ~300-500 px cards: text larger than matplotlib's default.
    plt.rcParams.update({"font.size": 12, "legend.fontsize": 11, "axes.titlesize": 13})

    return plt


def to_image(fig) -> Tensor:
    """Render a matplotlib figure to ``(3, H, W)`` float in [0, 1] and close it."""
    plt = _pyplot()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba(), dtype=np.uint8)
    plt.close(fig)
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255.0


def _points(x: Tensor, limit: int) -> np.ndarray:
    pts = x[:limit, :2].detach().float().cpu()
    return pts[torch.isfinite(pts).all(1)].numpy()


def _square_axes(ax, box: Box, title: str) -> None:
    ax.set_xlim(*box)
    ax.set_ylim(*box)
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.set_xlabel("x₀")
    ax.set_ylabel("x₁")


def points_figure(samples: Tensor, box: Box, *, data: Tensor | None = None,
                  title: str = "samples", limit: int = 5000) -> Tensor:
    """Samples ``(N, ≥2)`` as dots over the data ``(M, ≥2)`` in light grey (when given)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=DPI, layout="constrained")
    if data is not None:
        d = _points(data, limit)
        ax.scatter(d[:, 0], d[:, 1], s=4, c="0.75", alpha=0.5, linewidths=0, label="data")
    s = _points(samples, limit)
    ax.scatter(s[:, 0], s[:, 1], s=6, c="tab:red", alpha=0.7, linewidths=0,
               label=f"samples ({len(samples)})")
    _square_axes(ax, box, title)
    ax.legend(loc="upper right", markerscale=2)
    return to_image(fig)


@dataclass
class Panel:
    """One 2-D panel: ``values`` ``(res, res)`` in [0, 1] drawn as a heat map (rows from the
    top, i.e. :func:`ebmrun.logging.plots2d.density_values` / ``histogram_values``), or
    ``points`` ``(N, ≥2)`` drawn as a histogram; ``overlay`` points ``(K, ≥2)`` as dots."""

    title: str
    values: Tensor | None = None
    points: Tensor | None = None
    overlay: Tensor | None = None


def panels_2d(panels: Sequence[Panel], box: Box, *, bins: int = 96) -> Tensor:
    """Panels left to right with titles, axes and one colour bar (scaled density)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(PANEL_INCHES * len(panels) + 0.8,
                                                       PANEL_INCHES + 0.3),
                             dpi=DPI, layout="constrained", squeeze=False)
    low, high = box
    image = None
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel.values is not None:
            values = panel.values.detach().float().cpu().numpy()
        elif panel.points is not None:  # lightly blurred: a few thousand points read as a density
            values = histogram_values(panel.points, box, res=bins).numpy()
        else:
            values = np.zeros((bins, bins))
        image = ax.imshow(values, extent=(low, high, low, high), cmap="viridis", vmin=0,
                          vmax=1, interpolation="nearest")
        if panel.overlay is not None:
            o = _points(panel.overlay, 500)
            ax.scatter(o[:, 0], o[:, 1], s=5, c="white", edgecolors="black", linewidths=0.3)
        _square_axes(ax, box, panel.title)
    fig.colorbar(image, ax=list(axes[0]), shrink=0.85, label="density / max")
    return to_image(fig)


def trajectories_figure(chain: Sequence[Tensor], box: Box, *, background: Tensor | None = None,
                        n_chains: int = 6, title: str = "sampler paths") -> Tensor:
    """Paths of the first ``n_chains`` chains through snapshots ``[(B, ≥2), ...]`` (start:
    white square, end: black dot) over ``background`` values ``(res, res)`` in [0, 1]."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=DPI, layout="constrained")
    if background is not None:
        ax.imshow(background.detach().float().cpu().numpy(), extent=(*box, *box),
                  cmap="Greys", vmin=0, vmax=1.5, interpolation="bilinear")
    path = torch.stack([snap[:n_chains, :2].detach().float().cpu() for snap in chain]).numpy()
    for c in range(path.shape[1]):
        line, = ax.plot(path[:, c, 0], path[:, c, 1], lw=1.2)
        ax.plot(*path[0, c], "s", ms=6, mfc="white", mec=line.get_color())
        ax.plot(*path[-1, c], "o", ms=5, color="black")
    _square_axes(ax, box, f"{title} ({len(chain) - 1} steps)")
    return to_image(fig)


def snapshot_steps(n_snapshots: int, every: int, total: int | None = None) -> list[str]:
    """Row labels of a chain film: snapshots are taken at step 0, every ``every`` steps
    and at the last step (``total``, or "end" when unknown)."""
    labels = [f"step {k * every}" for k in range(n_snapshots - 1)]
    if n_snapshots > 1:
        labels.append(f"step {total}" if total is not None else "end")
    return labels[:n_snapshots] if n_snapshots else []


def chain_film(grid: Tensor, row_labels: Sequence[str], *, title: str = "sampling chain"
               ) -> Tensor:
    """A film grid ``(C, H, W)`` in [0, 1] (one row per snapshot, as ``image_grid`` makes
    it) with each row labelled (e.g. by :func:`snapshot_steps`)."""
    plt = _pyplot()
    img = grid.detach().float().cpu().permute(1, 2, 0).numpy()
    height, width = img.shape[:2]
    scale = max(1.0, min(3.0, 900 / height, 700 / width))  # digits ~30-90 px on screen
    fig = plt.figure(figsize=((width * scale + 110) / DPI, (height * scale + 50) / DPI),
                     dpi=DPI)
    ax = fig.add_axes((90 / (width * scale + 110), 10 / (height * scale + 50),
                       width * scale / (width * scale + 110),
                       height * scale / (height * scale + 50)))
    ax.imshow(img if img.shape[2] == 3 else img[..., 0], cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    rows = len(row_labels)
    ax.set_yticks([(i + 0.5) * height / max(rows, 1) for i in range(rows)], list(row_labels),
                  fontsize=11)
    ax.set_xticks([])
    ax.set_title(title)
    return to_image(fig)


@dataclass
class Series:
    """One curve: points ``(xs[i], ys[i])``; ``markers`` marks every point."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    markers: bool = False


def line_plot(series: Sequence[Series], *, log_x: bool = False, log_y: bool = False,
              x_label: str = "", y_label: str = "", width: int = 640, height: int = 420
              ) -> Tensor:
    """Curves with axes, grid and legend as ``(3, height, width)``; non-finite points, and
    non-positive ones on a log axis, are dropped."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    for s in series:
        pts = np.array([(x, y) for x, y in zip(s.xs, s.ys, strict=True)
                        if np.isfinite(x) and np.isfinite(y) and (x > 0 or not log_x)
                        and (y > 0 or not log_y)], dtype=float).reshape(-1, 2)
        ax.plot(pts[:, 0], pts[:, 1], marker="s" if s.markers else None, ms=4, label=s.name)
    ax.set_xscale("log" if log_x else "linear")
    ax.set_yscale("log" if log_y else "linear")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(True, which="major", alpha=0.3)
    if series:
        ax.legend()
    return to_image(fig)


def energy_histograms(energies: Mapping[str, Tensor], *, title: str = "energy", bins: int = 40
                      ) -> Tensor:
    """Overlaid histograms of energies ``name -> (B,)`` (e.g. data vs samples) on one axis:
    where the two separate, the model tells them apart."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=DPI, layout="constrained")
    values = {k: v.detach().float().cpu().flatten().numpy() for k, v in energies.items()}
    values = {k: v[np.isfinite(v)] for k, v in values.items() if np.isfinite(v).any()}
    if values:
        low = min(v.min() for v in values.values())
        high = max(v.max() for v in values.values())
        edges = np.linspace(low, high if high > low else low + 1, bins + 1)
        for name, v in values.items():
            ax.hist(v, bins=edges, alpha=0.55, label=f"{name} (mean {v.mean():.3g})")
        ax.legend()
    ax.set_xlabel(title)
    ax.set_ylabel("count")
    return to_image(fig)
