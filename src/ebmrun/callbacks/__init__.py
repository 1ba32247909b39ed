"""The side jobs of a training run, as ordered callbacks (see :mod:`.base`)."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from ebmrun.callbacks.base import Callback, RunState
from ebmrun.callbacks.budget import TimeBudget
from ebmrun.callbacks.checkpointing import Checkpointer
from ebmrun.callbacks.diagnostics import Diagnostics
from ebmrun.callbacks.guard import DivergenceCallback
from ebmrun.callbacks.health import HealthWatch
from ebmrun.callbacks.periodic_eval import PeriodicEval
from ebmrun.callbacks.pictures import Pictures
from ebmrun.callbacks.progress import Progress
from ebmrun.callbacks.quality import QualityProbe
from ebmrun.callbacks.scalars import ScalarLogger

__all__ = ["Callback", "RunState", "default_callbacks"]


def default_callbacks(cfg: DictConfig, rewind: Callable[[RunState], None]) -> list[Callback]:
    """The order matters: the guard first (nothing of a diverged step is logged or saved),
    the time budget before anything asks whether this is the last step, the health watch
    after the scalars it reads, the checkpoint after the scalars it stores."""
    trainer = cfg.trainer
    return [DivergenceCallback(rewind), TimeBudget(trainer.max_minutes),
            ScalarLogger(trainer.log_every), HealthWatch(trainer.log_every),
            Diagnostics(trainer.log_every),
            Pictures(trainer.image_every), PeriodicEval(cfg.eval.every),
            QualityProbe(trainer.quality_every, trainer.quality_samples, trainer.quality_steps),
            Checkpointer(trainer.ckpt_every),
            Progress(trainer.progress, trainer.max_minutes, trainer.log_every)]
