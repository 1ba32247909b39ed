"""``trainer.callbacks``: a user's own side job of the loop, added by config alone."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ebmrun.callbacks import Callback, RunState
from ebmrun.run import train
from conftest import TINY, compose_config


class WriteSteps(Callback):
    """Writes every step it saw, and the loss the scalar logger averaged, to ``name``."""

    def __init__(self, name: str, every: int = 1) -> None:
        self.name, self.every, self.steps, self.losses = name, every, [], []

    def on_step(self, run: RunState, x: torch.Tensor, out: dict) -> None:
        if run.due(self.every):
            self.steps.append(run.step)
            self.losses.append(run.scalars.get("loss"))

    def on_end(self, run: RunState) -> None:
        (run.run_dir / self.name).write_text(json.dumps({"steps": self.steps,
                                                         "losses": self.losses}))


def test_a_callback_from_the_config_runs_at_its_steps_after_the_scalars(
        tmp_path: Path) -> None:
    cfg = compose_config([*TINY, "+trainer.callbacks.mine._target_=test_callbacks.WriteSteps",
                          "+trainer.callbacks.mine.name=seen.json",
                          "+trainer.callbacks.mine.every=2"])
    train(cfg, tmp_path)
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["steps"] == [2, 4]
    # It runs after the scalar logger (log_every=2 in TINY): the step's average is there.
    assert all(isinstance(loss, float) for loss in seen["losses"]), seen


def test_no_callbacks_by_default() -> None:
    assert dict(compose_config([]).trainer.callbacks) == {}
