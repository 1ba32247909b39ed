"""What a run's row in TensorBoard's HParams tab holds: the settings that shaped the model.

``run_hparams`` collects, under their config keys (so a value can be pasted back on the
command line): the model, data and seed; the optimisation settings; every setting of the
family's training recipe (``model.objective.*``); the sampler and its settings only when the
family samples with it; and whatever the job's overrides set (a sweep's swept keys, e.g.
``model.net.mlp_hidden``). Settings that do not apply to a run are left out, not shown as
defaults: an EBGAN row has no sampler, a deep-EBM row has its Langevin settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Training settings every family shares.
COMMON_KEYS = ("model.name", "dataset.name", "seed", "trainer.batch_size", "trainer.max_steps",
               "trainer.grad_clip", "optim.name", "optim.lr", "optim.weight_decay",
               "optim.lr_decay")
# Overrides that change where or how fast a run goes, not what it learns.
NOT_HPARAMS = ("ckpt", "resume", "device", "trainer.progress", "trainer.log_every",
               "trainer.image_every", "trainer.ckpt_every", "trainer.quality_", "sweep.",
               "hparams_search", "hydra.", "eval.", "sample.", "task")


def _leaves(node: Any, prefix: str) -> dict[str, Any]:
    """Scalar and list leaves of a config node, as ``prefix.key`` -> value (no ``_target_``)."""
    if not isinstance(node, Mapping):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key != "_target_":
            out.update(_leaves(value, f"{prefix}.{key}"))
    return out


def _override_keys(overrides: Iterable[str]) -> list[str]:
    keys = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if "=" in override and not key.startswith(NOT_HPARAMS) and key not in NOT_HPARAMS:
            keys.append(key)
    return keys


def job_overrides() -> list[str]:
    """The overrides of the running Hydra job (empty outside Hydra, e.g. in tests)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def run_hparams(cfg: DictConfig, *, sampler_used: bool,
                overrides: Iterable[str] | None = None) -> dict[str, Any]:
    """The HParams of a training run (config key -> value; lists and ``None`` as they are,
    :func:`ebmrun.logging.run_logger.hparam_value` turns them into text).

    Args:
        cfg: the composed config.
        sampler_used: whether the family's samples or training come from ``cfg.sampler``
            (the objective declares it); otherwise no ``sampler*`` key is shown.
        overrides: the job's command-line overrides (default: Hydra's, when running).
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    flat = _leaves({k: v for k, v in container.items() if k != "hydra"}, "")
    flat = {k.lstrip("."): v for k, v in flat.items()}
    out = {key: flat[key] for key in COMMON_KEYS if key in flat}
    out.update({k: v for k, v in flat.items() if k.startswith("model.objective.")})
    if sampler_used:
        out["sampler"] = str(cfg.sampler.get("_target_", "")).rsplit(".", 1)[-1]
        out.update({k: v for k, v in flat.items() if k.startswith("sampler.")})
    for key in _override_keys(job_overrides() if overrides is None else overrides):
        # Group choices (model=..., sampler=...) are not leaves: model.name etc. show them.
        if key in flat and (sampler_used or not key.startswith("sampler")):
            out[key] = flat[key]
    return out
