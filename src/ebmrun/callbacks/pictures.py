"""Pictures in TensorBoard: the data batch, the objective's visuals and histograms."""

from __future__ import annotations

import torch

from ebmrun import distributed as ddp
from ebmrun.callbacks.base import Callback, RunState
from ebmrun.ema import maybe_applied
from ebmrun.seeds import PICTURES


class Pictures(Callback):
    """Every ``every`` steps (and after the last), on rank 0, with the EMA weights if any."""

    def __init__(self, every: int) -> None:
        self.every = every

    @torch.no_grad()
    def on_step(self, run: RunState, x: torch.Tensor, out: dict) -> None:
        if not run.due(self.every) or not ddp.is_main():
            return
        # A separate generator: pictures never change the training random stream.
        generator = torch.Generator(device=x.device).manual_seed(
            PICTURES.seed(run.cfg.seed, run.step))
        logger, value_range = run.logger, run.data.value_range
        if run.data.is_image:
            logger.images("images/data", x[:64], run.step, value_range)
        with maybe_applied(run.ema):
            visuals = run.parts.objective.visuals(generator)
        for name, images in visuals.items():
            logger.images(f"images/{name}", images, run.step, value_range)
        logger.histograms(run.parts.objective.histograms(), run.step)
        logger.flush()
