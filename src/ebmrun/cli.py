"""The ``ebmrun`` console script.

``ebmrun [overrides...]`` composes ``conf/`` with Hydra and runs ``task`` (train | sample | eval).
Before Hydra creates any run dir, a pre-flight pass composes the same overrides and checks
them, so a typo, a wrong type, an unknown option or a bad checkpoint is reported as one line
on stderr with exit code 2 — no traceback, no half-made run dir.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
import hydra.utils
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ebmrun import distributed, sweeps
from ebmrun.build import validate_config
from ebmrun.checkpoint import CKPT_NAME, atomic_write_bytes, load_checkpoint
from ebmrun.config import merge_overrides, register_configs
from ebmrun.errors import UserError
from ebmrun.evaluation import eval_task
from ebmrun.run import train
from ebmrun.sampling import sample


def config_dir() -> str:
    """The config tree: inside the installed package (wheel) or the repo's top-level conf/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError("ebmrun's config tree (conf/config.yaml) is missing from the install")


CONFIG_DIR = config_dir()
register_configs()
# A short random suffix for run dirs: two jobs started in the same second never share one.
# use_cache=True: resolved once per config, so every reader of hydra.run.dir agrees.
OmegaConf.register_new_resolver("ebmrun_unique", lambda: secrets.token_hex(3), use_cache=True,
                                replace=True)

RUN_DIR_PATTERN = "outputs/{task}/{model}-{dataset}/${{now:%Y-%m-%d_%H-%M-%S}}_${{ebmrun_unique:}}"
# Flags after which Hydra only prints information (no run): skip the pre-flight.
INFO_FLAGS = {"-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info",
              "--shell-completion", "-sc"}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def hydra_error_message(exc: Exception) -> str:
    """Turn Hydra/OmegaConf composition errors into one line that names the fix."""
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and exc.options:
        group, _, option = exc.missing_cfg_file.rpartition("/")
        return (f"unknown {group or 'config'} '{option}' "
                f"(choose from: {', '.join(sorted(exc.options))})")
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    message = _one_line(cause)
    unknown = re.search(r"Key '[^']+' (?:is )?not in \S+ full_key: (\S+)", message)
    wrong_type = re.search(r"Value '(.*)' of type '\w+' could not be converted to (\w+) "
                           r"full_key: (\S+)", message)
    if wrong_type:
        value, expected, key = wrong_type.groups()
        return (f"{key}='{value}' has the wrong type: expected {expected.lower()} "
                f"(fix: {key}=<{expected.lower()}>)")
    if unknown:
        return (f"unknown key {unknown.group(1)} (fix: check its spelling; `ebmrun --cfg job` "
                f"lists every key)")
    return message


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` -> (flags, key=value overrides)."""
    flags = [a for a in argv if a.startswith("-")]
    return flags, [a for a in argv if not a.startswith("-")]


def _first_of_sweeps(overrides: list[str]) -> list[str]:
    """One point of a sweep, for the pre-flight compose (``a=1,2`` -> ``a=1``)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    out = []
    for text, override in zip(overrides, parsed, strict=True):
        if override.key_or_group.startswith("hydra"):
            continue
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()), None)
            if first is None:
                continue
            text = f"{override.get_key_element()}={first}"
        out.append(text)
    return out


def needs_ckpt_message(task: str) -> str:
    return f"task={task} needs a checkpoint (fix: ckpt=<run dir or last.pt>)"


def needs_checkpoint(cfg: DictConfig) -> bool:
    """Whether ``task=sample``/``eval`` needs a trained checkpoint: ``False`` when the model's
    objective says so (fixed energies, e.g. ``model=analytic``), which then builds the model
    from the config. Call after :func:`validate_config` (the target must import)."""
    objective = hydra.utils.get_object(cfg.model.objective._target_)
    return bool(objective.needs_checkpoint)


def _chosen_output_dir(overrides: list[str], multirun: bool) -> Path:
    """Where this run will write: the user's hydra.run.dir / hydra.sweep.dir, else outputs/."""
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    chosen = [o[len(key):] for o in overrides if o.startswith(key)]
    return Path(chosen[-1].split("${", 1)[0] or ".") if chosen else Path("outputs")


def check_writable(path: Path) -> None:
    """Fail before Hydra starts if ``path`` cannot be created or written (its nearest
    existing ancestor must be a writable directory)."""
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not a directory" if not existing.is_dir() else "is not writable"
        raise UserError(f"cannot write the run dir {path}: {existing} {what} (fix: run from a "
                        f"writable directory or set hydra.run.dir=<writable dir>)")


def with_saved_model(argv: list[str]) -> tuple[list[str], dict[str, dict]]:
    """For ``resume=``/``ckpt=`` runs, compose with the checkpoint's own model family
    (``model=<its name>`` added), so that keys only that family has can be overridden
    directly: ``ckpt=<ebgan run> model.objective.latent_refine=true``. ``+key=...``
    (needed before this existed) becomes ``++key=...``, which also accepts existing keys.
    Unchanged for sweeps and when the user names a model or an experiment. Also returns
    the checkpoint it read, by the path given, so :func:`preflight` need not read it again."""
    flags, overrides = _split(argv)
    if "-m" in flags or "--multirun" in flags or any(
            o.startswith(("model=", "experiment=")) for o in overrides):
        return argv, {}
    paths = [o.split("=", 1)[1] for o in overrides if o.startswith(("ckpt=", "resume="))]
    if not paths or paths[-1] in ("", "null"):
        return argv, {}
    loaded = {paths[-1]: load_checkpoint(paths[-1])}
    name = loaded[paths[-1]]["config"]["model"]["name"]
    if not (Path(CONFIG_DIR) / "model" / f"{name}.yaml").is_file():
        return argv, loaded
    def forced(arg: str) -> str:  # "+model.x=1" -> "++model.x=1" (values, not groups)
        key = arg.split("=", 1)[0]
        adds_value = key.startswith("+") and not key.startswith("++") and "." in key
        return f"+{arg}" if adds_value and not key.startswith("+hydra") else arg

    return [forced(a) for a in argv] + [f"model={name}"], loaded


def preflight(argv: list[str], loaded: dict[str, dict] | None = None) -> list[str]:
    """Compose and check the run; returns extra Hydra overrides (run dir for resume/sample).
    ``loaded``: checkpoints already read, by the path given on the command line."""
    loaded = loaded or {}
    flags, overrides = _split(argv)
    # A run dir the user chose wins over the one derived for resume/sample.
    multirun = "-m" in flags or "--multirun" in flags
    own_dir = multirun or any(o.startswith("hydra.run.dir=") for o in overrides)
    check_writable(_chosen_output_dir(overrides, multirun))
    sweeps.check_plugins(overrides)
    try:
        with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = hydra.compose("config", overrides=_first_of_sweeps(overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise UserError(hydra_error_message(exc)) from None
    if cfg.task not in TASKS:
        raise UserError(f"unknown task '{cfg.task}' (choose from: {', '.join(TASKS)})")
    sweeps.check_resume(cfg.sweep.resume, multirun, overrides)
    if cfg.resume:
        ckpt = loaded.get(cfg.resume) or load_checkpoint(cfg.resume)
        run_dir = Path(ckpt["path"]).parent
        return [] if own_dir else [f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]
    if cfg.task in CHECKPOINT_TASKS:
        if not cfg.ckpt:
            validate_config(cfg)
            if needs_checkpoint(cfg):
                raise UserError(needs_ckpt_message(cfg.task))
            return []
        saved = (loaded.get(cfg.ckpt) or load_checkpoint(cfg.ckpt))["config"]
        pattern = RUN_DIR_PATTERN.format(task=cfg.task, model=saved["model"]["name"],
                                         dataset=saved["dataset"].get("name", "data"))
        return [] if own_dir else [f"hydra.run.dir={pattern}"]
    validate_config(cfg)
    return []


def _run_train(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    ckpt = None
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume)
        cfg = merge_overrides(ckpt["config"], cfg, overrides)
    validate_config(cfg)
    return train(cfg, run_dir, resume_ckpt=ckpt)  # writes config.yaml once resumable


def _from_checkpoint(task: Callable[[DictConfig, Path, dict | None], dict], done: str
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
        metrics = task(cfg, run_dir, ckpt)
        print(f"{done} written to {run_dir}")
        return metrics

    return run


TASKS: dict[str, Callable[[DictConfig, Path, list[str]], dict]] = {
    "train": _run_train,
    "sample": _from_checkpoint(sample, "samples"),
    "eval": _from_checkpoint(eval_task, "metrics")}
CHECKPOINT_TASKS = ("sample", "eval")


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
    try:
        if multirun and cfg.sweep.resume:  # skip finished jobs, continue interrupted ones
            metrics = sweeps.run_job(cfg, run_dir, lambda: task(cfg, run_dir, overrides))
        else:
            metrics = task(cfg, run_dir, overrides)
    except UserError as exc:
        print(f"ebmrun: error: {_one_line(exc)}", file=sys.stderr)
        if multirun:  # record the failure and let the sweep go on
            atomic_write_bytes(run_dir / "error.txt", (_one_line(exc) + "\n").encode())
            return None  # sweepers record a failed trial (Optuna: hydra.sweeper.max_failure_rate)
        if distributed.is_main():
            _cleanup_failed_run_dir(run_dir, resumed=bool(cfg.resume))
        sys.exit(UserError.exit_code)
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
            print(f"ebmrun: error: {_one_line(exc)}", file=sys.stderr)
            sys.exit(UserError.exit_code)
    sys.argv = [sys.argv[0] if sys.argv else "ebmrun", *argv, *extra]
    try:
        hydra_entry()
    finally:
        distributed.stop()


if __name__ == "__main__":
    main()
