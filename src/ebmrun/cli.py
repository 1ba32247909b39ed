"""The ``ebmrun`` console script.

``ebmrun [overrides...]`` composes ``conf/`` with Hydra and runs ``task`` (train | sample | eval).
Before Hydra creates any run dir, the pre-flight (:mod:`ebmrun.preflight`) composes the same
overrides and checks them, so a typo, a wrong type, an unknown option or a bad checkpoint is
reported as one line on stderr with exit code 2 -- no traceback, no half-made run dir.
"""

from __future__ import annotations

import math
import secrets
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ebmrun import announce, distributed, sweeps
from ebmrun.build import validate_config
from ebmrun.checkpoint import CKPT_NAME, atomic_write_bytes, load_checkpoint
from ebmrun.config import CONFIG_DIR, merge_overrides, register_configs
from ebmrun.errors import UserError
from ebmrun.evaluation import eval_task
from ebmrun.lock import RunDirInUse, RunLock
from ebmrun.preflight import (CHECKPOINT_TASKS, needs_checkpoint, needs_ckpt_message,
                              one_line, preflight, with_saved_model)
from ebmrun.run import train
from ebmrun.sampling import sample

__all__ = ["CONFIG_DIR", "TASKS", "main", "preflight"]

register_configs()
# A short random suffix for run dirs: two jobs started in the same second never share one.
# use_cache=True: resolved once per config, so every reader of hydra.run.dir agrees.
OmegaConf.register_new_resolver("ebmrun_unique", lambda: secrets.token_hex(3), use_cache=True,
                                replace=True)

# Flags after which Hydra only prints information (no run): skip the pre-flight.
INFO_FLAGS = {"-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info",
              "--shell-completion", "-sc"}


def _run_train(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    ckpt = None
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume)
        cfg = merge_overrides(ckpt["config"], cfg, overrides)
    validate_config(cfg)
    return train(cfg, run_dir, resume_ckpt=ckpt)  # writes config.yaml once resumable


def _from_checkpoint(task: Callable[[DictConfig, Path, dict | None], dict]
                     ) -> Callable[[DictConfig, Path, list[str]], dict]:
    """A task that works on a trained model (``ckpt=``; the checkpoint's config plus the
    user's overrides), or on a model that needs no training (built from the config)."""

    def run(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
        ckpt = None
        if cfg.ckpt:
            ckpt = load_checkpoint(cfg.ckpt)
            cfg = merge_overrides(ckpt["config"], cfg, overrides)
        validate_config(cfg)
        if ckpt is None and needs_checkpoint(cfg):
            raise UserError(needs_ckpt_message(cfg.task))
        atomic_write_bytes(run_dir / "config.yaml", OmegaConf.to_yaml(cfg).encode())
        return task(cfg, run_dir, ckpt)

    return run


TASKS: dict[str, Callable[[DictConfig, Path, list[str]], dict]] = {
    "train": _run_train,
    "sample": _from_checkpoint(sample),
    "eval": _from_checkpoint(eval_task)}
assert set(TASKS) == {"train", *CHECKPOINT_TASKS}


def _cleanup_failed_run_dir(run_dir: Path, resumed: bool) -> None:
    """Remove a run dir this invocation created if it holds no checkpoint (nothing to keep)."""
    if resumed or not run_dir.is_dir() or (run_dir / CKPT_NAME).exists():
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in list(run_dir.parents)[:3]:  # <model>-<dataset>/, <task>/, outputs/ if empty
        try:
            parent.rmdir()
        except OSError:
            break


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def hydra_entry(cfg: DictConfig) -> float | None:
    """The Hydra task function: runs one job, returns the objective metric for sweepers."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    task, overrides = TASKS[cfg.task], list(hydra_cfg.overrides.task)
    # One writer per run dir (train writes checkpoints; DDP: rank 0 writes for all).
    lock = RunLock(run_dir) if cfg.task == "train" and distributed.is_main() else None
    try:
        if lock is not None:
            lock.acquire()
        if distributed.is_main():
            announce.run_started(run_dir, cfg.task, multirun)
        if multirun and cfg.sweep.resume:  # skip finished jobs, continue interrupted ones
            metrics = sweeps.run_job(cfg, run_dir, lambda: task(cfg, run_dir, overrides))
        else:
            metrics = task(cfg, run_dir, overrides)
    except UserError as exc:
        if lock is not None:
            lock.release()
        if distributed.is_main():
            print(f"ebmrun: error: {one_line(exc)}", file=sys.stderr)
        if multirun:  # record the failure (not in a dir another process holds), go on
            if not isinstance(exc, RunDirInUse):
                atomic_write_bytes(run_dir / "error.txt", (one_line(exc) + "\n").encode())
            return None  # sweepers record a failed trial (Optuna: hydra.sweeper.max_failure_rate)
        if distributed.is_main() and not isinstance(exc, RunDirInUse):
            _cleanup_failed_run_dir(run_dir, resumed=bool(cfg.resume))
        sys.exit(UserError.exit_code)
    finally:
        if lock is not None:
            lock.release()
    if distributed.is_main() and not multirun:
        announce.run_ended(run_dir)
    return objective_value(metrics)


def objective_value(metrics: dict) -> float | None:
    """The value a sweeper optimises: ``metrics["objective"]["value"]``; None if absent or
    NaN (Optuna takes None as a failed trial but stops the whole search on a NaN)."""
    objective = metrics.get("objective")
    value = None if objective is None else float(objective["value"])
    return None if value is None or math.isnan(value) else value


def main(argv: list[str] | None = None) -> None:
    """Console entry point: pre-flight checks, then Hydra."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if not INFO_FLAGS.intersection(argv):
        try:
            argv, loaded = with_saved_model(argv)
            extra = preflight(argv, loaded)
            extra += distributed.start(CONFIG_DIR, [*argv, *extra])  # torchrun: join, share dir
        except UserError as exc:
            if distributed.launch_rank() == 0:  # torchrun: every rank refuses, one says so
                print(f"ebmrun: error: {one_line(exc)}", file=sys.stderr)
            sys.exit(UserError.exit_code)
    sys.argv = [sys.argv[0] if sys.argv else "ebmrun", *argv, *extra]
    try:
        hydra_entry()
    finally:
        distributed.stop()


if __name__ == "__main__":
    main()
