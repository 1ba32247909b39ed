"""Everything a run needs, constructed from the composed config.

Config nodes with a ``_target_`` build objects; their keys and value types are checked
against the target's signature first, so a typo or a wrong type is one clear line instead
of a traceback from deep inside a constructor. Data-dependent arguments (item shape, box,
the model for an objective) are passed at build time, never written into the user's config.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from types import NoneType, UnionType
from typing import Any

import hydra.utils
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, ListConfig, OmegaConf

from ebmrun import seeds
from ebmrun.checkpoint import load_model_state
from ebmrun.config import check_values
from ebmrun.data.base import BatchIterator, InMemoryData
from ebmrun.device import resolve_device
from ebmrun.distributed import rank_seed
from ebmrun.errors import UserError
from ebmrun.objectives.base import OPTIMIZERS, DataInfo, Objective, OptimSettings
from ebmrun.optimization import check_groups
from ebmrun.samplers.base import Sampler

RESERVED = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}


def _type_ok(value: Any, annotation: Any) -> bool:
    """Loose runtime check of a config value against a type hint (unknown hints pass)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is NoneType:
        return value is None
    if value is None:
        return False
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (bool, str):
        return isinstance(value, annotation)
    if origin in (list, tuple, Sequence, typing.Sequence) or annotation in (list, tuple):
        return isinstance(value, (list, tuple, ListConfig))
    return True


def target_of(node: DictConfig, where: str, fix: str = "check the class path") -> Any:
    """The class or function a ``_target_`` node names, or a one-line :class:`UserError`
    (``fix``: its advice when the path does not import)."""
    target_path = node.get("_target_")
    if target_path is None:
        raise UserError(f"{where} has no _target_ (fix: pick a config from the {where} group)")
    # Hydra logs a multi-line error before re-raising; the user gets our one line instead.
    hydra_log = logging.getLogger("hydra.utils")
    was_disabled, hydra_log.disabled = hydra_log.disabled, True
    try:
        return hydra.utils.get_object(target_path)
    except Exception:
        raise UserError(f"{where}._target_={target_path} cannot be imported "
                        f"(fix: {fix})") from None
    finally:
        hydra_log.disabled = was_disabled


def check_target_node(node: DictConfig, where: str, injected: Sequence[str] = ()) -> None:
    """Check a ``_target_`` node's keys and value types against the target's signature.

    ``injected`` names the arguments the runner passes itself (e.g. ``model``, ``item_shape``).
    """
    if not isinstance(node, DictConfig):
        raise UserError(f"{where}={node!r} is not a config node (fix: pick an option of the "
                        f"{where.split('.')[0]} group, or set keys as {where}.<key>=<value>)")
    target = target_of(node, where)
    signature = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:
        hints = {}
    params = signature.parameters
    for key, value in node.items():
        if key in RESERVED:
            continue
        if key not in params or key in injected:
            valid = sorted(k for k in params if k not in injected and k != "self")
            close = difflib.get_close_matches(str(key).lower(), valid, n=1)
            hint = f" (did you mean {where}.{close[0]}?)" if close else ""
            raise UserError(f"unknown key {where}.{key}{hint} (valid keys: {', '.join(valid)})")
        if isinstance(value, DictConfig):
            continue
        plain = OmegaConf.to_object(value) if isinstance(value, ListConfig) else value
        if not _type_ok(plain, hints.get(key, inspect.Parameter.empty)):
            expected = getattr(hints[key], "__name__", str(hints[key]))
            raise UserError(f"{where}.{key}={plain!r} has the wrong type: expected {expected}")
    for name, param in params.items():
        if (param.default is inspect.Parameter.empty and name not in node and name != "self"
                and name not in injected and param.kind not in (param.VAR_POSITIONAL,
                                                                param.VAR_KEYWORD)):
            raise UserError(f"{where}.{name} is required (fix: {where}.{name}=<value>)")
        if name in node and OmegaConf.is_missing(node, name):
            raise UserError(f"{where}.{name} must be set (fix: {where}.{name}=<value>)")


def instantiate(node: DictConfig, where: str, **injected: Any) -> Any:
    """Validate then build ``node`` with the runner's ``injected`` objects.

    The config part is turned into a ``functools.partial`` first, so injected objects
    (models, dataclasses) are passed as they are instead of being converted to configs.
    A constructor's ``ValueError`` becomes a one-line :class:`UserError`.
    """
    check_target_node(node, where, tuple(injected))
    try:
        factory = hydra.utils.instantiate(node, _convert_="all", _partial_=True)
        return factory(**injected)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, UserError):
            raise cause from None
        raise
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None


def validate_config(cfg: DictConfig) -> None:
    """All checks that need no data or checkpoint: values, and every ``_target_`` node."""
    check_values(cfg)
    if cfg.optim.name not in OPTIMIZERS:
        raise UserError(f"optim.name={cfg.optim.name} is invalid: choose from "
                        f"{', '.join(OPTIMIZERS)}")
    check_target_node(cfg.dataset, "dataset")
    node, box_from_data = sampler_node(cfg)
    # Built once here (cheap) so its own checks, e.g. adapt_steps < steps, run pre-flight;
    # the data's box is not known yet, any valid box stands in for it.
    instantiate(node, "sampler", **({"box": [-1.0, 1.0]} if box_from_data else {}))
    check_target_node(cfg.model.net, "model.net", ("item_shape",))
    check_target_node(cfg.model.objective, "model.objective",
                      ("model", "sampler", "data", "generator"))
    objective_class = hydra.utils.get_object(cfg.model.objective._target_)
    check_groups(cfg, getattr(objective_class, "groups", ("loss",)))


def sampler_node(cfg: DictConfig) -> tuple[DictConfig, bool]:
    """The sampler config without ``box: data``, and whether it asked for the data's box
    (which is then injected at build time)."""
    node = OmegaConf.create(OmegaConf.to_container(cfg.sampler, resolve=True))
    box_from_data = node.get("box") == "data"
    if box_from_data:
        del node["box"]
    return node, box_from_data


@dataclass
class Components:
    """A model family ready to train or sample."""

    device: torch.device
    model: torch.nn.Module
    sampler: Sampler
    objective: Objective
    generator: torch.Generator


def build_components(cfg: DictConfig, data_info: DataInfo) -> Components:
    """Device, model, sampler and objective; the model is initialised from ``cfg.seed``."""
    device = resolve_device(OmegaConf.to_object(cfg.device))
    torch.manual_seed(seeds.MODEL_INIT.seed(cfg.seed))
    model = instantiate(cfg.model.net, "model.net", item_shape=list(data_info.item_shape))
    model = model.to(device)
    node, box_from_data = sampler_node(cfg)
    sampler = instantiate(node, "sampler", **({"box": list(data_info.box)} if box_from_data else {}))
    sampler.cuda_graphs = bool(cfg.device.cuda_graphs)
    # Under DDP each rank samples its own negatives / replay buffer: seeds differ by rank.
    generator = torch.Generator(device=device).manual_seed(rank_seed(seeds.SAMPLER.seed(cfg.seed)))
    objective = instantiate(cfg.model.objective, "model.objective", model=model,
                            sampler=sampler, data=data_info, generator=generator)
    return Components(device, model, sampler, objective, generator)


def build_trained(cfg: DictConfig, ckpt: dict | None,
                  data: InMemoryData | None = None) -> tuple[Components, DataInfo]:
    """The components of a trained model for ``task=sample``/``eval``: built with the data
    info saved in ``ckpt`` and its weights loaded; ``ckpt=None`` builds a model that needs
    no training from ``cfg`` and the configured dataset (``data``, loaded if not given)."""
    if ckpt is None:
        info = data_info_of(data if data is not None else load_data(cfg))
    else:
        info = DataInfo(**{k: tuple(v) for k, v in ckpt["data_info"].items()})
    parts = build_components(cfg, info)
    if ckpt is not None:
        load_model_state(parts.model, ckpt, ema=True)
    return parts, info


def load_data(cfg: DictConfig) -> InMemoryData:
    data = instantiate(cfg.dataset, "dataset")
    if not isinstance(data, InMemoryData):
        raise UserError(f"dataset._target_ must return InMemoryData, got {type(data).__name__}")
    return data


def data_info_of(data: InMemoryData) -> DataInfo:
    return DataInfo(item_shape=data.item_shape, value_range=tuple(data.value_range),
                    box=tuple(data.box))


def optim_settings(cfg: DictConfig) -> OptimSettings:
    return OptimSettings(name=cfg.optim.name, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                         weight_decay=cfg.optim.weight_decay, fused=cfg.optim.fused)


def make_batches(cfg: DictConfig, data: InMemoryData) -> BatchIterator:
    """The training order; a batch larger than the training split is refused (it used to be
    capped silently while config.yaml kept the asked size)."""
    size, n = cfg.trainer.batch_size, len(data.train)
    if size > n:
        raise UserError(f"trainer.batch_size={size} is larger than the {n} training items of "
                        f"{data.name} (fix: trainer.batch_size=<at most {n}>)")
    return BatchIterator(n, size, seed=seeds.DATA_ORDER.seed(cfg.seed))
