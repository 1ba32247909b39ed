"""Train once with ebmrun and keep an EMA of the weights at several decays, to pick optim.ema.

    python scripts/ema_decays.py --decays 0.99 0.995 0.998 --at 3000 4000 -- \\
        experiment=deep_ebm_shortrun_mnist device.threads=1 seed=3
    ebmrun task=eval ckpt=<run dir>/ema_0.99_step4000.pt eval.ood=[] eval.sample_draws=3

Runs ``ebmrun <overrides>`` as typed, with one more callback (this file's
:class:`KeepEMAs`, added through ``trainer.callbacks``, the runner's hook for side jobs).
The extra averages only read the weights after each step (no RNG, no training state), so
the run is the plain run, bit for bit, and an EMA here equals ``optim.ema=<decay>`` of
that run. At each step in ``--at`` it writes, beside ``last.pt``, one complete checkpoint
per decay, ``ema_<decay>_step<N>.pt`` (the live weights of step N with that decay's average
as its EMA), and ``live_step<N>.pt`` (no EMA: samples from the live weights). ``task=sample`` and
``task=eval`` take any of them as ``ckpt``. The README's EMA table was measured this way.
A step the divergence guard undoes is not averaged here (the run's own EMA is rolled back
with it): after a rollback the kept averages are close to, not equal to, ``optim.ema``'s.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ebmrun.callbacks import Callback, RunState
from ebmrun.checkpoint import save_checkpoint
from ebmrun.cli import main as ebmrun_main
from ebmrun.ema import EMA
from ebmrun.errors import UserError


class KeepEMAs(Callback):
    """An :class:`~ebmrun.ema.EMA` per decay, saved as checkpoints at the chosen steps."""

    def __init__(self, decays: list[float], at: list[int]) -> None:
        self.decays, self.at = decays, set(at)
        self.averages: dict[float, EMA] = {}

    def on_start(self, run: RunState) -> None:
        if run.step:  # the averages would start from a resumed run's weights, not step 0's
            raise UserError("scripts/ema_decays.py averages from step 0 (fix: start a new "
                            "run instead of resume=...)")
        self.averages = {d: EMA(run.parts.model, d) for d in self.decays}

    def on_step(self, run: RunState, x: torch.Tensor, out: dict) -> None:
        for average in self.averages.values():
            average.update()
        if run.step in self.at:
            for decay, average in [(None, None), *self.averages.items()]:
                payload = run.payload()  # a fresh config dict each time: edited below
                payload["config"]["optim"]["ema"] = decay
                # Without this callback: the file resumes or scores with plain ebmrun.
                payload["config"]["trainer"]["callbacks"].pop("keep_emas", None)
                payload.pop("ema", None)
                if average is not None:
                    payload["ema"] = average.state_dict()
                name = f"live_step{run.step}.pt" if decay is None else \
                    f"ema_{decay:g}_step{run.step}.pt"
                save_checkpoint(payload, run.run_dir, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decays", type=float, nargs="+", required=True)
    parser.add_argument("--at", type=int, nargs="+", required=True, help="steps to save at")
    parser.add_argument("overrides", nargs="*", help="ebmrun overrides (after --)")
    args = parser.parse_args()
    if not all(0 < d < 1 for d in args.decays):
        parser.error(f"every decay must be in (0, 1), got {args.decays}")
    keep = "+trainer.callbacks.keep_emas"
    ebmrun_main([*args.overrides, f"{keep}._target_=__main__.KeepEMAs",
                 f"{keep}.decays=[{','.join(map(str, args.decays))}]",
                 f"{keep}.at=[{','.join(map(str, args.at))}]"])


if __name__ == "__main__":
    sys.exit(main())
