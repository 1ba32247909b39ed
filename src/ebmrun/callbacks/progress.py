"""The progress bar: steps (with an ETA) or, for a wall-clock budget alone, minutes."""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from ebmrun import distributed as ddp
from ebmrun.callbacks.base import Callback, RunState


class Progress(Callback):
    """tqdm over the step budget; with only ``trainer.max_minutes`` (no step budget) the
    bar counts minutes against that budget, so it shows a total and an ETA as well."""

    def __init__(self, enabled: bool, minutes: float | None, log_every: int) -> None:
        self.enabled, self.minutes, self.log_every = enabled, minutes, log_every
        self.bar: tqdm | None = None

    def on_start(self, run: RunState) -> None:
        self.by_minutes = math.isinf(run.total) and self.minutes is not None
        common = dict(dynamic_ncols=True, disable=not self.enabled or not ddp.is_main(),
                      desc=f"train {run.cfg.model.name}")
        if self.by_minutes:
            self.bar = tqdm(total=float(self.minutes), initial=run.elapsed() / 60, unit="min",
                            bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} min "
                                       "[{elapsed}<{remaining}{postfix}]", **common)
        else:
            self.bar = tqdm(total=None if math.isinf(run.total) else run.total,
                            initial=run.step, **common)

    def on_step(self, run: RunState, x: torch.Tensor, out: dict) -> None:
        if run.due(self.log_every):
            self.bar.set_postfix(loss=f"{run.scalars.get('loss', float('nan')):.4f}",
                                 **({"step": run.step} if self.by_minutes else {}))
        if self.by_minutes:
            self.bar.n = min(run.elapsed() / 60, self.bar.total)
            self.bar.refresh()
        else:
            self.bar.update(1)

    def on_rewind(self, run: RunState) -> None:
        if not self.by_minutes:
            self.bar.n = run.step

    def on_end(self, run: RunState) -> None:
        if self.bar is not None:
            self.bar.close()
