"""Training scalars: averaged over ``trainer.log_every`` steps, logged with the lrs."""

from __future__ import annotations

from collections import defaultdict

import torch

from ebmrun.callbacks.base import Callback, RunState
from ebmrun.optimization import group_tags


class ScalarLogger(Callback):
    """``train/<name>`` averages and ``lr/<group>`` every ``log_every`` steps (and after
    the last); the averages become ``run.scalars`` (checkpoints, metrics.json). The one
    group of single-loss families (``loss``) is the whole model: ``lr/model``."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.window: dict[str, list[float]] = defaultdict(list)

    def on_step(self, run: RunState, x: torch.Tensor, out: dict) -> None:
        for key, value in out.items():
            self.window[key].append(float(value.detach()) if torch.is_tensor(value)
                                    else float(value))
        if run.due(self.every):
            run.scalars = {k: sum(v) / len(v) for k, v in self.window.items()}
            self.window.clear()
            run.logger.scalars(run.scalars, run.step, prefix="train/")
            run.logger.scalars({f"lr/{name}": o.param_groups[0]["lr"] for name, o
                                in zip(group_tags(run.groups), run.optimizers, strict=True)},
                               run.step)

    def on_rewind(self, run: RunState) -> None:
        self.window.clear()
