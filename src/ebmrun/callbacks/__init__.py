"""The side jobs of a training run, as ordered callbacks (see :mod:`.base`)."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from ebmrun.build import check_target_node, instantiate, target_of
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
from ebmrun.errors import UserError

__all__ = ["Callback", "RunState", "check_user_callbacks", "default_callbacks",
           "user_callbacks"]


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
            *user_callbacks(cfg),
            Checkpointer(trainer.ckpt_every),
            Progress(trainer.progress, trainer.max_minutes, trainer.log_every)]


def user_callbacks(cfg: DictConfig) -> list[Callback]:
    """The callbacks of ``trainer.callbacks`` (name -> ``{_target_: <Callback subclass>,
    <its arguments>}``), built in the order they are listed. They run after the built-in
    jobs that read the step (scalars, pictures, evaluation) and before the checkpoint, on
    every DDP rank; a resumed run builds them afresh (their state is not checkpointed)::

        ebmrun ... +trainer.callbacks.mine._target_=my_module.MyCallback
    """
    check_user_callbacks(cfg)
    return [instantiate(node, f"trainer.callbacks.{name}")
            for name, node in cfg.trainer.callbacks.items()]


def check_user_callbacks(cfg: DictConfig) -> None:
    """Pre-flight for ``trainer.callbacks``: each entry's ``_target_`` imports, is a
    :class:`Callback` subclass and gets only arguments it takes."""
    for name, node in cfg.trainer.callbacks.items():
        where = f"trainer.callbacks.{name}"
        if not isinstance(node, DictConfig):
            raise UserError(f"{where}={node!r} is not a callback node (fix: "
                            f"+{where}._target_=<module.CallbackClass>, then its arguments "
                            f"as +{where}.<key>=<value>)")
        # The usual cause of an import error here: a module of one's own, not on the path.
        target = target_of(node, where, fix="check the class path; a module of your own must "
                                            "be importable: PYTHONPATH=<its folder> ebmrun ...")
        if not (isinstance(target, type) and issubclass(target, Callback)):
            raise UserError(f"{where}._target_={node._target_} is not a Callback (fix: "
                            f"subclass ebmrun.callbacks.Callback, see its on_start / on_step)")
        check_target_node(node, where)
