"""Typed config schemas (registered in Hydra's ConfigStore) and value checks.

The top-level :class:`Config` is a structured config, so Hydra rejects unknown keys and
wrong types in ``trainer``, ``optim``, ``sample``, ``device`` and ``model`` with a clear
message. Groups whose nodes construct objects (``model.net``, ``model.objective``,
``sampler``, ``dataset``) carry a ``_target_``; :func:`ebmrun.build.check_target_node`
validates their keys and value types against the target's signature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig
from omegaconf.errors import OmegaConfBaseException

from ebmrun.errors import UserError


def config_dir() -> str:
    """The config tree: inside the installed package (wheel) or the repo's top-level conf/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError("ebmrun's config tree (conf/config.yaml) is missing from the install")


CONFIG_DIR = config_dir()


@dataclass
class DivergenceConfig:
    """When a step counts as diverged, and how ``rollback`` continues (see divergence.py)."""

    max_abs_energy: Optional[float] = None  # null: only non-finite values count
    lr_factor: float = 0.5                   # rollback: learning rates x this factor
    max_rollbacks: int = 3                   # then stop


@dataclass
class TrainerConfig:
    """Training budget and the intervals of logging, pictures and checkpoints (in steps)."""

    max_steps: Optional[int] = "${model.max_steps}"  # type: ignore[assignment]  # the family's
    max_epochs: Optional[int] = None
    max_minutes: Optional[float] = None  # wall-clock budget (not reproducible across machines)
    batch_size: int = "${model.batch_size}"  # type: ignore[assignment]  # the family's
    log_every: int = 10
    image_every: int = 250
    ckpt_every: int = 250
    # A cheap sample-quality curve (MNIST-like data): quality/frechet of quality_samples
    # samples every quality_every steps (0/null: off); quality_steps: sampler steps for
    # them (null: the family's default). See ebmrun.callbacks.quality.
    quality_every: Optional[int] = 1000
    quality_samples: int = 200
    quality_steps: Optional[int] = None
    grad_clip: Optional[float] = "${model.grad_clip}"  # type: ignore[assignment]  # the family's
    objective_metric: str = "loss"
    progress: bool = True
    on_divergence: str = "stop"              # stop | rollback
    # Fresh starts (another seed) when the health watch names a failure; the family's default
    health_restarts: int = "${model.health_restarts}"  # type: ignore[assignment]
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    # Your own side jobs of the loop, without editing ebmrun: name -> {_target_: a subclass
    # of ebmrun.callbacks.Callback, its arguments}. See ebmrun.callbacks.user_callbacks.
    callbacks: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimizer (``adam`` | ``adamw`` | ``sgd``) and learning-rate schedule of every
    parameter group (``model.optim.<group>`` replaces keys per group; see
    :mod:`ebmrun.optimization`)."""

    name: str = "adam"
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.0, 0.999])
    weight_decay: float = 0.0
    # adam/adamw: the fused kernel, one pass over all parameters instead of ~10 elementwise
    # kernels per tensor (the EBGAN step 1.3x faster on CPU, README "Performance")
    fused: bool = True
    schedule: str = "${model.schedule}"  # the family's (model/<name>.yaml), else exponential
    lr_decay: float = 0.97
    warmup: float = 0.05
    warmup_start: float = 0.04
    ema: Optional[float] = "${model.ema}"  # type: ignore[assignment]  # the family's, else null


@dataclass
class SampleConfig:
    """``task=sample``: how many samples, how many sampler steps (null = model default)."""

    n: int = 100
    steps: Optional[int] = None
    batch_size: int = 500
    snapshot_every: Optional[int] = None
    label: Any = None  # a class label or a list: conditional samples (ebmrun.composition)
    label_method: str = "rejection"  # rejection (ebmrun.conditional) | chains (on E(x, y))
    label_refine_steps: int = 30  # rejection: sampler steps on E(x, y) from the kept samples


@dataclass
class ComposeConfig:
    """``task=sample`` on a sum of energies (see :mod:`ebmrun.composition`)."""

    labels: Optional[list[int]] = None   # E(x, y_k) of ckpt (one per ckpt with ckpts; -1: E(x))
    weights: Optional[list[float]] = None  # one per energy (null: all 1; < 0: negation)
    ckpts: Optional[list[str]] = None    # further checkpoints whose energies add to ckpt's


@dataclass
class EvalConfig:
    """``task=eval`` and periodic evaluation while training (``every`` steps; null = off).

    Which metrics run depends on the model family and the data: sample quality (images with
    an evaluator), anomaly AUROC (families with an energy), the exact grid normaliser (2-D
    points), and the family's own metrics (NLL bounds, code errors, ...).
    """

    every: Optional[int] = None
    n_samples: int = 1000          # generated samples for the sample-quality metrics
    sample_draws: int = 1          # >1: FD is the median over that many sets of n_samples
    sample_steps: Optional[int] = None  # sampler steps for them (null = model default)
    batch_size: int = 500
    max_test: Optional[int] = None  # evaluate on the first N test items (null = all)
    sample_quality: bool = True
    ood: list[str] = field(default_factory=lambda: ["other", "noise", "flip"])
    grid_size: int = 300           # 2-D normaliser: grid points per axis
    iw_samples: int = 1000         # importance samples per item (VAE NLL bound)
    iw_batch: int = 50             # items per importance-sampling batch (memory)
    ais_chains: int = 100          # annealed importance sampling (RBM log Z)
    ais_steps: int = 10000
    inception_fid: bool = False    # torchmetrics' Inception FID, only if its weights exist


@dataclass
class DeviceConfig:
    """``auto`` picks cuda > mps > cpu; ``threads`` sets torch's CPU thread count;
    ``cuda_graphs``: samplers replay their loop as a CUDA graph (CUDA only, see
    :mod:`ebmrun.samplers.graphed`); ``capture_step``: the whole training step too (see
    :mod:`ebmrun.captured_step`); ``tf32``: TensorFloat-32 matrix products on CUDA (convolutions
    use it by torch's default)."""

    name: str = "auto"
    threads: Optional[int] = None
    cuda_graphs: bool = True
    capture_step: bool = True
    tf32: bool = False


@dataclass
class SweepConfig:
    """Multirun behaviour: ``resume`` re-runs a sweep into its existing ``hydra.sweep.dir``,
    skipping finished jobs and resuming interrupted ones (see ebmrun.sweeps)."""

    resume: bool = False


@dataclass
class ModelConfig:
    """A model family: its network (``net``), its training recipe (``objective``), the
    family's defaults of ``trainer.max_steps``, ``trainer.batch_size``,
    ``trainer.grad_clip``, ``trainer.health_restarts``, ``optim.schedule`` and
    ``optim.ema`` (a command-line ``trainer.*`` / ``optim.*`` still wins), and
    per-parameter-group overrides of ``optim.*`` / ``grad_clip``
    (``optim: {<group>: {schedule: warmup_cosine, ...}}``)."""

    name: str = MISSING
    net: Any = MISSING
    objective: Any = MISSING
    max_steps: Optional[int] = 2000   # the family's default budget (trainer.max_steps)
    batch_size: int = 128             # and batch (trainer.batch_size)
    grad_clip: Optional[float] = 0.1  # families that clip nothing set null in their yaml
    schedule: str = "exponential"     # the family's default of optim.schedule
    ema: Optional[float] = None       # the family's default of optim.ema
    health_restarts: int = 0          # and of trainer.health_restarts (0: warn, go on)
    optim: Any = None


@dataclass
class Config:
    task: str = "train"
    seed: int = 0
    ckpt: Optional[str] = None
    resume: Optional[str] = None
    model: ModelConfig = MISSING
    sampler: Any = MISSING
    dataset: Any = MISSING
    device: DeviceConfig = field(default_factory=DeviceConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    compose: ComposeConfig = field(default_factory=ComposeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def register_configs() -> None:
    """Register the schemas; ``conf/config.yaml`` lists ``ebmrun_schema`` first in defaults."""
    cs = ConfigStore.instance()
    cs.store(name="ebmrun_schema", node=Config)
    from ebmrun.job_names import register_resolver

    register_resolver()  # ${ebmrun_swept:} in hydra.sweep.subdir


SCHEDULES = ("constant", "exponential", "warmup_cosine")  # see ebmrun.optimization.Schedule
LABEL_METHODS = ("rejection", "chains")  # see ebmrun.composition / ebmrun.conditional


def _positive(value: Any) -> bool:
    return value is not None and value > 0


# (config path, test, what is expected): checks Hydra's types cannot express.
VALUE_CHECKS: list[tuple[str, Any, str]] = [
    ("trainer.batch_size", _positive, "a positive integer"),
    ("trainer.max_steps", lambda v: v is None or v > 0, "null or a positive integer"),
    ("trainer.max_epochs", lambda v: v is None or v > 0, "null or a positive integer"),
    ("trainer.max_minutes", lambda v: v is None or v > 0, "null or a number > 0"),
    ("trainer.log_every", _positive, "a positive integer"),
    ("trainer.image_every", _positive, "a positive integer"),
    ("trainer.ckpt_every", _positive, "a positive integer"),
    ("trainer.quality_every", lambda v: v is None or v >= 0, "null, 0 or a positive integer"),
    ("trainer.quality_samples", lambda v: v >= 2, "an integer >= 2"),
    ("trainer.quality_steps", lambda v: v is None or v >= 0, "null or an integer >= 0"),
    ("trainer.grad_clip", lambda v: v is None or v > 0, "null or > 0"),
    ("trainer.on_divergence", lambda v: v in ("stop", "rollback"), "stop or rollback"),
    ("trainer.divergence.max_abs_energy", lambda v: v is None or v > 0, "null or > 0"),
    ("trainer.divergence.lr_factor", lambda v: 0 < v < 1, "in (0, 1)"),
    ("trainer.divergence.max_rollbacks", lambda v: v >= 0, "an integer >= 0"),
    ("trainer.health_restarts", lambda v: v >= 0, "an integer >= 0"),
    ("optim.lr", _positive, "a number > 0"),
    ("optim.lr_decay", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("optim.schedule", lambda v: v in SCHEDULES, " | ".join(SCHEDULES)),
    ("optim.warmup", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.warmup_start", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("optim.ema", lambda v: v is None or 0 < v < 1, "null or in (0, 1)"),
    ("optim.weight_decay", lambda v: v >= 0, ">= 0"),
    ("optim.betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    ("sample.n", _positive, "a positive integer"),
    ("sample.batch_size", _positive, "a positive integer"),
    ("sample.steps", lambda v: v is None or v >= 0, "null or an integer >= 0"),
    ("sample.label_method", lambda v: v in LABEL_METHODS, " | ".join(LABEL_METHODS)),
    ("sample.label_refine_steps", lambda v: v >= 0, "an integer >= 0"),
    ("device.threads", lambda v: v is None or v > 0, "null or a positive integer"),
    ("eval.every", lambda v: v is None or v > 0, "null or a positive integer"),
    ("eval.n_samples", lambda v: v >= 2, "an integer >= 2"),
    ("eval.sample_draws", _positive, "a positive integer"),
    ("eval.sample_steps", lambda v: v is None or v >= 0, "null or an integer >= 0"),
    ("eval.batch_size", _positive, "a positive integer"),
    ("eval.max_test", lambda v: v is None or v >= 2, "null or an integer >= 2"),
    ("eval.ood", lambda v: set(v) <= {"other", "noise", "flip"},
     "a list drawn from [other, noise, flip]"),
    ("eval.grid_size", lambda v: v >= 16, "an integer >= 16"),
    ("eval.iw_samples", _positive, "a positive integer"),
    ("eval.iw_batch", _positive, "a positive integer"),
    ("eval.ais_chains", _positive, "a positive integer"),
    ("eval.ais_steps", _positive, "a positive integer"),
]


def check_values(cfg: DictConfig) -> None:
    """Raise :class:`UserError` for out-of-range values (zero batch size, lr <= 0, ...)."""
    from omegaconf import OmegaConf

    for path, test, expected in VALUE_CHECKS:
        value = OmegaConf.select(cfg, path)
        if not test(value):
            raise UserError(f"{path}={value} is invalid: it must be {expected} "
                            f"(fix: {path}=<value>)")
    if (cfg.trainer.max_steps is None and cfg.trainer.max_epochs is None
            and cfg.trainer.max_minutes is None):
        raise UserError("trainer.max_steps, max_epochs and max_minutes are all null: the run "
                        "would never end (fix: set trainer.max_steps=<n>, trainer.max_epochs=<n> "
                        "or trainer.max_minutes=<m>)")


# Overrides that select whole recipes cannot be re-applied to a saved config.
NOT_REAPPLICABLE = ("experiment",)


# Keys an older ebmrun saved in a run's config → where they live now, so that its
# checkpoints still load (task=sample / eval, resume). VAE runs saved model.objective.fused
# before the fused kernel became every family's optim.fused.
MOVED_KEYS = {"model.objective.fused": "optim.fused"}


def move_old_keys(cfg: DictConfig) -> None:
    """Put every :data:`MOVED_KEYS` entry of a merged saved config at its new place."""
    from omegaconf import OmegaConf

    for old, new in MOVED_KEYS.items():
        parent_key, leaf = old.rsplit(".", 1)
        parent = OmegaConf.select(cfg, parent_key)
        if isinstance(parent, DictConfig) and leaf in parent:
            OmegaConf.update(cfg, new, parent.pop(leaf), merge=False)


def merge_overrides(saved: dict, composed: DictConfig, overrides: list[str]) -> DictConfig:
    """Apply the user's command-line ``overrides`` on top of a checkpoint's saved config.

    Values are taken from ``composed`` (the config Hydra built from the same overrides), so
    they arrive typed and with config-group choices expanded (``sampler=mala`` copies the
    whole ``sampler`` node). ``hydra.*`` overrides are not part of the run config.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), saved)
    except OmegaConfBaseException as exc:
        raise UserError(f"the checkpoint's config does not fit this ebmrun version "
                        f"({' '.join(str(exc).split())[:160]}) (fix: use a checkpoint written "
                        f"by this version)") from None
    move_old_keys(merged)
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key.startswith("hydra") or override.is_delete():
            continue
        if key == "model" and override.value() == saved.get("model", {}).get("name"):
            continue  # the saved family itself (cli.with_saved_model): keep its saved values
        if key in NOT_REAPPLICABLE:
            raise UserError(f"{key}={override.value()} cannot be applied to a saved run "
                            f"(fix: override single keys instead, e.g. trainer.max_steps=...)")
        OmegaConf.update(merged, key, OmegaConf.select(composed, key), merge=False,
                         force_add=True)
    for key in ("task", "ckpt", "resume"):
        merged[key] = composed[key]
    return merged
