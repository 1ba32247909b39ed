"""Warn, once per run, when the training scalars show a run that has failed for good.

Every ``trainer.log_every`` steps (just after :class:`~ebmrun.callbacks.scalars.ScalarLogger`
has averaged the window into ``run.scalars``) the objective's
:meth:`~ebmrun.objectives.base.Objective.health_warning` reads those averages. A message
is printed as ``ebmrun: warning: step N: ...`` (through tqdm, so a progress bar is not
torn), written to TensorBoard's Text tab under ``warnings`` and kept for the run's
``metrics.json`` (``warnings``, which ``ebmrun-report`` shows per sweep job). The run goes
on: the warning tells the user early, it does not decide for them; unless the user (or the
family's defaults) allowed ``trainer.health_restarts``: then the run sets the attempt aside
and starts afresh with another seed (:mod:`ebmrun.restarts`).
"""

from __future__ import annotations

import sys

import torch
from tqdm import tqdm

from ebmrun import distributed as ddp
from ebmrun.callbacks.base import Callback, RunState
from ebmrun.restarts import restart_clause


class HealthWatch(Callback):
    def __init__(self, every: int) -> None:
        self.every = every

    def on_step(self, run: RunState, x: torch.Tensor, out: dict) -> None:
        # Once per attempt: every earlier warning (a resumed run's too) restarted the run,
        # but the last one if it did not.
        if len(run.warnings) > run.restarts or not run.due(self.every) or not run.scalars:
            return
        message = run.parts.objective.health_warning(run.scalars)
        restart = restart_clause(run.cfg, run.restarts)
        if restart is not None and ddp.any_rank(message is not None):  # every rank restarts
            message = message or "a failure named on another rank"
            run.restart = True
        if message is None:
            return
        line = f"step {run.step}: {message}" + (f"; {restart}" if run.restart else "")
        run.warnings.append(line)
        if ddp.is_main():
            tqdm.write(f"ebmrun: warning: {line}", file=sys.stderr)
        run.logger.text("warnings", line, run.step, code=False)
