"""Evaluation while training: every ``eval.every`` steps (and after the last), rank 0."""

from __future__ import annotations

import torch

from ebmrun import distributed as ddp
from ebmrun.callbacks.base import Callback, RunState
from ebmrun.ema import maybe_applied
from ebmrun.evaluation import evaluate_model, log_report


class PeriodicEval(Callback):
    def __init__(self, every: int | None) -> None:
        self.every = every

    def on_step(self, run: RunState, x: torch.Tensor, out: dict) -> None:
        if not run.due(self.every) or not ddp.is_main():
            return
        with maybe_applied(run.ema):
            report = evaluate_model(run.cfg, run.parts.objective, run.data, run.parts.device)
        log_report(report, run.logger, run.step)
        run.last_eval = report.metrics
