"""What a callback sees (:class:`RunState`) and what it may do (:class:`Callback`).

The step cycle in :func:`ebmrun.run.train` calls, in the order the callbacks are listed:
``on_start`` once; every step ``check`` (raise stop/rewind flags), then one agreement of
the flags over DDP ranks, then ``on_step``; ``on_rewind`` after a rollback to the last
checkpoint; ``on_end`` once when the loop is left.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ebmrun import distributed as ddp
from ebmrun.build import Components
from ebmrun.captured_step import set_capturable
from ebmrun.checkpoint import load_model_state
from ebmrun.data.base import BatchIterator, InMemoryData
from ebmrun.divergence import DivergenceGuard
from ebmrun.ema import EMA
from ebmrun.errors import UserError
from ebmrun.objectives.base import DataInfo
from ebmrun.optimization import Schedule, Updater


@dataclass
class RunState:
    """Everything a training run holds; callbacks read it and change what is theirs."""

    cfg: DictConfig
    run_dir: Path
    data: InMemoryData
    info: DataInfo
    parts: Components
    optimizers: list[torch.optim.Optimizer]
    schedules: list[Schedule]
    batches: BatchIterator
    guard: DivergenceGuard
    ema: EMA | None
    groups: tuple[str, ...] = ()        # the objective's parameter groups (optimizers' order)
    logger: object = None               # RunLogger on rank 0 (a silent stand-in elsewhere)
    updater: Updater | None = None      # its grad norms and clips (diagnostics)
    step: int = 0
    epoch: int = 0                      # the data order's epoch (per-epoch schedules)
    total: float = 0.0                  # the step budget (inf: only the wall clock limits)
    elapsed_before: float = 0.0         # seconds spent by earlier runs of a resumed run
    t_start: float = field(default_factory=time.perf_counter)
    scalars: dict[str, float] = field(default_factory=dict)  # last logged averages
    last_eval: dict[str, float] = field(default_factory=dict)
    last_quality: dict[str, float] = field(default_factory=dict)  # the quality probe's last
    warnings: list[str] = field(default_factory=list)  # health warnings ("step N: ...")
    restarts: int = 0                   # fresh starts so far (ebmrun.restarts)
    restart: bool = False               # the health watch asked for one: end this attempt
    signal: int | None = None           # SIGINT/SIGTERM caught: checkpoint and stop
    diverged: str | None = None         # this step's divergence reason (agreed by all ranks)
    timed_out: bool = False             # the wall-clock budget is spent (agreed)

    def elapsed(self) -> float:
        """Seconds of training so far, earlier runs of a resumed run included."""
        return self.elapsed_before + time.perf_counter() - self.t_start

    def open_logger(self, purge_step: int | None = None) -> None:
        """(Re)open the run's logger (``purge_step``: drop events from that step on) with the
        objective's reference lines (e.g. EBGAN's margin beside its energies)."""
        self.logger = ddp.run_logger(self.run_dir, purge_step=purge_step)
        self.logger.reference_lines(self.parts.objective.reference_lines())

    def payload(self) -> dict:
        """The checkpoint (see :mod:`ebmrun.run` for the keys)."""
        parts = self.parts
        rng = {"torch": torch.get_rng_state(), "sampler": parts.generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        payload = {"config": OmegaConf.to_container(self.cfg, resolve=True),
                   "data_info": asdict(self.info), "model": parts.model.state_dict(),
                   "objective": parts.objective.state_dict(),
                   "optimizers": [o.state_dict() for o in self.optimizers],
                   "schedulers": [s.state_dict() for s in self.schedules], "step": self.step,
                   "epoch": self.batches.epoch, "batches": self.batches.state_dict(),
                   "rng": rng, "elapsed_s": self.elapsed(), "divergence": self.guard.state_dict(),
                   "last_scalars": dict(self.scalars), "warnings": list(self.warnings),
                   "restarts": self.restarts}
        if self.ema is not None:
            payload["ema"] = self.ema.state_dict()
        return payload

    def restore(self, ckpt: dict, rollback: bool = False) -> None:
        """Load a checkpoint's training state. A ``rollback`` keeps the guard's rollback
        count and the wall clock running."""
        parts = self.parts
        load_model_state(parts.model, ckpt)
        parts.objective.load_state_dict(ckpt["objective"])
        try:
            for optimizer, state in zip(self.optimizers, ckpt["optimizers"], strict=True):
                optimizer.load_state_dict(state)
                # A checkpoint of a captured GPU step has Adam's capturable on: off again (the
                # captured step turns it back on where it applies; a CPU run cannot use it).
                set_capturable(optimizer, False)
        except ValueError as exc:  # another number or order of parameter groups
            raise UserError(f"the checkpoint's optimizer state does not fit this model's "
                            f"parameter groups ({' '.join(str(exc).split())[:120]}) (fix: "
                            f"resume with the ebmrun version that wrote it, or start a new "
                            f"run)") from None
        for schedule, state in zip(self.schedules, ckpt["schedulers"], strict=True):
            schedule.load_state_dict(state)
        if self.ema is not None:
            self.ema.load_state_dict(ckpt.get("ema"))
        self.batches.load_state_dict(ckpt["batches"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        parts.generator.set_state(ckpt["rng"]["sampler"])
        ddp.reseed_restored(parts.generator)  # DDP: ranks > 0 draw their own noise again
        if "cuda" in ckpt["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        self.step, self.epoch = int(ckpt["step"]), self.batches.epoch
        if not rollback:
            self.guard.load_state_dict(ckpt.get("divergence", {}))
            self.elapsed_before = float(ckpt.get("elapsed_s", 0.0))

    def due(self, every: int | None) -> bool:
        """Whether a job run every ``every`` steps (and after the last one) is due now."""
        return bool(every) and (self.step % every == 0 or self.step == self.total)


class Callback:
    """One side job of the training loop. Override the hooks it needs."""

    def on_start(self, run: RunState) -> None:
        """Before the first step (after a resume's restore)."""

    def check(self, run: RunState, out: dict) -> None:
        """After the step's update, before the agreement: set ``run.diverged`` /
        ``run.timed_out``."""

    def on_step(self, run: RunState, x: torch.Tensor, out: dict) -> bool | None:
        """After the agreement. Return ``True`` when the step was undone (a rollback):
        the later callbacks then skip it."""

    def on_rewind(self, run: RunState) -> None:
        """After a rollback restored an earlier step (``run.step``)."""

    def on_end(self, run: RunState) -> None:
        """When the loop is left (finished, interrupted or out of time)."""
