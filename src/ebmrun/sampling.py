"""``task=sample``: draw samples from a trained model (or one that needs no training)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ebmrun import composition
from ebmrun.build import build_trained, load_data
from ebmrun.checkpoint import atomic_write_bytes
from ebmrun.errors import UserError
from ebmrun.metrics.chains import convergence_metrics
from ebmrun.outputs import png_bytes, write_samples


def sample(cfg: DictConfig, run_dir: Path, ckpt: dict | None) -> dict:
    """Draw ``cfg.sample.n`` samples from a trained model; writes samples.pt/png, metrics.

    ``ckpt=None``: a model that needs no training (e.g. ``model=analytic``), built from
    ``cfg`` with the configured dataset's shape and box.
    """
    parts, info = build_trained(cfg, ckpt)
    parts.model.eval()
    plan = (composition.Plan(cfg, parts.objective, info) if composition.requested(cfg)
            else None)
    parts.sampler.record_chains = True  # per-chain traces for R-hat / ESS / KSD
    generator = torch.Generator(device=parts.device).manual_seed(cfg.seed)
    snapshot_every = cfg.sample.snapshot_every
    chunks, chain, stats, traces, results, first_every = [], [], defaultdict(list), {}, [], 0
    remaining = cfg.sample.n
    with tqdm(total=cfg.sample.n, desc=f"sample {cfg.model.name}", dynamic_ncols=True) as bar:
        while remaining > 0:
            n = min(remaining, cfg.sample.batch_size)
            every = snapshot_every if snapshot_every is not None else 0
            if not chunks and every == 0:  # points: every step, for smooth trajectories
                every = max((cfg.sample.steps or 64) // 8, 1) if info.is_image else 1
            if plan is None:
                result = parts.objective.generate(n, steps=cfg.sample.steps,
                                                  generator=generator, snapshot_every=every)
            else:
                result = plan.generate(n, cfg.sample.n - remaining, cfg.sample.n,
                                       steps=cfg.sample.steps, generator=generator,
                                       snapshot_every=every)
            first_every = first_every or every
            chunks.append(result.x.float().cpu())
            results.append(result)
            chain = chain or result.chain
            traces = traces or {k: v for k, v in result.stats.items() if torch.is_tensor(v)}
            for key, value in result.summary().items():
                stats[key].append(value)
            remaining -= n
            bar.update(n)
    samples = torch.cat(chunks)
    # The steps the sampler ran (sample.steps, or the model's default when null): the length
    # of its per-step traces; 0 when no sampler ran (e.g. a generator or decoder drew them).
    steps = max((len(v) for v in traces.values() if v.dim() == 1), default=0)
    metrics = {"task": "sample", "model": cfg.model.name, "n": len(samples),
               "sampler_steps": steps,
               "checkpoint": ckpt["path"] if ckpt else None,
               "checkpoint_step": ckpt["step"] if ckpt else 0,
               **{f"sampler/{k}": sum(v) / len(v) for k, v in stats.items()},
               **convergence_metrics(results)}
    if plan is not None:
        metrics.update(plan.describe())
        metrics.update(plan.score(samples, cfg.dataset.get("name", ""), cfg.dataset.get("root")))
        grid = plan.grid(samples)
        if grid is not None:
            atomic_write_bytes(run_dir / "conditional_grid.png", png_bytes(grid))
    data = None if info.is_image else _data_points(cfg, ckpt, tuple(info.item_shape))
    write_samples(run_dir, samples, chain, info, metrics, traces, data=data,
                  snapshot_every=first_every, steps=cfg.sample.steps)
    return metrics


def _data_points(cfg: DictConfig, ckpt: dict | None, item_shape: tuple[int, ...]
                 ) -> torch.Tensor | None:
    """Training points ``(≤5000, 2)`` of the model's own data set, drawn behind 2-D samples
    (toy sets are made in code: cheap); ``None`` when they do not match the model."""
    data_cfg = OmegaConf.create(ckpt["config"]) if ckpt and "config" in ckpt else cfg
    try:
        data = load_data(data_cfg)
    except (UserError, OSError):  # a missing background must not fail the samples
        return None
    return data.train[:5000].float() if tuple(data.item_shape) == item_shape else None
