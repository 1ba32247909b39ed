"""Warn, once per run, when the training scalars show a run that has failed for good.

Every ``trainer.log_every`` steps (just after :class:`~ebmrun.callbacks.scalars.ScalarLogger`
has averaged the window into ``run.scalars``) the objective's
:meth:`~ebmrun.objectives.base.Objective.health_warning` reads those averages. A message
is printed as ``ebmrun: warning: step N: ...`` (through tqdm, so a progress bar is not
torn), written to TensorBoard's Text tab under ``warnings`` and kept for the run's
``metrics.json`` (``warnings``, which ``ebmrun-report`` shows per sweep job). The run goes
on: the warning tells the user early, it does not decide for them.
"""

from __future__ import annotations

import sys

import torch
from tqdm import tqdm

from ebmrun import distributed as ddp
from ebmrun.callbacks.base import Callback, RunState


class HealthWatch(Callback):
    def __init__(self, every: int) -> None:
        self.every = every

    def on_step(self, run: RunState, x: torch.Tensor, out: dict) -> None:
        # Once per run: ``run.warnings`` also holds a resumed run's earlier warning.
        if run.warnings or not run.due(self.every) or not run.scalars:
            return
        message = run.parts.objective.health_warning(run.scalars)
        if message is None:
            return
        line = f"step {run.step}: {message}"
        run.warnings.append(line)
        if ddp.is_main():
            tqdm.write(f"ebmrun: warning: {line}", file=sys.stderr)
        run.logger.text("warnings", line, run.step, code=False)
