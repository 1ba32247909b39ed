"""``task=train``: the step cycle; the side jobs are callbacks (:mod:`ebmrun.callbacks`).

Checkpoint payload (``last.pt``): ``config`` (the composed config as a dict), ``data_info``,
``model``, ``objective`` (replay buffer, ...), ``optimizers``, ``schedulers`` (one per
parameter group), ``ema`` (with ``optim.ema``), ``step``, ``epoch``, ``batches`` (data
order), ``rng`` (torch + sampler generator), ``elapsed_s``, ``divergence``,
``last_scalars``, ``warnings``, ``restarts``.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ebmrun import distributed as ddp
from ebmrun import seeds
from ebmrun.build import build_components, data_info_of, load_data, make_batches, optim_settings
from ebmrun.callbacks import RunState, default_callbacks
from ebmrun.captured_step import captured_if_possible
from ebmrun.checkpoint import atomic_write_bytes, atomic_write_json
from ebmrun.divergence import DivergenceGuard
from ebmrun.ema import EMA, maybe_applied
from ebmrun.errors import UserError
from ebmrun.logging.hparams import run_hparams
from ebmrun.optimization import Schedule, Updater, check_groups, group_settings
from ebmrun.outputs import write_sample_files
from ebmrun.progress import phase
from ebmrun.restarts import Restarts, next_attempt_config, set_aside, with_seed


class StopRequested:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and exits."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {}

    def __enter__(self) -> "StopRequested":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a launcher's worker)
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def total_steps(cfg: DictConfig, batches_per_epoch: int) -> float:
    """The step budget; ``inf`` when only ``trainer.max_minutes`` limits the run (which may
    also end a step-limited run earlier)."""
    limits = [cfg.trainer.max_steps,
              None if cfg.trainer.max_epochs is None else cfg.trainer.max_epochs * batches_per_epoch]
    return min((v for v in limits if v is not None), default=math.inf)


def train(cfg: DictConfig, run_dir: Path, resume_ckpt: dict | None = None,
          restarts: Restarts | None = None) -> dict:
    """Train ``cfg.model`` on ``cfg.dataset``; returns the final metrics dict. A run the
    health watch restarts trains again here from step 0 with the next seed (``restarts``:
    what the earlier attempts leave it; see :mod:`ebmrun.restarts`)."""
    run, updater = prepare(cfg, run_dir, resume_ckpt, restarts)
    callbacks = default_callbacks(cfg, rewind=lambda r: [c.on_rewind(r) for c in callbacks])
    train_set, images_seen = run.data.train.to(run.parts.device), 0
    labels = (run.data.train_labels.to(run.parts.device) if run.parts.objective.uses_labels
              else None)
    run.t_start = time.perf_counter()
    for callback in callbacks:
        callback.on_start(run)
    with StopRequested() as stop:
        while run.step < run.total:
            idx = ddp.shard(run.batches.next_indices()).to(run.parts.device)
            x = run.data.to_float(train_set[idx])
            if run.batches.epoch != run.epoch:  # an epoch ended: per-epoch schedules
                run.epoch = run.batches.epoch
                for schedule in run.schedules:
                    schedule.epoch_end()
            out = updater(x, run.step + 1, None if labels is None else labels[idx])
            run.step += 1
            images_seen += x.shape[0] * ddp.world_size()
            for callback in callbacks:
                callback.check(run, out)
            # Stop and rewind decisions are every rank's (one all-reduce).
            run.diverged, run.timed_out, run.signal = ddp.agree(run.diverged, run.timed_out,
                                                                stop.signal)
            stop.signal = run.signal
            undone = any(callback.on_step(run, x, out) for callback in callbacks)
            if (run.signal and not undone) or run.restart:
                break
    for callback in callbacks:
        callback.on_end(run)
    if run.restart and not run.signal:
        run.logger.close()
        if ddp.is_main():
            set_aside(run_dir, run.cfg.seed)
        return train(next_attempt_config(run.cfg), run_dir,
                     restarts=Restarts(run.restarts + 1, list(run.warnings)))
    return finish(run, time.perf_counter() - run.t_start, images_seen)


def prepare(cfg: DictConfig, run_dir: Path, resume_ckpt: dict | None,
            restarts: Restarts | None = None) -> tuple[RunState, Updater]:
    """Build the run (restored from ``resume_ckpt``, or a fresh attempt after
    ``restarts``), refuse a resume with nothing left to do, write ``config.yaml`` and open
    the logger; returns the state and the updater."""
    if resume_ckpt is not None and resume_ckpt.get("restarts"):
        # A restarted attempt goes on with its own seed (a sweep resumes with the job's).
        cfg = with_seed(cfg, resume_ckpt["config"]["seed"])
    data = load_data(cfg)
    info = data_info_of(data)
    parts = build_components(cfg, info)
    objective = parts.objective
    if objective.uses_labels and data.train_labels is None:
        raise UserError(f"model={cfg.model.name} trains on class labels and dataset "
                        f"{data.name} has none (fix: a labelled dataset, e.g. dataset=mnist)")
    optimizers = objective.configure_optimizers(optim_settings(cfg))
    groups = (tuple(objective.groups) if not objective.manual_optimization
              else tuple(f"{i}" for i in range(len(optimizers))))
    if not objective.manual_optimization:
        check_groups(cfg, groups)
    settings = [group_settings(cfg, group) for group in groups]
    batches = make_batches(cfg, data)
    total = total_steps(cfg, batches.batches_per_epoch)
    run = RunState(cfg=cfg, run_dir=run_dir, data=data, info=info, parts=parts,
                   optimizers=optimizers, groups=groups,
                   schedules=[],
                   batches=batches, guard=divergence_guard(cfg),
                   ema=EMA(parts.model, cfg.optim.ema) if cfg.optim.ema else None,
                   total=total, epoch=batches.epoch)
    seconds = 60.0 * cfg.trainer.max_minutes if cfg.trainer.max_minutes else None
    budget_used = (lambda: run.elapsed() / seconds) if seconds else None  # time budgets
    run.schedules = [Schedule(o, s, total, budget_used) for o, s in zip(optimizers, settings)]
    if resume_ckpt is not None:
        run.restore(resume_ckpt)
        _check_resume(cfg, run, run_dir)
    forward = ddp.step_function(objective, batches.batch_size)  # DDP under torchrun
    updater = Updater(objective, optimizers, [s.grad_clip for s in settings], run.schedules,
                      forward, run.ema)
    updater = captured_if_possible(updater, cfg.device.capture_step, parts.device)
    run.updater = updater
    # Written only now: a refused resume leaves the run dir as it was. (DDP: rank 0 alone
    # writes the run dir.)
    if ddp.is_main():
        atomic_write_bytes(run_dir / "config.yaml", OmegaConf.to_yaml(cfg).encode())
    run.open_logger(purge_step=run.step if resume_ckpt else None)
    # This run's HParams row; a resumed run opens it again (same settings), its end closes it.
    run.logger.start_session(run_hparams(cfg, sampler_used=objective.uses_sampler))
    if resume_ckpt is None:
        run.logger.text("config", OmegaConf.to_yaml(cfg))
    else:
        run.scalars = dict(resume_ckpt.get("last_scalars", {}))
        restarts = Restarts(int(resume_ckpt.get("restarts", 0)),
                            list(resume_ckpt.get("warnings", [])))  # the health watch's
    if restarts is not None:
        run.restarts, run.warnings = restarts.count, list(restarts.warnings)
        if resume_ckpt is None:  # a fresh attempt: its Text tab says why it exists
            for line in run.warnings:
                run.logger.text("warnings", line, 0, code=False)
    return run, updater


def _check_resume(cfg: DictConfig, run: RunState, run_dir: Path) -> None:
    minutes = cfg.trainer.max_minutes
    if minutes is not None and run.elapsed_before >= 60.0 * minutes:
        raise UserError(f"this run already used its {minutes:g}-minute budget (fix: resume "
                        f"with a larger one, e.g. trainer.max_minutes={2 * minutes:g})")
    # A run killed after its last checkpoint but before metrics.json still needs its ending.
    if run.step >= run.total and (run_dir / "metrics.json").exists():
        raise UserError(f"this run already finished ({run.step} of {run.total} steps) (fix: "
                        f"resume with a larger budget, e.g. "
                        f"trainer.max_steps={max(run.total, 1) * 2})")


def finish(run: RunState, wall: float, images_seen: int) -> dict:
    """The run's metrics; on rank 0 also its final samples, the end of its HParams session
    and metrics.json."""
    cfg = run.cfg
    metrics = {"task": "train", "model": cfg.model.name, "dataset": run.data.name,
               "steps": run.step, "epochs": run.step / run.batches.batches_per_epoch,
               "wall_time_s": run.elapsed_before + wall,
               "images_per_s": images_seen / max(wall, 1e-9), **run.scalars,
               **run.last_quality, **{f"eval/{k}": v for k, v in run.last_eval.items()},
               "warnings": list(run.warnings),  # the health watch's (callbacks.health)
               "restarts": run.restarts}  # fresh starts it caused (ebmrun.restarts)
    if run.signal:
        run.logger.close()
        raise UserError(f"interrupted by signal {run.signal} at step {run.step}; checkpoint "
                        f"saved (resume with: ebmrun resume={run.run_dir})")
    if not ddp.is_main():  # DDP: rank 0 writes the samples and metrics
        run.logger.close()
        return metrics
    with maybe_applied(run.ema):
        _final_samples(run)
    metric_name = cfg.trainer.objective_metric
    if metric_name not in metrics:
        numeric = sorted(k for k, v in metrics.items() if isinstance(v, float))
        raise UserError(f"trainer.objective_metric={metric_name} is not among this run's "
                        f"metrics (choose from: {', '.join(numeric)})")
    metrics["objective"] = {"name": metric_name, "value": metrics[metric_name]}
    # The curves' last points are the HParams cells; the training and eval values are passed
    # too, for a resumed run whose last step was logged (and purged) by the killed process.
    run.logger.final_metrics({"perf/wall_time_s": metrics["wall_time_s"],
                              "perf/images_per_s": metrics["images_per_s"]}
                             | {f"final/{k}": v for k, v in run.scalars.items()}
                             | {f"final/eval/{k}": v for k, v in run.last_eval.items()}, run.step)
    run.logger.close()
    atomic_write_json(metrics, run.run_dir / "metrics.json")
    return metrics


@torch.no_grad()
def _final_samples(run: RunState, n: int = 100) -> None:
    """samples.pt / samples.png (and chain.png) of the trained model, as ``task=sample``
    with default settings would draw them, so every finished run shows its samples."""
    objective, info = run.parts.objective, run.info
    generator = torch.Generator(device=objective.generator.device).manual_seed(
        seeds.FINAL_SAMPLES.seed(run.cfg.seed))
    every = 32 if info.is_image else 1
    with phase(f"final samples ({run.cfg.model.name})", n, enabled=run.cfg.trainer.progress):
        result = objective.generate(n, generator=generator, snapshot_every=every)
    # The sampler's step count labels the film's last row: the length of its per-step traces.
    steps = next((len(v) for v in result.stats.values() if torch.is_tensor(v) and v.ndim == 1),
                 None)
    data = None if info.is_image else run.data.train[:5000].float()  # drawn behind 2-D samples
    pictures = write_sample_files(run.run_dir, result.x.float().cpu(), result.chain, info,
                                  data=data, snapshot_every=every, steps=steps)
    for name, picture in pictures.items():
        run.logger.image(f"final/{name}", picture, run.step)


def training_step(objective, optimizers: list[torch.optim.Optimizer], x: torch.Tensor,
                  grad_clip: float | None, forward=None, y: torch.Tensor | None = None
                  ) -> dict[str, torch.Tensor]:
    """One optimisation step on batch ``x`` (labels ``y`` for families that use them) with
    one ``grad_clip`` for every group and no schedule (tests, benchmarks); ``forward``:
    DDP's wrapper of the step, if any."""
    return Updater(objective, optimizers, [grad_clip] * len(optimizers),
                   forward=forward)(x, y=y)


def divergence_guard(cfg: DictConfig) -> DivergenceGuard:
    settings = cfg.trainer.divergence
    return DivergenceGuard(policy=cfg.trainer.on_divergence,
                           max_abs_energy=settings.max_abs_energy,
                           lr_factor=settings.lr_factor, max_rollbacks=settings.max_rollbacks)
