"""The pre-flight: every check the command line and the composed config allow, made before
Hydra creates a run dir and before any training.

A typo, a wrong type, an unknown option, a bad checkpoint, a metric the run can never
produce, a resume that would change the run's model or data: each is one line on stderr
(``ebmrun: error: ...``, naming the fix) with exit code 2, no traceback, nothing written.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

import hydra
import hydra.utils
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from ebmrun import sweeps
from ebmrun.build import load_data, validate_config
from ebmrun.callbacks import check_user_callbacks
from ebmrun.checkpoint import load_checkpoint
from ebmrun.config import CONFIG_DIR, merge_overrides
from ebmrun.errors import UserError
from ebmrun.metric_names import objective_class, produced, train_metrics

TASK_NAMES = ("train", "sample", "eval")
CHECKPOINT_TASKS = ("sample", "eval")
RUN_DIR_PATTERN = "outputs/{task}/{model}-{dataset}/${{now:%Y-%m-%d_%H-%M-%S}}_${{ebmrun_unique:}}"


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def did_you_mean(word: str, choices: list[str]) -> str:
    """`` (did you mean X?)`` for the closest of ``choices`` (case-insensitive), or ``''``."""
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]}?)" if close else ""


def hydra_error_message(exc: Exception, overrides: list[str] = ()) -> str:
    """Turn Hydra/OmegaConf composition errors into one line that names the fix."""
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and exc.options:
        group, _, option = exc.missing_cfg_file.rpartition("/")
        group = group or "config"
        hint = did_you_mean(option, exc.options)
        fix = f"fix: {group}={hint[len(' (did you mean '):-2]}; " if hint else ""
        return (f"unknown {group} '{option}' ({fix}choose from: "
                f"{', '.join(sorted(exc.options))})")
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    message = one_line(cause)
    unknown = re.search(r"Key '[^']+' (?:is )?not in \S+ full_key: (\S+)", message)
    wrong_type = re.search(r"Value '(.*)' of type '\w+' could not be converted to (\w+) "
                           r"full_key: (\S+)", message)
    if wrong_type:
        value, expected, key = wrong_type.groups()
        return (f"{key}='{value}' has the wrong type: expected {expected.lower()} "
                f"(fix: {key}=<{expected.lower()}>)")
    if unknown:
        key = unknown.group(1)
        hint = did_you_mean(key.rpartition(".")[2], _sibling_keys(key, overrides))
        return (f"unknown key {key}{hint} (fix: check its spelling; `ebmrun --cfg job` "
                f"lists every key)")
    return message


def _sibling_keys(key: str, overrides: list[str]) -> list[str]:
    """The keys beside ``key`` in the config composed without the override that names it."""
    parent = key.rpartition(".")[0]
    rest = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]
    try:
        with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            node = hydra.compose("config", overrides=rest)
        node = OmegaConf.select(node, parent) if parent else node
    except Exception:  # only a hint: without it the message still names the key
        return []
    return [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` -> (flags, key=value overrides)."""
    flags = [a for a in argv if a.startswith("-")]
    return flags, [a for a in argv if not a.startswith("-")]


def check_arguments(overrides: list[str]) -> None:
    """Every argument is ``key=value`` (Hydra's parse error names no fix): ``ebmrun train``
    -> ``task=train``, ``ebmrun mnist`` -> ``dataset=mnist``."""
    for arg in overrides:
        if "=" in arg:
            continue
        guess = f"task={arg}" if arg in TASK_NAMES else next(
            (f"{g.name}={arg}" for g in sorted(Path(CONFIG_DIR).iterdir())
             if g.is_dir() and (g / f"{arg}.yaml").is_file()), "key=value")
        raise UserError(f"argument '{arg}' is not an override: every argument is key=value "
                        f"(fix: ebmrun {guess})")


def first_of_sweeps(overrides: list[str]) -> list[str]:
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
    return bool(objective_class(cfg).needs_checkpoint)


def chosen_output_dir(overrides: list[str], multirun: bool) -> Path:
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
    flags, overrides = split_argv(argv)
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


def compose(overrides: list[str]) -> tuple[DictConfig, dict]:
    """The run's config (first point of a sweep) and Hydra's group choices."""
    try:
        with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = hydra.compose("config", overrides=first_of_sweeps(overrides),
                                return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise UserError(hydra_error_message(exc, first_of_sweeps(overrides))) from None
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def check_hparams_preset(choices: dict) -> None:
    """An Optuna preset searches its own experiment (``override /experiment`` in its defaults
    list); another experiment on the command line would search the wrong thing."""
    preset = choices.get("hparams_search")
    if preset is None:
        return
    defaults = OmegaConf.load(Path(CONFIG_DIR) / "hparams_search" / f"{preset}.yaml").defaults
    own = next((v for d in defaults if isinstance(d, DictConfig)
                for k, v in d.items() if k.endswith("/experiment")), None)
    if own is None:
        raise UserError(f"hparams_search={preset} names no experiment (fix: add "
                        f"'- override /experiment: <name>' to its defaults list)")
    if choices.get("experiment") != own:
        raise UserError(f"hparams_search={preset} searches experiment={own}, not experiment="
                        f"{choices.get('experiment')} (fix: drop experiment=..., or pick the "
                        f"preset of that experiment)")


def check_objective_metric(cfg: DictConfig) -> None:
    """``trainer.objective_metric`` must be a name this run can produce (see
    :mod:`ebmrun.metric_names`); ``eval/*`` names need ``eval.every``, ``quality/*`` names
    the quality probe, and both, to know the data's kind, load the data (only then)."""
    name = cfg.trainer.objective_metric
    if name.startswith("eval/") and not cfg.eval.every:
        raise UserError(f"trainer.objective_metric={name} is an evaluation metric but this run "
                        f"never evaluates (fix: eval.every=<steps>, e.g. eval.every="
                        f"{cfg.trainer.max_steps or 1000})")
    if name.startswith("quality/") and not cfg.trainer.quality_every:
        raise UserError(f"trainer.objective_metric={name} comes from the quality probe, which "
                        f"is off in this run (fix: trainer.quality_every=<steps>, e.g. "
                        f"trainer.quality_every=1000)")
    data = load_data(cfg) if name.startswith(("eval/", "quality/")) else None
    names = train_metrics(cfg, None if data is None else (data.name, tuple(data.item_shape)))
    if not produced(name, names):
        what = f"{cfg.model.name} on {data.name}" if data is not None else cfg.model.name
        raise UserError(f"trainer.objective_metric={name} is never produced by {what} with "
                        f"these eval settings (fix: one of {', '.join(names)})")


def check_resumed_run(saved: dict, cfg: DictConfig, overrides: list[str]) -> None:
    """A resume continues the same run: its model family and data may not change."""
    merged = merge_overrides(saved, cfg, overrides)
    before = (saved["model"]["name"], saved["dataset"].get("_target_"),
              saved["dataset"].get("name"))
    after = (merged.model.name, merged.dataset.get("_target_"), merged.dataset.get("name"))
    if before[0] != after[0]:
        raise UserError(f"resume={cfg.resume} continues a {before[0]} run, not {after[0]} (fix: "
                        f"drop model=..., or train a new run without resume=)")
    if before[1:] != after[1:]:
        raise UserError(f"resume={cfg.resume} continues a run on {before[2]}, not on {after[2]} "
                        f"(fix: drop the dataset override, or train a new run without resume=)")


def preflight(argv: list[str], loaded: dict[str, dict] | None = None) -> list[str]:
    """Compose and check the run; returns extra Hydra overrides (run dir for resume/sample).
    ``loaded``: checkpoints already read, by the path given on the command line."""
    loaded = loaded or {}
    flags, overrides = split_argv(argv)
    check_arguments(overrides)
    # A run dir the user chose wins over the one derived for resume/sample.
    multirun = "-m" in flags or "--multirun" in flags
    own_dir = multirun or any(o.startswith("hydra.run.dir=") for o in overrides)
    check_writable(chosen_output_dir(overrides, multirun))
    sweeps.check_plugins(overrides)
    cfg, choices = compose(overrides)
    if cfg.task not in TASK_NAMES:
        raise UserError(f"unknown task '{cfg.task}'{did_you_mean(cfg.task, list(TASK_NAMES))} "
                        f"(choose from: {', '.join(TASK_NAMES)})")
    sweeps.check_resume(cfg.sweep.resume, multirun, overrides)
    check_hparams_preset(choices)
    if cfg.task == "train" and cfg.ckpt:
        raise UserError(f"ckpt= is read by task=sample and task=eval; task=train would ignore "
                        f"it (fix: resume={cfg.ckpt} to continue that run, or drop ckpt=)")
    if cfg.resume:
        ckpt = loaded.get(cfg.resume) or load_checkpoint(cfg.resume)
        check_resumed_run(ckpt["config"], cfg, first_of_sweeps(overrides))
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
    check_objective_metric(cfg)
    check_user_callbacks(cfg)
    return []
