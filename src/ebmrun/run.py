"""``task=train``: one readable loop; everything else is built.

Checkpoint payload (``last.pt``): ``config`` (the composed config as a dict), ``data_info``,
``model``, ``objective`` (replay buffer, ...), ``optimizers``, ``schedulers``, ``step``,
``epoch``, ``batches`` (data order), ``rng`` (torch + sampler generator), ``elapsed_s``.
"""

from __future__ import annotations

import math
import signal
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ebmrun import distributed as ddp
from ebmrun.build import (build_components, data_info_of, load_data, make_batches,
                          optim_settings)
from ebmrun.checkpoint import (CKPT_NAME, atomic_write_bytes, atomic_write_json, load_checkpoint,
                               load_model_state, save_checkpoint)
from ebmrun.divergence import DivergenceGuard
from ebmrun.errors import UserError
from ebmrun.evaluation import evaluate_model, log_report
from ebmrun.logging import RunLogger
from ebmrun.objectives.base import DataInfo
from ebmrun.outputs import write_sample_files


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


def train(cfg: DictConfig, run_dir: Path, resume_ckpt: dict | None = None) -> dict:
    """Train ``cfg.model`` on ``cfg.dataset``; returns the final metrics dict."""
    data = load_data(cfg)
    info = data_info_of(data)
    parts = build_components(cfg, info)
    objective, device = parts.objective, parts.device
    optimizers = objective.configure_optimizers(optim_settings(cfg))
    schedulers = [torch.optim.lr_scheduler.ExponentialLR(o, cfg.optim.lr_decay) for o in optimizers]
    batches = make_batches(cfg, data)
    train_set = data.train.to(device)
    guard = divergence_guard(cfg)
    step, elapsed = 0, 0.0
    if resume_ckpt is not None:
        step, elapsed = _restore(resume_ckpt, parts, optimizers, schedulers, batches, guard)
    forward = ddp.step_function(objective, batches.batch_size)  # DDP under torchrun
    total = total_steps(cfg, batches.batches_per_epoch)
    minutes = cfg.trainer.max_minutes
    if resume_ckpt is not None and minutes is not None and elapsed >= 60.0 * minutes:
        raise UserError(f"this run already used its {minutes:g}-minute budget (fix: resume "
                        f"with a larger one, e.g. trainer.max_minutes={2 * minutes:g})")
    # A run killed after its last checkpoint but before metrics.json still needs its ending.
    if resume_ckpt is not None and step >= total and (run_dir / "metrics.json").exists():
        raise UserError(f"this run already finished ({step} of {total} steps) (fix: resume with "
                        f"a larger budget, e.g. trainer.max_steps={max(total, 1) * 2})")
    # Written only now: a refused resume leaves the run dir as it was. (DDP: rank 0 alone
    # writes the run dir.)
    if ddp.is_main():
        atomic_write_bytes(run_dir / "config.yaml", OmegaConf.to_yaml(cfg).encode())

    logger = ddp.run_logger(run_dir, purge_step=step if resume_ckpt else None)
    if resume_ckpt is None:
        logger.text("config", OmegaConf.to_yaml(cfg))
    window: dict[str, list[float]] = defaultdict(list)
    final: dict[str, float] = dict(resume_ckpt.get("last_scalars", {})) if resume_ckpt else {}
    images_seen, t_start = 0, time.perf_counter()
    eval_every, last_eval = cfg.eval.every, {}
    max_seconds = None if minutes is None else 60.0 * minutes
    if guard.policy == "rollback" and resume_ckpt is None and ddp.is_main():  # to roll back to
        save_checkpoint(_payload(cfg, info, parts, optimizers, schedulers, batches, 0, 0.0,
                                 guard), run_dir)
    epoch = batches.epoch
    bar = tqdm(total=None if math.isinf(total) else total, initial=step, dynamic_ncols=True,
               disable=not cfg.trainer.progress or not ddp.is_main(),
               desc=f"train {cfg.model.name}")
    with StopRequested() as stop:
        while step < total:
            x = data.to_float(train_set[ddp.shard(batches.next_indices()).to(device)])
            if batches.epoch != epoch:  # an epoch ended: per-epoch lr decay
                epoch = batches.epoch
                for scheduler in schedulers:
                    scheduler.step()
            out = training_step(objective, optimizers, x, cfg.trainer.grad_clip, forward)
            step += 1
            images_seen += x.shape[0] * ddp.world_size()
            timed_out = bool(max_seconds) and elapsed + time.perf_counter() - t_start >= max_seconds
            reason, timed_out, stop.signal = ddp.agree(guard.check(out), timed_out, stop.signal)
            if reason is not None:
                if not guard.can_roll_back((run_dir / CKPT_NAME).exists()):
                    logger.text("divergence", f"step {step}: {reason}; stopped", step)
                    logger.close()
                    raise guard.give_up(reason, step, run_dir / CKPT_NAME)
                failed_step = step
                step, _ = _restore(load_checkpoint(run_dir), parts, optimizers, schedulers,
                                   batches, guard=None)
                guard.rollbacks += 1
                guard.scale_learning_rates(optimizers, guard.lr_factor)
                epoch, window = batches.epoch, defaultdict(list)
                logger.close()  # reopen: drop the events logged after the good checkpoint
                logger = ddp.run_logger(run_dir, purge_step=step)
                logger.scalars({"divergence/rollbacks": guard.rollbacks}, step)
                logger.text("divergence", f"step {failed_step}: {reason}; rolled back to step "
                            f"{step}, learning rates x{guard.lr_factor}", step)
                bar.n = step
                continue
            if timed_out:
                total = step  # the wall-clock budget is spent: this step is the last
            for key, value in out.items():
                window[key].append(float(value.detach()) if torch.is_tensor(value)
                                   else float(value))
            if step % cfg.trainer.log_every == 0 or step == total:
                final = {k: sum(v) / len(v) for k, v in window.items()}
                window.clear()
                logger.scalars(final, step, prefix="train/")
                logger.scalars({f"lr/{i}": o.param_groups[0]["lr"]
                                for i, o in enumerate(optimizers)}, step)
                bar.set_postfix(loss=f"{final.get('loss', float('nan')):.4f}")
            if (step % cfg.trainer.image_every == 0 or step == total) and ddp.is_main():
                _log_pictures(objective, logger, data, x, step, cfg.seed)
            if eval_every and (step % eval_every == 0 or step == total) and ddp.is_main():
                report = evaluate_model(cfg, objective, data, device)
                log_report(report, logger, step)
                last_eval = report.metrics
            if (step % cfg.trainer.ckpt_every == 0 or step == total or stop.signal) \
                    and ddp.is_main():
                save_checkpoint(_payload(cfg, info, parts, optimizers, schedulers, batches, step,
                                         elapsed + time.perf_counter() - t_start, guard, final),
                                run_dir)
            bar.update(1)
            if stop.signal:
                break
    bar.close()
    wall = time.perf_counter() - t_start
    metrics = {"task": "train", "model": cfg.model.name, "dataset": data.name, "steps": step,
               "epochs": step / batches.batches_per_epoch, "wall_time_s": elapsed + wall,
               "images_per_s": images_seen / max(wall, 1e-9), **final,
               **{f"eval/{k}": v for k, v in last_eval.items()}}
    if stop.signal:
        logger.close()
        raise UserError(f"interrupted by signal {stop.signal} at step {step}; checkpoint saved "
                        f"(resume with: ebmrun resume={run_dir})")
    if not ddp.is_main():  # DDP: rank 0 writes the samples and metrics
        logger.close()
        return metrics
    _final_samples(objective, info, run_dir, logger, step, cfg.seed)
    metric_name = cfg.trainer.objective_metric
    if metric_name not in metrics:
        numeric = sorted(k for k, v in metrics.items() if isinstance(v, float))
        raise UserError(f"trainer.objective_metric={metric_name} is not among this run's "
                        f"metrics (choose from: {', '.join(numeric)})")
    metrics["objective"] = {"name": metric_name, "value": metrics[metric_name]}
    logger.hparams(_hparams(cfg), {f"final/{k}": v for k, v in final.items()}
                   | {f"final/eval/{k}": v for k, v in last_eval.items()})
    logger.close()
    atomic_write_json(metrics, run_dir / "metrics.json")
    return metrics


def training_step(objective, optimizers: list[torch.optim.Optimizer], x: torch.Tensor,
                  grad_clip: float | None, forward=None) -> dict[str, torch.Tensor]:
    """One optimisation step on batch ``x``: the objective's loss, backward, clip, update
    (objectives with ``manual_optimization`` step their own optimizers). ``forward``:
    what computes the losses (default ``objective.training_step``; DDP's wrapper of it)."""
    out = (forward or objective.training_step)(x)
    if not objective.manual_optimization:
        optimizers[0].zero_grad(set_to_none=True)
        out["loss"].backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(objective.model.parameters(), grad_clip)
        optimizers[0].step()
    return out


@torch.no_grad()
def _log_pictures(objective, logger: RunLogger, data, x: torch.Tensor, step: int, seed: int
                  ) -> None:
    # A separate generator: pictures never change the training random stream.
    generator = torch.Generator(device=x.device).manual_seed(seed * 1_000_003 + step)
    if data.is_image:
        logger.images("images/data", x[:64], step, data.value_range)
    for name, images in objective.visuals(generator).items():
        logger.images(f"images/{name}", images, step, data.value_range)
    for name, values in objective.histograms().items():
        logger.histogram(name, values, step)
    logger.flush()


@torch.no_grad()
def _final_samples(objective, info: DataInfo, run_dir: Path, logger: RunLogger, step: int,
                   seed: int, n: int = 100) -> None:
    """samples.pt / samples.png (and chain.png) of the trained model, as ``task=sample``
    with default settings would draw them, so every finished run shows its samples."""
    generator = torch.Generator(device=objective.generator.device).manual_seed(seed)
    result = objective.generate(n, generator=generator,
                                snapshot_every=32 if info.is_image else 1)
    pictures = write_sample_files(run_dir, result.x.float().cpu(), result.chain, info)
    for name, picture in pictures.items():
        logger.writer.add_image(f"final/{name}", picture, step)


def _payload(cfg, info: DataInfo, parts, optimizers, schedulers, batches, step: int,
             elapsed: float, guard: DivergenceGuard, final: dict | None = None) -> dict:
    rng = {"torch": torch.get_rng_state(), "sampler": parts.generator.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"config": OmegaConf.to_container(cfg, resolve=True), "data_info": asdict(info),
            "model": parts.model.state_dict(), "objective": parts.objective.state_dict(),
            "optimizers": [o.state_dict() for o in optimizers],
            "schedulers": [s.state_dict() for s in schedulers], "step": step,
            "epoch": batches.epoch, "batches": batches.state_dict(), "rng": rng,
            "elapsed_s": elapsed, "divergence": guard.state_dict(),
            "last_scalars": dict(final or {})}


def _restore(ckpt: dict, parts, optimizers, schedulers, batches,
             guard: DivergenceGuard | None) -> tuple[int, float]:
    """Load a checkpoint's training state; returns (step, elapsed seconds). ``guard=None``
    keeps the guard's own rollback count (a rollback must not reset it)."""
    load_model_state(parts.model, ckpt)
    parts.objective.load_state_dict(ckpt["objective"])
    for optimizer, state in zip(optimizers, ckpt["optimizers"], strict=True):
        optimizer.load_state_dict(state)
    for scheduler, state in zip(schedulers, ckpt["schedulers"], strict=True):
        scheduler.load_state_dict(state)
    batches.load_state_dict(ckpt["batches"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    parts.generator.set_state(ckpt["rng"]["sampler"])
    ddp.reseed_restored(parts.generator)  # DDP: ranks > 0 draw their own noise again
    if "cuda" in ckpt["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    if guard is not None:
        guard.load_state_dict(ckpt.get("divergence", {}))
    return int(ckpt["step"]), float(ckpt.get("elapsed_s", 0.0))


def divergence_guard(cfg: DictConfig) -> DivergenceGuard:
    settings = cfg.trainer.divergence
    return DivergenceGuard(policy=cfg.trainer.on_divergence,
                           max_abs_energy=settings.max_abs_energy,
                           lr_factor=settings.lr_factor, max_rollbacks=settings.max_rollbacks)


def _hparams(cfg: DictConfig) -> dict:
    """A few headline settings for TensorBoard's HParams tab."""
    return {"model": cfg.model.name, "dataset": str(cfg.dataset.get("name", "")),
            "seed": cfg.seed, "lr": cfg.optim.lr, "batch_size": cfg.trainer.batch_size,
            "sampler": str(cfg.sampler.get("_target_", "")).rsplit(".", 1)[-1],
            "sampler_steps": int(cfg.sampler.get("steps", 0) or 0)}
