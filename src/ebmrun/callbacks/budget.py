"""The wall-clock budget ``trainer.max_minutes``: the step that crosses it is the last."""

from __future__ import annotations

import torch

from ebmrun.callbacks.base import Callback, RunState


class TimeBudget(Callback):
    def __init__(self, minutes: float | None) -> None:
        self.seconds = None if minutes is None else 60.0 * minutes

    def check(self, run: RunState, out: dict) -> None:
        run.timed_out = bool(self.seconds) and run.elapsed() >= self.seconds

    def on_step(self, run: RunState, x: torch.Tensor, out: dict) -> None:
        if run.timed_out:
            run.total = run.step
