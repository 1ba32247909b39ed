"""A cheap sample-quality curve while training, without ``eval.every``.

Every ``trainer.quality_every`` steps (and at the last step of a run that reached the first
probe), on image data with a shipped evaluator (MNIST, Fashion-MNIST) and for families that
generate new samples, rank 0 logs

- ``quality/frechet``: Fréchet distance, in the evaluator's features, between
  ``trainer.quality_samples`` fresh samples (drawn the family's way, ``generate`` with
  ``trainer.quality_steps`` sampler steps or the family's default) and the first
  :data:`REFERENCE_TEST` test images;
- ``quality/frechet_real_floor``: the same distance for as many real training images (the
  median of 100 fixed draws, :mod:`ebmrun.metrics.real_floor`), the value a perfect sampler
  would get with this few samples (the FD of a small sample is biased upwards: compare the
  curve with its floor and its earlier points, not with an ``eval/samples/frechet`` of more
  samples).

The reference statistics are computed once per process (about 2 s on one CPU thread), the
floor once per machine (about 14 s for 200 samples, then cached). Each probe draws from the
same seed (:data:`ebmrun.seeds.QUALITY`), so the curve shows the model changing rather than
the draw. Training does not notice the probe: the model is sampled in eval mode (BatchNorm
running statistics untouched) with the EMA weights if any, from a generator of its own, with
torch's global random state restored afterwards.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ebmrun import distributed as ddp
from ebmrun import seeds
from ebmrun.callbacks.base import Callback, RunState
from ebmrun.data.base import to_unit_range
from ebmrun.ema import maybe_applied
from ebmrun.evaluation import generated_images
from ebmrun.metrics.evaluator import RECIPES, Evaluator, load_evaluator, shipped_path
from ebmrun.metrics.real_floor import real_floor
from ebmrun.metrics.sample_quality import reference_stats, sample_quality
from ebmrun.objectives.common import eval_mode

REFERENCE_TEST = 2000  # test images the samples are compared with (10,000 would take ~9 s)


class QualityProbe(Callback):
    """``every``: steps between probes (0 or None: off); ``n_samples`` per probe, drawn with
    ``steps`` sampler steps (None: the family's default)."""

    def __init__(self, every: int | None, n_samples: int, steps: int | None) -> None:
        self.every, self.n_samples, self.steps = every or 0, n_samples, steps
        self.evaluator: Evaluator | None = None
        self.reference: tuple[Tensor, Tensor] | None = None  # test features' (mu, sigma)
        self.floor = float("nan")

    def applies(self, run: RunState) -> bool:
        data = run.data
        return (self.every > 0 and ddp.is_main() and data.is_image
                and run.parts.objective.generates_new_samples and data.name in RECIPES
                and shipped_path(data.name).is_file())

    def due(self, run: RunState) -> bool:
        """At multiples of ``every`` and at the last step, never before the first multiple
        (so short runs, tests among them, pay nothing)."""
        return run.step >= self.every and (run.step % self.every == 0 or run.step == run.total)

    def on_step(self, run: RunState, x: Tensor, out: dict) -> None:
        if not self.every or not self.due(run) or not self.applies(run):
            return
        run.last_quality = self.measure(run)  # metrics.json: a sweep may optimise it
        run.logger.scalars(run.last_quality, run.step)

    def _prepare(self, run: RunState) -> None:
        """The evaluator, the reference statistics and the real-vs-real floor (once)."""
        data = run.data
        self.evaluator = load_evaluator(shipped_path(data.name), data.name)
        test = to_unit_range(data.to_float(data.test[:REFERENCE_TEST]), data.value_range)
        self.reference = reference_stats(self.evaluator, test)
        self.floor = real_floor(self.evaluator, data, self.n_samples, self.reference).median

    @torch.no_grad()
    def measure(self, run: RunState) -> dict[str, float]:
        """``quality/frechet`` of a fresh draw and its floor."""
        objective, device = run.parts.objective, run.parts.device
        forked = [device] if device.type == "cuda" else []
        # fork_rng: building the evaluator initialises weights from torch's global generator.
        with torch.random.fork_rng(devices=forked):
            if self.reference is None:
                self._prepare(run)
            generator = torch.Generator(device=device).manual_seed(
                seeds.QUALITY.seed(run.cfg.seed))
            with maybe_applied(run.ema), eval_mode(objective.model):
                samples = generated_images(objective, self.n_samples, steps=self.steps,
                                           batch_size=run.cfg.eval.batch_size,
                                           generator=generator,
                                           value_range=run.data.value_range)
        frechet = (sample_quality(self.evaluator, samples, self.reference)["frechet"]
                   if bool(torch.isfinite(samples).all()) else float("nan"))
        return {"quality/frechet": frechet, "quality/frechet_real_floor": self.floor}
