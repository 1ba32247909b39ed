"""``last.pt`` every ``trainer.ckpt_every`` steps, after the last step, and on a signal."""

from __future__ import annotations

import torch

from ebmrun import distributed as ddp
from ebmrun.callbacks.base import Callback, RunState
from ebmrun.checkpoint import save_checkpoint


class Checkpointer(Callback):
    """Runs after the divergence guard: a diverged step is never saved."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step(self, run: RunState, x: torch.Tensor, out: dict) -> None:
        if (run.due(self.every) or run.signal) and ddp.is_main():
            save_checkpoint(run.payload(), run.run_dir)
