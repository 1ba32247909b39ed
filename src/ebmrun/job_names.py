"""Sweep job dirs named by what varies: ``<num>_<swept key=value,...>``.

Hydra's ``hydra.job.override_dirname`` joins *all* of a job's overrides, so the keys every
job shares come first and TensorBoard's run selector and HParams trial ids are cut before the
value that differs (``0_model=deep_ebm,optim.lr=0.0…``). The resolver ``ebmrun_swept``
keeps only the keys the sweep varies, read from the sweep's ``multirun.yaml`` (which Hydra
writes before the first job): ``-m model=deep_ebm optim.lr=1e-4,3e-4`` names its jobs
``0_optim.lr=0.0001`` and ``1_optim.lr=0.0003``. The full overrides stay in each job's
``.hydra/overrides.yaml`` and ``config.yaml``. The name is the same every time the same
command runs, so ``sweep.resume`` finds its jobs again.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def swept_keys(overrides: Iterable[str], sweeper_params: Iterable[str] = ()) -> set[str]:
    """Keys whose value differs between jobs: command-line sweeps (``a=1,2``, ``range``,
    ``choice``, ``glob``) and the sweeper's ``params``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return {o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()} \
        | set(sweeper_params)


def job_name(job_overrides: Iterable[str], keys: set[str], exclude: Iterable[str] = ()) -> str:
    """``key=value`` of the swept keys among ``job_overrides``, joined by commas."""
    skip = set(exclude)
    return ",".join(o for o in job_overrides if _key(o) in keys and _key(o) not in skip)


def _exists(job_dir: Path) -> bool:
    """Whether a job dir named the old way (all overrides) is there: kept, so sweep.resume
    still finds it. Such names can pass the file-name limit (255 bytes): then it is not."""
    try:
        return job_dir.is_dir()
    except OSError:
        return False


def swept_dirname(*, _root_: DictConfig) -> str:
    """OmegaConf resolver ``${ebmrun_swept:}``: the job's swept overrides (the whole
    ``override_dirname`` when the sweep's ``multirun.yaml`` is not there to say which)."""
    hydra = _root_.hydra
    fallback = hydra.job.override_dirname
    multirun = Path(hydra.sweep.dir) / "multirun.yaml"
    if not multirun.is_file() or _exists(Path(hydra.sweep.dir) / f"{hydra.job.num}_{fallback}"):
        return fallback
    sweep = OmegaConf.load(multirun).hydra
    params = OmegaConf.select(sweep, "sweeper.params") or {}
    keys = swept_keys(sweep.overrides.task, params.keys())
    exclude = hydra.job.config.override_dirname.exclude_keys
    return job_name(hydra.overrides.task, keys, exclude) or fallback


def register_resolver() -> None:
    OmegaConf.register_new_resolver("ebmrun_swept", swept_dirname, replace=True)
