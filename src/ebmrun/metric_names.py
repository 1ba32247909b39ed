"""Which metrics a training run can produce, known before it runs.

``trainer.objective_metric`` names one entry of the run's ``metrics.json``; a name the run
can never produce used to be found only after the whole training (hours for a sweep). The
names are declared where they are made: every objective lists what its ``training_step``
returns and what its ``evaluate`` reports (``Objective.train_metrics`` / ``eval_metrics``,
fnmatch patterns), and :func:`eval_metrics` below lists the generic evaluation's groups
under the same conditions as :func:`ebmrun.evaluation.evaluate_model` computes them
(tests/test_preflight.py checks both against real runs).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import hydra.utils
from omegaconf import DictConfig

from ebmrun.evaluation import OTHER_DATASET
from ebmrun.metrics.evaluator import RECIPES, shipped_path
from ebmrun.objectives.base import Objective

# What the runner adds to every training run's metrics.json (numbers).
RUN_METRICS = ("steps", "epochs", "wall_time_s", "images_per_s")


def objective_class(cfg: DictConfig) -> type[Objective]:
    """The configured objective's class (call after validate_config: it must import)."""
    return hydra.utils.get_object(cfg.model.objective._target_)


def has_energy(objective: type[Objective]) -> bool:
    """Whether the family defines E(x) (the base class returns None)."""
    return objective.energy is not Objective.energy


def eval_metrics(cfg: DictConfig, objective: type[Objective], dataset: str,
                 item_shape: tuple[int, ...]) -> list[str]:
    """The names (patterns, without ``eval/``) an evaluation of ``objective``'s model on
    ``dataset`` (its ``name``, items of ``item_shape``) reports under ``cfg.eval``."""
    settings, image = cfg.eval, len(item_shape) == 3
    names = list(objective.eval_metrics)
    if has_energy(objective):
        outliers = [o for o, wanted in (("noise", "noise" in settings.ood),
                                        ("flip", "flip" in settings.ood and image))
                    if wanted]
        if "other" in settings.ood and dataset in OTHER_DATASET:
            outliers.append(OTHER_DATASET[dataset])
        names += ["energy/test_mean", *(f"ood/auroc_{o}" for o in outliers),
                  *(f"energy/{o}_mean" for o in outliers)]
        if objective.conditional:
            names += [f"ood/auroc_{o}_class_energy" for o in outliers]
        if tuple(item_shape) == (2,):
            names += ["density/log_z", "density/test_nll", "density/kl_target_model"]
    if (settings.sample_quality and objective.generates_new_samples and image
            and dataset in RECIPES):
        names.append("samples/*")
    return names


def quality_metrics(cfg: DictConfig, objective: type[Objective], dataset: str,
                    item_shape: tuple[int, ...]) -> list[str]:
    """The quality probe's last values (:mod:`ebmrun.callbacks.quality`), under the
    conditions it runs: on, reached within a step budget, a generator of images that a
    shipped evaluator scores."""
    every, steps = cfg.trainer.quality_every, cfg.trainer.max_steps
    if not every or (steps is not None and steps < every) or len(item_shape) != 3:
        return []
    if not (objective.generates_new_samples and dataset in RECIPES
            and shipped_path(dataset).is_file()):
        return []
    return ["quality/frechet", "quality/frechet_real_floor"]


def train_metrics(cfg: DictConfig, data: tuple[str, tuple[int, ...]] | None) -> list[str]:
    """The numeric names (patterns) a training run's metrics.json can hold. ``data``:
    (dataset name, item shape), needed only for the ``eval/`` and ``quality/`` names (None:
    leave them out)."""
    objective = objective_class(cfg)
    names = [*RUN_METRICS, *objective.train_metrics]
    if data is not None:
        names += quality_metrics(cfg, objective, *data)
    if cfg.eval.every and data is not None:
        names += [f"eval/{n}" for n in eval_metrics(cfg, objective, *data)]
    return names


def produced(name: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)
