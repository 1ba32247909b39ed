"""Fresh starts of a run that the health watch flags (``trainer.health_restarts``).

EBGAN's mode collapse is an absorbing state: once every fake is the same image, nothing in
the losses pulls G out (README "Model zoo": seeds 7 and 8 of the MNIST recipe collapse by
step 200 / 700 of 5,000; a lower rate, a longer warm-up or a wider margin moves the failure
to other seeds). Another initialisation does train. With ``trainer.health_restarts: K``, a
run whose health watch (:mod:`ebmrun.callbacks.health`) names a failure sets that attempt
aside and starts again from step 0 as ``seed + 1,000,000`` (:func:`ebmrun.seeds.restart_seed`),
at most K times; after that it warns and goes on, as with K = 0.

- The attempt's files (TensorBoard events, ``config.yaml``, ``last.pt``) move to
  ``restarted/seed_<S>/`` inside the run dir: TensorBoard lists it as a run of its own.
- The new attempt gets the whole budget again (steps, ``trainer.max_minutes``), and its
  ``config.yaml`` holds the seed it trains with: ``seed=<that>`` reproduces it alone.
- The warnings (one per restart, each naming the new seed) stay in the run's
  ``metrics.json`` and Text tab, and with the count in every checkpoint (``restarts``), so
  a resumed run knows them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from ebmrun import seeds
from ebmrun.checkpoint import CKPT_NAME

SET_ASIDE_DIR = "restarted"
EVENTS_PREFIX = "events.out.tfevents"


@dataclass
class Restarts:
    """What a run carries from one attempt to the next."""

    count: int = 0                                      # fresh starts so far
    warnings: list[str] = field(default_factory=list)  # the health warnings, all attempts


def restart_clause(cfg: DictConfig, restarts: int) -> str | None:
    """The end of a health warning whose run starts afresh, or ``None`` when the run has
    no restart left (``restarts``: those done so far)."""
    allowed = int(cfg.trainer.health_restarts)
    if restarts >= allowed:
        return None
    return (f"restarting from a fresh initialisation as seed={seeds.restart_seed(cfg.seed)} "
            f"(restart {restarts + 1} of {allowed}; this attempt is kept in "
            f"{SET_ASIDE_DIR}/seed_{cfg.seed}/)")


def set_aside(run_dir: Path, seed: int) -> Path:
    """Move a stopped attempt's events, config and checkpoint to
    ``restarted/seed_<seed>/``; returns that folder."""
    folder = run_dir / SET_ASIDE_DIR / f"seed_{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    for path in list(run_dir.iterdir()):
        if path.is_file() and (path.name.startswith(EVENTS_PREFIX)
                               or path.name in ("config.yaml", CKPT_NAME)):
            path.replace(folder / path.name)
    return folder


def with_seed(cfg: DictConfig, seed: int) -> DictConfig:
    """A copy of ``cfg`` with another ``seed`` (the rest unchanged)."""
    new = copy.deepcopy(cfg)
    new.seed = int(seed)
    return new


def next_attempt_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the next attempt's seed."""
    return with_seed(cfg, seeds.restart_seed(cfg.seed))
