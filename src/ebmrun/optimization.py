"""The runner's half of a training step: backward, clip, schedule and step per group.

Objectives only compute losses (:mod:`ebmrun.objectives.base`); everything done with a
loss happens here, the same way for every family: zero the group's gradients, backward
(only into the group's parameters when there are several groups), average the gradients
over DDP ranks where DDP itself does not, clip to ``grad_clip``, set the scheduled
learning rate, step, and update the EMA of the weights.

Per-group settings come from the config: ``trainer.grad_clip`` and ``optim.*`` for every
group, replaced key by key by ``model.optim.<group>`` (e.g. LISTA's warm-up + cosine).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields, replace

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ebmrun import distributed as ddp
from ebmrun.config import VALUE_CHECKS
from ebmrun.errors import UserError


@dataclass(frozen=True)
class GroupSettings:
    """How one parameter group is stepped; the defaults live in ``conf/config.yaml``
    (``trainer.grad_clip``, ``optim.*``)."""

    grad_clip: float | None  # max gradient norm of the group (None: no clipping)
    schedule: str            # constant | exponential | warmup_cosine
    lr_decay: float          # exponential: lr x lr_decay once per epoch
    warmup: float            # warmup_cosine: fraction of the group's updates
    warmup_start: float      # warmup_cosine: lr factor of the first update


def group_settings(cfg: DictConfig, group: str) -> GroupSettings:
    """``trainer.grad_clip`` and ``optim.*``, overridden by ``model.optim.<group>``."""
    base = GroupSettings(grad_clip=cfg.trainer.grad_clip, schedule=cfg.optim.schedule,
                         lr_decay=cfg.optim.lr_decay, warmup=cfg.optim.warmup,
                         warmup_start=cfg.optim.warmup_start)
    node = OmegaConf.select(cfg, f"model.optim.{group}")
    own = {} if node is None else OmegaConf.to_container(node, resolve=True)
    valid = {f.name for f in fields(GroupSettings)}
    for key in own:
        if key not in valid:
            raise UserError(f"unknown key model.optim.{group}.{key} (valid keys: "
                            f"{', '.join(sorted(valid))})")
    # The same value checks as the global keys (config.VALUE_CHECKS).
    checks = {path.rsplit(".", 1)[1]: (test, expected) for path, test, expected in VALUE_CHECKS
              if path in ("trainer.grad_clip", *(f"optim.{k}" for k in valid))}
    for key, value in own.items():
        test, expected = checks[key]
        if not test(value):
            raise UserError(f"model.optim.{group}.{key}={value} is invalid: it must be "
                            f"{expected} (fix: model.optim.{group}.{key}=<value>)")
    return replace(base, **own)


def check_groups(cfg: DictConfig, groups: Iterable[str]) -> None:
    """Every ``model.optim.<group>`` names one of the objective's ``groups``, with valid
    keys and values (run before anything is built: the pre-flight checks)."""
    groups = tuple(groups)
    node = OmegaConf.select(cfg, "model.optim") or {}
    unknown = sorted(set(node) - set(groups))
    if unknown:
        raise UserError(f"model.optim.{unknown[0]}: this model has no parameter group "
                        f"{unknown[0]!r} (groups: {', '.join(groups)})")
    for group in groups:
        group_settings(cfg, group)


class Schedule:
    """A group's learning-rate schedule. ``exponential`` multiplies by ``lr_decay`` at
    every epoch end (torch's ``ExponentialLR``); ``warmup_cosine`` warms up linearly from
    ``warmup_start`` over the first ``warmup`` of the group's updates, then follows a
    cosine to zero at the run's last step; the count starts at the group's first update
    (LISTA's group starts after its dictionary phase). A run limited only by
    ``trainer.max_minutes`` has no last step: there ``budget_used`` (the share of the
    wall-clock budget spent, 0 → 1) drives warm-up and cosine instead, so the learning rate
    reaches zero as the time runs out (such a run is not step-reproducible anyway)."""

    def __init__(self, optimizer: torch.optim.Optimizer, settings: GroupSettings,
                 total_steps: float, budget_used: Callable[[], float] | None = None) -> None:
        self.optimizer, self.settings, self.total_steps = optimizer, settings, total_steps
        self.budget_used = budget_used
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.updates, self.first_step = 0, None
        self._exponential = (torch.optim.lr_scheduler.ExponentialLR(optimizer, settings.lr_decay)
                             if settings.schedule == "exponential" else None)
        if settings.schedule == "warmup_cosine" and math.isinf(total_steps) \
                and budget_used is None:
            raise UserError("schedule=warmup_cosine needs a budget (fix: set "
                            "trainer.max_steps, trainer.max_epochs or trainer.max_minutes)")

    def epoch_end(self) -> None:
        if self._exponential is not None:
            self._exponential.step()

    def before_update(self, step: int) -> None:
        """Set the lr of the group's next update, made during run step ``step`` (1-based)."""
        self.updates += 1
        if self.first_step is None:
            self.first_step = step - 1
        if self.settings.schedule != "warmup_cosine":
            return
        if math.isinf(self.total_steps):  # wall-clock budget: progress is the time spent
            factor = self._cosine(min(self.budget_used(), 1.0), self.settings.warmup, 1.0)
        else:
            total = int(self.total_steps) - self.first_step
            warmup = max(int(total * self.settings.warmup + 1e-9), 1)
            factor = self._cosine(min(self.updates, total), warmup, max(total, warmup + 1))
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    def _cosine(self, t: float, warmup: float, total: float) -> float:
        """The lr factor at progress ``t`` of ``total``: linear from ``warmup_start`` to 1
        up to ``warmup``, then half a cosine down to 0 at ``total``."""
        if t <= warmup:
            start = self.settings.warmup_start
            return start + (1 - start) * t / warmup if warmup > 0 else 1.0
        return 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))

    def scale(self, factor: float) -> None:
        """Scale the learning rates for good (the divergence guard's rollback)."""
        self.base_lrs = [lr * factor for lr in self.base_lrs]
        for group in self.optimizer.param_groups:
            group["lr"] *= factor

    def state_dict(self) -> dict:
        state = {"updates": self.updates, "first_step": self.first_step,
                 "base_lrs": list(self.base_lrs)}
        if self._exponential is not None:
            state["exponential"] = self._exponential.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if "updates" not in state:  # written before schedules were per group: ExponentialLR's
            state = {"updates": 0, "first_step": None, "exponential": state,
                     "base_lrs": list(state.get("base_lrs", self.base_lrs))}
        self.updates, self.first_step = int(state["updates"]), state["first_step"]
        self.base_lrs = list(state["base_lrs"])
        if self._exponential is not None:
            self._exponential.load_state_dict(state["exponential"])


def group_tags(groups: Iterable[str]) -> tuple[str, ...]:
    """The groups' names in TensorBoard tags (``lr/<name>``, ``grad/norm/<name>``): the one
    group of single-loss families (``loss``) is the whole model, ``model``."""
    groups = tuple(groups)
    return ("model",) if groups == ("loss",) else groups


class Updater:
    """Drives one training step of an objective: its losses in, updated weights out.

    Args:
        objective: the :class:`~ebmrun.objectives.base.Objective`.
        optimizers: one per ``objective.groups``, in that order.
        clips: max gradient norm per group (``None``: no clipping).
        schedules: one :class:`Schedule` per group, or ``None`` (lr left alone).
        forward: what computes the losses (default ``objective.training_step``; DDP's
            wrapper of it for one group).
        ema: updated after every step (see :mod:`ebmrun.ema`), or ``None``.
    """

    def __init__(self, objective, optimizers: list[torch.optim.Optimizer],
                 clips: list[float | None], schedules: list[Schedule] | None = None,
                 forward: Callable | None = None, ema=None) -> None:
        groups = tuple(objective.groups)
        if not objective.manual_optimization and len(optimizers) != len(groups):
            raise ValueError(f"{type(objective).__name__} declares groups {groups} but "
                             f"configure_optimizers returned {len(optimizers)} optimizers")
        self.objective, self.optimizers, self.clips = objective, optimizers, clips
        self.schedules, self.forward, self.ema = schedules, forward, ema
        self.index = {group: i for i, group in enumerate(groups)}
        # Several groups run outside DDP's forward: their gradients are averaged here.
        self.sync = ddp.world_size() > 1 and len(groups) > 1
        self.step = 0
        # Each group's gradient norm before clipping at its last update (0-dim tensors, read
        # by the diagnostics callback; clipping computes it anyway).
        self.grad_norms: dict[int, Tensor] = {}
        # Updates per group in the current step, and whether the learning rates are set by
        # the caller instead (a step replayed as a CUDA graph: ebmrun.captured_step).
        self.updates_this_step: dict[int, int] = {}
        self.schedules_outside = False

    def apply_schedules(self, step: int) -> None:
        """Set every group's learning rate for its update in run step ``step`` (what
        :meth:`_update` does group by group when the step runs eagerly)."""
        self.step = step
        for schedule in self.schedules or ():
            schedule.before_update(step)

    def __call__(self, x: Tensor, step: int = 0, y: Tensor | None = None
                 ) -> dict[str, Tensor]:
        """One training step on batch ``x``, run step number ``step`` (1-based; it places
        each group's first update for its schedule); ``y``: the batch's labels, passed on
        to objectives that use them."""
        self.step = step
        self.updates_this_step = {}
        forward = self.forward or self.objective.training_step
        out = forward(x) if y is None else forward(x, y)
        if self.objective.manual_optimization:
            return out
        if isinstance(out, dict):  # one group: the loss under "loss"
            self._update(0, out["loss"], several=False)
        else:
            out = self._drive(out)
        if self.ema is not None:
            self.ema.update()
        return out

    def _drive(self, steps: Iterator[tuple[str, Tensor]]) -> dict[str, Tensor]:
        """Run a multi-group step: update each yielded group before resuming."""
        try:
            group, loss = next(steps)
            while True:
                if group not in self.index:
                    raise ValueError(f"training_step yielded unknown group {group!r} "
                                     f"(declared: {', '.join(self.index)})")
                self._update(self.index[group], loss, several=True)
                group, loss = steps.send(None)
        except StopIteration as done:
            return done.value

    def _update(self, i: int, loss: Tensor, several: bool) -> None:
        optimizer = self.optimizers[i]
        self.updates_this_step[i] = self.updates_this_step.get(i, 0) + 1
        params = [p for g in optimizer.param_groups for p in g["params"]]
        optimizer.zero_grad(set_to_none=True)
        if several:  # only this group's gradients (the others' are neither needed nor kept)
            loss.backward(inputs=params)
        else:
            loss.backward()
        if self.sync:
            ddp.average_gradients(params)
        # One group (as ever): the model's parameters; several: the group's own.
        clipped = params if several else list(self.objective.model.parameters())
        if self.clips[i]:
            self.grad_norms[i] = torch.nn.utils.clip_grad_norm_(clipped, self.clips[i])
        else:
            self.grad_norms[i] = torch.nn.utils.get_total_norm(
                [p.grad for p in clipped if p.grad is not None])
        if self.schedules is not None and not self.schedules_outside:
            self.schedules[i].before_update(self.step)
        optimizer.step()
