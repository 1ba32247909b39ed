"""Cheap training diagnostics every ``trainer.log_every`` steps (and after the last).

- ``grad/norm/<group>``: the mean gradient norm of each parameter group before clipping
  (the runner's :class:`~ebmrun.optimization.Updater` computes it at every update);
- ``grad/clipped/<group>``: the share of the window's updates that clipping shortened
  (groups with ``grad_clip``);
- ``perf/images_per_s``: training throughput over the window (all ranks' images); at the
  last step the run's own average takes its place (``RunLogger.final_metrics``).
"""

from __future__ import annotations

import time

import torch

from ebmrun import distributed as ddp
from ebmrun.callbacks.base import Callback, RunState
from ebmrun.optimization import group_tags


class Diagnostics(Callback):
    def __init__(self, every: int) -> None:
        self.every = every
        self.norms: dict[int, list[torch.Tensor]] = {}
        self.images, self.since = 0, time.perf_counter()

    def on_start(self, run: RunState) -> None:
        self.since = time.perf_counter()

    def on_step(self, run: RunState, x: torch.Tensor, out: dict) -> None:
        self.images += x.shape[0] * ddp.world_size()
        for i, norm in run.updater.grad_norms.items():
            self.norms.setdefault(i, []).append(norm.detach())
        if not run.due(self.every):
            return
        now = time.perf_counter()
        values = {} if run.step == run.total else {
            "perf/images_per_s": self.images / max(now - self.since, 1e-9)}
        tags = group_tags(run.groups)
        for i, norms in self.norms.items():
            stacked = torch.stack(norms).float()
            values[f"grad/norm/{tags[i]}"] = float(stacked.mean())
            clip = run.updater.clips[i]
            if clip:
                values[f"grad/clipped/{tags[i]}"] = float((stacked > clip).float().mean())
        run.logger.scalars(values, run.step)
        self.on_rewind(run)

    def on_rewind(self, run: RunState) -> None:
        """Start a new window (after a log, or a rollback to an earlier step)."""
        self.norms.clear()
        self.images, self.since = 0, time.perf_counter()
