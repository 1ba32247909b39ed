"""The samples contract of ``task=sample`` (and of the end of every training run).

Every model family writes the same files into the run dir:
- ``samples.pt``: float32 tensor ``(N, *item_shape)`` in the training data's value range;
- ``samples.png``: a grid of the first 100 samples (images), or the samples as dots over the
  data with axes (points);
- ``chain.png``: sampler snapshots, one row per snapshot labelled with its step (images,
  when the sampler ran);
- ``trajectories.png``: the paths of the first chains over the sample histogram (points);
- ``metrics.json`` and TensorBoard events with the sampler's statistics (summary scalars,
  and the per-step traces of the first batch as ``sampler/<name>`` curves over the steps).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import Tensor

from ebmrun.checkpoint import atomic_torch_save, atomic_write_bytes, atomic_write_json
from ebmrun.logging import RunLogger, figures, plots2d
from ebmrun.logging.run_logger import image_grid
from ebmrun.objectives.base import DataInfo


def png_bytes(grid: Tensor) -> bytes:
    """Encode a ``(C, H, W)`` image in [0, 1] as PNG."""
    # Imported here, not at the top: torchvision pulls in torch._dynamo (~3 s on a 2-core
    # CPU), which every `ebmrun` start would pay, --help and one-line input errors included.
    from torchvision.utils import save_image

    buffer = io.BytesIO()
    save_image(grid, buffer, format="png")
    return buffer.getvalue()


def write_sample_files(run_dir: Path, samples: Tensor, chain: list[Tensor], info: DataInfo,
                       *, data: Tensor | None = None, snapshot_every: int | None = None,
                       steps: int | None = None) -> dict[str, Tensor]:
    """Write samples.pt and the pictures atomically; returns the pictures (name -> image
    ``(C, H, W)`` in [0, 1]) for the caller to log.

    ``data``: points ``(M, 2)`` drawn behind 2-D samples; ``snapshot_every`` and ``steps``
    (the sampler's step count, when known) label the rows of the chain film with steps.
    """
    run_dir = Path(run_dir)
    atomic_torch_save(samples, run_dir / "samples.pt")
    pictures: dict[str, Tensor] = {}
    if info.is_image:
        pictures["samples"] = image_grid(samples[:100], info.value_range, nrow=10)
        if chain:
            film = torch.stack([snap[:10].float().cpu() for snap in chain]).flatten(0, 1)
            grid = image_grid(film, info.value_range, nrow=10)
            labels = (figures.snapshot_steps(len(chain), snapshot_every, steps) if snapshot_every
                      else [f"snapshot {k}" for k in range(len(chain))])
            pictures["sampling_chain"] = figures.chain_film(grid, labels)
            atomic_write_bytes(run_dir / "chain.png", png_bytes(pictures["sampling_chain"]))
    else:
        pictures["samples"] = figures.points_figure(samples, info.box, data=data)
        if len(chain) > 1:
            paths = figures.trajectories_figure(
                chain, info.box, background=plots2d.histogram_values(samples, info.box))
            atomic_write_bytes(run_dir / "trajectories.png", png_bytes(paths))
            pictures["sampling_trajectories"] = paths
    atomic_write_bytes(run_dir / "samples.png", png_bytes(pictures["samples"]))
    return pictures


def write_samples(run_dir: Path, samples: Tensor, chain: list[Tensor], info: DataInfo,
                  metrics: dict, traces: dict[str, Tensor] | None = None, **picture_args
                  ) -> None:
    """``task=sample`` output: the sample files, metrics.json and TensorBoard events.

    ``traces``: per-step sampler diagnostics (1-D tensors, e.g. ``energy``, ``acceptance``);
    ``picture_args``: ``data``, ``snapshot_every``, ``steps`` of :func:`write_sample_files`.
    """
    run_dir = Path(run_dir)
    pictures = write_sample_files(run_dir, samples, chain, info, **picture_args)
    logger = RunLogger(run_dir)
    for name, picture in pictures.items():
        logger.image(name, picture, 0)
    traces = traces or {}
    for name, trace in traces.items():
        for t, value in enumerate(trace.tolist()):
            logger.writer.add_scalar(f"sampler/{name}", value, t + 1)
    # The chains' summary at their last step, beside the traces (``n`` and the checkpoint's
    # step are in metrics.json: not curves).
    last = max((len(t) for t in traces.values()), default=0)
    logger.scalars({k: v for k, v in metrics.items() if k.startswith("sampler/")
                    and isinstance(v, (int, float))}, last)
    logger.close()
    atomic_write_json(metrics, run_dir / "metrics.json")
