"""The divergence guard: notice a run blowing up, then stop or roll back.

EBM training diverges: energies run off to ±infinity, losses become NaN. After each step
the guard checks every logged value for non-finite numbers and the energy terms (keys
containing ``energy``) against ``trainer.divergence.max_abs_energy``. Then, by
``trainer.on_divergence``:

- ``stop`` (default): end the run with one line naming the step and the values; the last
  good checkpoint is intact (checks run before the step's checkpoint is written).
- ``rollback``: reload the last good checkpoint (weights, optimizers, buffer, RNG, data
  order), multiply every learning rate by ``lr_factor`` and continue; after
  ``max_rollbacks`` rollbacks, stop as above.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ebmrun.errors import UserError


@dataclass
class DivergenceGuard:
    """Detects divergence; counts rollbacks (saved in checkpoints, so resume keeps them)."""

    policy: str = "stop"
    max_abs_energy: float | None = None
    lr_factor: float = 0.5
    max_rollbacks: int = 3
    rollbacks: int = 0

    def check(self, out: dict[str, Tensor | float]) -> str | None:
        """The reason this step diverged (e.g. ``"loss=nan"``), or ``None`` if it is fine."""
        bad = []
        for key, value in out.items():
            value = torch.as_tensor(value).detach()
            if not bool(torch.isfinite(value).all()):
                bad.append(f"{key}={float(value.float().mean()):.4g}")
            elif (self.max_abs_energy is not None and "energy" in key
                  and float(value.abs().max()) > self.max_abs_energy):
                bad.append(f"|{key}|={float(value.abs().max()):.4g} > {self.max_abs_energy:g}")
        return ", ".join(bad) or None

    def can_roll_back(self, has_checkpoint: bool) -> bool:
        return self.policy == "rollback" and has_checkpoint and self.rollbacks < self.max_rollbacks

    def give_up(self, reason: str, step: int, ckpt_path: Path) -> UserError:
        """The one-line error that ends a diverged run."""
        tried = (f" after {self.rollbacks} rollback(s)" if self.policy == "rollback" else "")
        fix = ("lower optim.lr, raise model.objective.alpha, or trainer.on_divergence=rollback"
               if self.policy == "stop" else "lower optim.lr or trainer.divergence.lr_factor")
        if ckpt_path.exists():
            return UserError(f"training diverged at step {step}{tried}: {reason}; the last good "
                             f"checkpoint is {ckpt_path} (fix: {fix}, then resume from it)")
        return UserError(f"training diverged at step {step}{tried}, before the first "
                         f"checkpoint: {reason} (fix: {fix})")

    @staticmethod
    def scale_learning_rates(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] *= factor

    def state_dict(self) -> dict:
        return {"rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict) -> None:
        self.rollbacks = int(state.get("rollbacks", 0))
