"""The divergence guard as a callback: stop, or roll back to the last checkpoint.

See :mod:`ebmrun.divergence` for what counts as diverged and the two policies.
"""

from __future__ import annotations

import torch

from ebmrun import distributed as ddp
from ebmrun.callbacks.base import Callback, RunState
from ebmrun.checkpoint import CKPT_NAME, load_checkpoint, save_checkpoint


class DivergenceCallback(Callback):
    """First among the step's callbacks: nothing is logged or saved of a diverged step.
    ``rewind``: called with the run after a rollback (the loop tells the other callbacks)."""

    def __init__(self, rewind) -> None:
        self.rewind = rewind

    def on_start(self, run: RunState) -> None:
        # rollback needs a checkpoint to go back to, also before the first ckpt_every
        if run.guard.policy == "rollback" and run.step == 0 and ddp.is_main():
            save_checkpoint(run.payload(), run.run_dir)

    def check(self, run: RunState, out: dict) -> None:
        run.diverged = run.guard.check(out)

    def on_step(self, run: RunState, x: torch.Tensor, out: dict) -> bool | None:
        reason, guard, ckpt = run.diverged, run.guard, run.run_dir / CKPT_NAME
        if reason is None:
            return None
        failed_step = run.step
        if not guard.can_roll_back(ckpt.exists()):
            run.logger.text("divergence", f"step {failed_step}: {reason}; stopped", failed_step,
                            code=False)
            run.logger.close()
            raise guard.give_up(reason, failed_step, ckpt)
        run.restore(load_checkpoint(run.run_dir), rollback=True)
        guard.rollbacks += 1
        for schedule in run.schedules:
            schedule.scale(guard.lr_factor)
        run.logger.close()  # reopen: drop the events logged after the good checkpoint
        run.open_logger(purge_step=run.step)
        run.logger.scalars({"divergence/rollbacks": guard.rollbacks}, run.step)
        run.logger.text("divergence", f"step {failed_step}: {reason}; rolled back to step "
                        f"{run.step}, learning rates x{guard.lr_factor}", run.step, code=False)
        self.rewind(run)
        return True
