"""Say where things are: the run dir at the start and the end of a run, the sweep dir of
``-m``, and the commands that read them (TensorBoard, ``ebmrun-report``).

Single runs are announced by :mod:`ebmrun.cli`; sweeps by :class:`SweepDirs`, a Hydra
callback (``hydra.callbacks`` in conf/config.yaml), since only Hydra knows the sweep dir.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def shown(path: str | os.PathLike) -> str:
    """``path`` relative to the working dir when it lies below it (shorter to copy)."""
    absolute = Path(path).absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def run_started(run_dir: Path, task: str, multirun: bool) -> None:
    print(f"ebmrun: {'job' if multirun else task} run dir: {shown(run_dir)}", flush=True)


def run_ended(run_dir: Path) -> None:
    print(f"ebmrun: done; outputs in {shown(run_dir)}\n"
          f"  tensorboard --logdir {shown(run_dir)}", flush=True)


class SweepDirs(Callback):
    """Prints the sweep dir when ``-m`` starts and, with what to run next, when it ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        print(f"ebmrun: sweep dir: {shown(config.hydra.sweep.dir)}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        where = shown(config.hydra.sweep.dir)
        print(f"ebmrun: sweep done; jobs in {where}\n"
              f"  ebmrun-report {where}\n"
              f"  tensorboard --logdir {where}", flush=True)
