"""Evaluation of a trained model: the metrics that fit its family and its data.

``evaluate_model`` is shared by ``task=eval`` and the periodic evaluation while training
(``eval.every``). It asks the objective for its own metrics (NLL bounds, code errors, ...)
and adds the generic ones wherever they apply:

- sample quality (images with an evaluator, i.e. MNIST / Fashion-MNIST): Fréchet distance of
  the evaluator's features against the test split, with the real-vs-real floor of the same
  N beside it, classes present, KL of the class histogram to uniform, mean confidence;
- anomaly AUROC of E(x) (families with an energy): test split against the other
  MNIST-like dataset, uniform noise, and 180°-flipped images;
- exact likelihoods of 2-D energies: grid normaliser, test NLL, KL(target ‖ model).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ebmrun import seeds
from ebmrun.build import build_trained, load_data
from ebmrun.checkpoint import atomic_write_bytes, atomic_write_json
from ebmrun.config import EvalConfig
from ebmrun.data.base import InMemoryData, to_unit_range
from ebmrun.errors import UserError
from ebmrun.logging import RunLogger, figures, plots2d
from ebmrun.metrics.evaluator import RECIPES, Evaluator, get_evaluator
from ebmrun.metrics.inception import inception_fid
from ebmrun.metrics.normaliser import grid_report
from ebmrun.metrics.ood import auroc, flipped, uniform_noise_like
from ebmrun.metrics.real_floor import real_floor
from ebmrun.metrics.sample_quality import reference_stats, sample_quality
from ebmrun.objectives.base import EvalReport, Objective
from ebmrun.objectives.replay_buffer import ReplayBufferCD
from ebmrun.outputs import png_bytes

# The natural outlier set of each MNIST-like dataset (same shape, different content).
OTHER_DATASET = {"mnist": "fashion_mnist", "fashion_mnist": "mnist"}


def eval_settings(cfg: DictConfig) -> EvalConfig:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EvalConfig), cfg.eval))


@torch.no_grad()
def batched_energy(energy: Callable[[Tensor], Tensor | None], x: Tensor, batch: int) -> Tensor:
    """E of ``x`` ``(N, ...)`` in chunks of ``batch``: ``(N,)`` float64 on the CPU."""
    return torch.cat([energy(chunk).double().cpu().flatten() for chunk in x.split(batch)])


def generated_images(objective: Objective, n: int, *, steps: int | None, batch_size: int,
                     generator: torch.Generator,
                     value_range: tuple[float, float]) -> Tensor:
    """``n`` fresh samples ``(n, C, H, W)`` of ``objective`` in [-1, 1] (float, CPU),
    drawn ``batch_size`` at a time with ``steps`` sampler steps (None: the family's
    default), the chunks one after another from ``generator``."""
    chunks, remaining = [], n
    while remaining > 0:
        size = min(remaining, batch_size)
        result = objective.generate(size, steps=steps, generator=generator)
        chunks.append(result.x.detach().float().cpu())
        remaining -= size
    return to_unit_range(torch.cat(chunks), value_range)


def evaluate_model(cfg: DictConfig, objective: Objective, data: InMemoryData,
                   device: torch.device) -> EvalReport:
    """All metrics of ``objective``'s model that fit ``data``; see the module docstring."""
    settings = eval_settings(cfg)
    generator = torch.Generator(device=device).manual_seed(seeds.EVALUATION.seed(cfg.seed))
    test_stored = data.test if settings.max_test is None else data.test[: settings.max_test]
    test = data.to_float(test_stored).to(device)
    model = objective.model
    was_training = model.training
    model.eval()
    try:
        report = EvalReport()
        labels = ({"labels": _test_labels(data, len(test)).to(device)}
                  if objective.uses_labels else {})
        report.update(objective.evaluate(test, settings, generator, **labels))
        if objective.has_energy:
            report.update(_energy_metrics(cfg, objective, data, test, settings, generator))
        if (settings.sample_quality and objective.generates_new_samples and data.is_image
                and data.name in RECIPES):
            report.update(_sample_quality(cfg, objective, data, test, settings, generator))
    finally:
        model.train(was_training)
    return report


def _test_labels(data: InMemoryData, n: int) -> Tensor:
    if data.test_labels is None:
        raise UserError(f"this model is evaluated on class labels and dataset {data.name} has "
                        f"none (fix: evaluate on a labelled dataset, e.g. dataset=mnist)")
    return data.test_labels[:n]


def _min_class_energy(objective: Objective) -> Callable[[Tensor], Tensor]:
    """The class-aware anomaly score min_y E(x, y) (JEM: −max_y f(x)[y])."""
    return lambda x: objective.class_energies(x).min(dim=1).values


def _energy_metrics(cfg: DictConfig, objective: Objective, data: InMemoryData, test: Tensor,
                    settings: EvalConfig, generator: torch.Generator) -> EvalReport:
    report = EvalReport()
    e_test = batched_energy(objective.energy, test, settings.batch_size)
    report.metrics["energy/test_mean"] = float(e_test.mean())
    outliers: dict[str, Tensor] = {}
    if "noise" in settings.ood:
        outliers["noise"] = uniform_noise_like(test, data.value_range, generator)
    if "flip" in settings.ood and data.is_image:
        outliers["flip"] = flipped(test)
    other = OTHER_DATASET.get(data.name)
    if "other" in settings.ood and other is not None:
        outliers[other] = _other_test_split(cfg, other, len(test)).to(test.device)
    for name, x in outliers.items():
        e_out = batched_energy(objective.energy, x, settings.batch_size)
        report.metrics[f"ood/auroc_{name}"] = auroc(e_test, e_out)
        report.metrics[f"energy/{name}_mean"] = float(e_out.mean())
    if objective.conditional and outliers:  # the class-aware score beside E(x)'s
        score = _min_class_energy(objective)
        s_test = batched_energy(score, test, settings.batch_size)
        for name, x in outliers.items():
            report.metrics[f"ood/auroc_{name}_class_energy"] = auroc(
                s_test, batched_energy(score, x, settings.batch_size))
    if data.item_shape == (2,):
        points = torch.cat([data.train, data.test]).to(test.device)
        density = grid_report(objective.energy, test, points, data.box, settings.grid_size)
        report.metrics.update({f"density/{k}": v for k, v in density.items()})
        density_map = plots2d.density_values(objective.energy, data.box,
                                             item_shape=data.item_shape, device=test.device)
        report.figures["density"] = figures.panels_2d(
            [figures.Panel("exp(-E) and test points", values=density_map,
                           overlay=test)], data.box)
    return report


def _other_test_split(cfg: DictConfig, name: str, n: int) -> Tensor:
    """The first ``n`` test items of dataset ``name`` (same root and value range as the
    run's data)."""
    return _load_other(name, cfg.dataset.get("root"), tuple(cfg.dataset.value_range))[:n]


@functools.lru_cache(maxsize=2)
def _load_other(name: str, root: str | None, value_range: tuple[float, float]) -> Tensor:
    """Read once per process: periodic evaluation would otherwise re-read the files."""
    from ebmrun.data.idx import load_idx_dataset

    try:
        other = load_idx_dataset(name=name, root=root, download=False, value_range=value_range)
    except UserError as exc:
        raise UserError(f"eval.ood lists 'other' but {name} is missing ({exc}) (fix: add the "
                        f"files, or drop it: eval.ood=[noise,flip])") from None
    return other.to_float(other.test)


def _sample_quality(cfg: DictConfig, objective: Objective, data: InMemoryData, test: Tensor,
                    settings: EvalConfig, generator: torch.Generator) -> EvalReport:
    """``samples/*``: fresh samples from noise; ``buffer/*``: the replay buffer, where the
    family keeps one. Each with the real-vs-real floor of the same count and the ratio."""
    evaluator = get_evaluator(data.name, cfg.dataset.get("root"))
    n, draws = settings.n_samples, settings.sample_draws
    samples = generated_images(objective, n * draws, steps=settings.sample_steps,
                               batch_size=settings.batch_size, generator=generator,
                               value_range=data.value_range)
    reference = to_unit_range(test.cpu(), data.value_range)
    stats = reference_stats(evaluator, reference)  # once for the floor, draws and buffer
    metrics = _scored(evaluator, samples, stats, data, draws)
    metrics["evaluator_test_accuracy"] = float(evaluator.test_accuracy or 0.0)
    if settings.inception_fid:
        metrics["inception_fid"] = inception_fid(samples, reference)
    # Which evaluator measured them ("mnist-<weights hash>"), beside the numbers in
    # metrics.json: numbers of different evaluators must not be compared. Not a scalar, so
    # log_report and the HParams tab leave it out.
    report = EvalReport(metrics={f"samples/{k}": v for k, v in metrics.items()})
    report.metrics["samples/evaluator"] = evaluator.version
    buffer = objective.replay_samples(settings.n_samples, generator)
    if buffer is not None:
        scored = _scored(evaluator, to_unit_range(buffer.detach().cpu(), data.value_range),
                         stats, data)
        report.metrics.update({f"buffer/{k}": v for k, v in scored.items()})
    return report


def _scored(evaluator: Evaluator, samples: Tensor, stats: tuple[Tensor, Tensor],
            data: InMemoryData, draws: int = 1) -> dict[str, float]:
    """Sample-quality metrics of ``samples`` ``(draws * N, C, H, W)`` in [-1, 1] against the
    reference feature ``stats`` (``reference_stats``): those of
    :func:`~ebmrun.metrics.sample_quality.sample_quality` (with ``draws`` > 1 the median FD
    over the draws and ``frechet_sd``), ``frechet_real_floor`` (the same distance for N real
    training images: the median of 100 fixed draws, the same for every run, see
    :mod:`ebmrun.metrics.real_floor`), ``frechet_real_floor_sd`` (how much one real draw's
    FD spreads: differences of FD smaller than this are the draw, not the model) and
    ``frechet_over_floor`` (FD / floor: 1 = as close as real data of that count)."""
    metrics = sample_quality(evaluator, samples, stats, draws)
    floor = real_floor(evaluator, data, metrics["n_samples"], stats)
    metrics["frechet_real_floor"] = floor.median
    metrics["frechet_real_floor_sd"] = floor.sd
    metrics["frechet_over_floor"] = metrics["frechet"] / floor.median
    return {k: float(v) for k, v in metrics.items()}


def log_report(report: EvalReport, logger: RunLogger, step: int) -> None:
    """Scalars under ``eval/`` and the figures as images, at training step ``step``."""
    logger.scalars({k: v for k, v in report.metrics.items() if not isinstance(v, str)}, step,
                   prefix="eval/")
    for name, figure in report.figures.items():
        logger.image(f"eval/{name}", figure, step)
    logger.flush()


def eval_task(cfg: DictConfig, run_dir: Path, ckpt: dict | None) -> dict:
    """``task=eval``: metrics of a checkpoint (or of a model that needs no training) written
    to ``metrics.json`` (with any tables), ``eval_<figure>.png`` and TensorBoard."""
    data = load_data(cfg)
    parts, info = build_trained(cfg, ckpt, data)
    if tuple(info.item_shape) != tuple(data.item_shape):
        raise UserError(f"the checkpoint was trained on items of shape {info.item_shape} but "
                        f"dataset {data.name} has {data.item_shape} (fix: evaluate on the "
                        f"checkpoint's own dataset)")
    if ckpt is not None and isinstance(parts.objective, ReplayBufferCD):
        # buffer/* scores the trained chains: the checkpoint's buffer, not a new one of noise.
        parts.objective.load_state_dict(ckpt["objective"])
    step = int(ckpt["step"]) if ckpt is not None else 0
    report = evaluate_model(cfg, parts.objective, data, parts.device)
    logger = RunLogger(run_dir)
    log_report(report, logger, step)
    logger.close()
    for name, figure in report.figures.items():
        atomic_write_bytes(run_dir / f"eval_{name.replace('/', '_')}.png", png_bytes(figure))
    metrics = {"task": "eval", "model": cfg.model.name, "dataset": data.name,
               "checkpoint": ckpt["path"] if ckpt else None, "checkpoint_step": step,
               **report.metrics, "tables": report.tables}
    atomic_write_json(metrics, run_dir / "metrics.json")
    for key, value in report.metrics.items():
        print(f"  {key:<32} {value if isinstance(value, str) else format(value, '.6g')}")
    return metrics
