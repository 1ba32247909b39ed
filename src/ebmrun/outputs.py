"""The samples contract of ``task=sample`` (and of the end of every training run).

Every model family writes the same files into the run dir:
- ``samples.pt``: float32 tensor ``(N, *item_shape)`` in the training data's value range;
- ``samples.png``: a grid of the first 100 samples (images), or a 2-D histogram (points);
- ``chain.png``: sampler snapshots, one row per snapshot (images, when the sampler ran);
- ``trajectories.png``: the paths of the first chains over the sample histogram (points);
- ``metrics.json`` and TensorBoard events with the sampler's statistics (summary scalars,
  and the per-step traces of the first batch as ``sampler/<name>`` curves over the steps).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import save_image

from ebmrun.checkpoint import atomic_torch_save, atomic_write_bytes, atomic_write_json
from ebmrun.logging import RunLogger, plots2d
from ebmrun.logging.run_logger import image_grid
from ebmrun.objectives.base import DataInfo


def png_bytes(grid: Tensor) -> bytes:
    """Encode a ``(C, H, W)`` image in [0, 1] as PNG."""
    buffer = io.BytesIO()
    save_image(grid, buffer, format="png")
    return buffer.getvalue()


def points_image(points: Tensor, box: tuple[float, float], bins: int = 200) -> Tensor:
    """A 2-D histogram of ``(N, 2)`` points as a ``(1, bins, bins)`` image (dark = dense)."""
    low, high = box
    hist = torch.histogramdd(points.float().cpu(), bins=[bins, bins],
                             range=[low, high, low, high]).hist
    hist = (hist / hist.max().clamp_min(1e-12)).sqrt()  # sqrt: keep faint modes visible
    return (1.0 - hist.T.flip(0)).unsqueeze(0)  # rows = y from top to bottom


def write_sample_files(run_dir: Path, samples: Tensor, chain: list[Tensor], info: DataInfo
                       ) -> dict[str, Tensor]:
    """Write samples.pt and the pictures atomically; returns the pictures (name -> image
    ``(C, H, W)`` in [0, 1]) for the caller to log."""
    run_dir = Path(run_dir)
    atomic_torch_save(samples, run_dir / "samples.pt")
    pictures: dict[str, Tensor] = {}
    if info.is_image:
        pictures["samples"] = image_grid(samples[:100], info.value_range, nrow=10)
        if chain:
            film = torch.stack([snap[:10].float().cpu() for snap in chain]).flatten(0, 1)
            pictures["sampling_chain"] = image_grid(film, info.value_range, nrow=10)
            atomic_write_bytes(run_dir / "chain.png", png_bytes(pictures["sampling_chain"]))
    else:
        pictures["samples"] = points_image(samples[:, :2], info.box)
        if len(chain) > 1:
            paths = plots2d.trajectory_image(
                chain, info.box, background=plots2d.histogram_values(samples, info.box))
            atomic_write_bytes(run_dir / "trajectories.png", png_bytes(paths))
            pictures["sampling_trajectories"] = paths
    atomic_write_bytes(run_dir / "samples.png", png_bytes(pictures["samples"]))
    return pictures


def write_samples(run_dir: Path, samples: Tensor, chain: list[Tensor], info: DataInfo,
                  metrics: dict, traces: dict[str, Tensor] | None = None) -> None:
    """``task=sample`` output: the sample files, metrics.json and TensorBoard events.

    ``traces``: per-step sampler diagnostics (1-D tensors, e.g. ``energy``, ``acceptance``).
    """
    run_dir = Path(run_dir)
    pictures = write_sample_files(run_dir, samples, chain, info)
    logger = RunLogger(run_dir)
    for name, picture in pictures.items():
        logger.writer.add_image(name, picture, 0)
    logger.scalars({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, 0)
    for name, trace in (traces or {}).items():
        for t, value in enumerate(trace.tolist()):
            logger.writer.add_scalar(f"sampler/{name}", value, t + 1)
    logger.close()
    atomic_write_json(metrics, run_dir / "metrics.json")
