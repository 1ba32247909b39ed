"""RunLogger: everything a run shows in TensorBoard goes through here.

Events are written straight into the run dir, so ``tensorboard --logdir outputs`` lists
every run (and every job of a sweep) side by side under its path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid


def image_grid(images: Tensor, value_range: tuple[float, float], nrow: int = 8) -> Tensor:
    """``(N, C, H, W)`` images in ``value_range`` -> one ``(3|1, H', W')`` grid in [0, 1]."""
    low, high = value_range
    images = ((images.detach().float().cpu() - low) / (high - low)).clamp_(0, 1)
    return make_grid(images, nrow=nrow, padding=2, pad_value=0.5)


class RunLogger:
    """Scalars, image grids, histograms, text and hparams for one run.

    Args:
        log_dir: the run dir.
        purge_step: when resuming from step ``s``, events at steps >= ``s`` written by the
            interrupted process are discarded, so curves continue without duplicates.
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step,
                                    flush_secs=30)

    def scalars(self, values: Mapping[str, float | Tensor], step: int, prefix: str = "") -> None:
        for name, value in values.items():
            value = float(value.detach()) if isinstance(value, Tensor) else float(value)
            self.writer.add_scalar(f"{prefix}{name}", value, step)

    def images(self, name: str, images: Tensor, step: int, value_range: tuple[float, float],
               nrow: int = 8) -> None:
        self.writer.add_image(name, image_grid(images, value_range, nrow), step)

    def histogram(self, name: str, values: Tensor, step: int) -> None:
        values = values.detach().float().cpu()
        if values.numel() and torch.isfinite(values).all():
            self.writer.add_histogram(name, values, step)

    def text(self, name: str, text: str, step: int = 0) -> None:
        # Markdown: indent by four spaces so YAML shows as a code block.
        self.writer.add_text(name, "    " + text.replace("\n", "\n    "), step)

    def hparams(self, hparams: Mapping[str, float | int | str | bool],
                metrics: Mapping[str, float]) -> None:
        """Log to the HParams tab; the events go into this run's own dir. Only numeric
        ``metrics`` are logged (a label such as ``eval/samples/evaluator`` is not a metric)."""
        numeric = {k: v for k, v in metrics.items() if not isinstance(v, str)}
        self.writer.add_hparams(dict(hparams), numeric, run_name=".")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
