"""Sweeps: resumable multiruns, and clear errors for missing launcher/sweeper plugins.

A multirun job writes into ``<hydra.sweep.dir>/<num>_<swept overrides>`` (see
:mod:`ebmrun.job_names`); for the same command the job numbers and names are the same every
time (``sweep.resume`` and ``hparams_search`` are left out of the name), so a sweep can be
re-run into its own dir:

    ebmrun -m hydra.sweep.dir=outputs/multirun/lr sweep.resume=true optim.lr=1e-4,3e-4 seed=0,1

With ``sweep.resume=true`` each job looks at its dir first: ``metrics.json`` there means it
finished (skipped; its objective is returned to the sweeper again); a ``last.pt`` without
``metrics.json`` means it was interrupted (training continues from the checkpoint: same
steps, data order and random streams as if it had not stopped); anything else (also a
failed job's ``error.txt``) runs from the start. The same switch makes jobs
requeued by SLURM (``hydra.launcher.max_num_timeout``) continue instead of restarting.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from ebmrun.build import validate_config
from ebmrun.checkpoint import CKPT_NAME, load_checkpoint
from ebmrun.errors import UserError
from ebmrun.run import train

FINISHED = "metrics.json"
FAILED = "error.txt"

# Config choices that come from Hydra plugins: (option, module that provides it, extra).
PLUGINS: list[tuple[str, str, str]] = [
    ("hydra/launcher=joblib", "hydra_plugins.hydra_joblib_launcher", "sweeps"),
    ("hydra/launcher=submitit_local", "hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("hydra/launcher=submitit_slurm", "hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("hydra/launcher=slurm", "hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("hydra/sweeper=optuna", "hydra_plugins.hydra_optuna_sweeper", "sweeps"),
    ("hparams_search=", "hydra_plugins.hydra_optuna_sweeper", "sweeps"),
]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package (hydra_plugins) is missing
        return False


def check_plugins(overrides: list[str]) -> None:
    """Raise :class:`UserError` naming the pip extra when an override picks a launcher or
    sweeper whose Hydra plugin is not installed (Hydra would only say "not found")."""
    for override in overrides:
        for option, module, extra in PLUGINS:
            if override.startswith(option) and not _installed(module):
                raise UserError(f"{override} needs the Hydra plugin {module.split('.')[-1]}, "
                                f"which is not installed (fix: pip install 'ebmrun[{extra}]')")


def check_resume(resume: bool, multirun: bool, overrides: list[str]) -> None:
    """``sweep.resume=true`` is for grid multiruns into a named sweep dir."""
    if not resume:
        return
    if not multirun:
        raise UserError("sweep.resume=true resumes a multirun (fix: add -m, or continue a "
                        "single run with resume=<run dir>)")
    if any(o.startswith(("hparams_search=", "hydra/sweeper=")) for o in overrides):
        # Trials are numbered, not named by their parameters: a new trial would be taken
        # for the old one in the same dir.
        raise UserError("sweep.resume=true is for grid sweeps; an Optuna search continues "
                        "from its study (fix: drop sweep.resume and set hydra.sweeper.storage="
                        "sqlite:///<abs path>.db and a new hydra.sweep.dir)")
    if not any(o.startswith("hydra.sweep.dir=") for o in overrides):
        raise UserError("sweep.resume=true needs the sweep's dir (fix: add "
                        "hydra.sweep.dir=<the multirun dir to resume, e.g. "
                        "outputs/multirun/2026-01-01_12-00-00_ab12cd>)")


def run_job(cfg: DictConfig, job_dir: Path, run: Callable[[], dict]) -> dict:
    """One job of a resumed sweep (``sweep.resume=true``); returns its metrics.

    Finished before (``metrics.json``): nothing runs, its metrics are returned again.
    Interrupted (``last.pt``, task=train): training continues from the checkpoint with this
    job's config (the same command composed it). Otherwise ``run()`` runs the job afresh.
    """
    finished = job_dir / FINISHED
    if finished.is_file():  # written atomically at the very end of a job: complete
        print(f"ebmrun: {job_dir.name}: finished before, skipped")
        return json.loads(finished.read_text())
    (job_dir / FAILED).unlink(missing_ok=True)  # a failed job runs again
    if cfg.task != "train" or cfg.resume or not (job_dir / CKPT_NAME).is_file():
        return run()
    ckpt = load_checkpoint(job_dir)
    validate_config(cfg)
    print(f"ebmrun: {job_dir.name}: resuming from step {ckpt['step']} ({CKPT_NAME})")
    return train(cfg, job_dir, resume_ckpt=ckpt)
