"""Denoising auto-encoder training, its energy, and sampling through its score.

    loss = mean_B ‖r(C(x)) − x‖²        E(x) = ‖r(x) − x‖²        score(x) ≈ (r(x) − x)/σ²

C is the corruption (:mod:`ebmrun.objectives.corruption`); with several levels each item
draws one. Samplers only see energies, so the objective hands them :meth:`score_energy`:
a function whose *value* is E(x) (for the logged traces) and whose *input gradient* is
minus the score estimate. Gradient-driven samplers then follow the DAE's score:

- ``sampler=dae_chain``: y = x + σε, x ← y − σ²∇ = r(x + σε), the DAE Markov chain;
- ``sampler=langevin`` (plain: ``noise_std=null grad_clip=null``): Langevin on the score.

The score field of a DAE need not be the gradient of any function, so samplers with a
Metropolis test (mala, hmc, rw_metropolis) would compare values the moves do not follow:
use the two above (or annealed_langevin without ``sigmas``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ebmrun.logging.run_logger import image_grid
from ebmrun.objectives.base import DataInfo, EvalReport, Objective, OptimSettings, make_optimizer
from ebmrun.objectives.corruption import check_levels, default_ladder, get_corruption
from ebmrun.objectives.common import eval_mode
from ebmrun.samplers.base import SampleResult, Sampler

START_CHOICES = ("noise", "data")
FILM_CHAINS = 8  # one row of the 8-wide TensorBoard grid per snapshot


class DenoisingObjective(Objective):
    """Train r to undo a corruption; sample by a score-following sampler.

    Args:
        model: a :class:`ebmrun.models.dae.DenoisingAutoEncoder`.
        sampler: the chain :meth:`generate` runs on :meth:`score_energy`.
        corruption: ``gaussian`` | ``masking`` | ``salt_and_pepper``.
        sigma: σ of the score estimate (r(x) − x)/σ² that samplers follow, and the training
            noise of ``gaussian`` when ``levels`` is null.
        rate: training corruption rate of ``masking`` / ``salt_and_pepper`` (no ``levels``).
        levels: several training strengths (σ or rate): each item draws one uniformly.
        eval_levels: strengths at which ``evaluate`` measures the mean test energy
            (null: a default ladder from clean to heavy, see ``corruption.default_ladder``).
        start: chains start from uniform ``noise`` in the box or from training ``data``
            (the model's pool of recent training items, saved with its weights).
        sample_steps: default chain length for pictures and ``task=sample``.
        final_denoise: return r(x) of the last state (useful after Langevin, whose states
            keep their last noise; the dae_chain's states are already denoised).
        lr / betas: Adam settings for this model (null: ``optim.lr`` / ``optim.betas``,
            whose defaults suit deep EBMs, not auto-encoders).
    """

    train_metrics = ("loss", "energy_clean", "energy_corrupted")
    capturable_step = True  # no host reads in the step (see ebmrun.captured_step)
    eval_metrics = ("dae/*",)

    def __init__(self, model: nn.Module, sampler: Sampler, data: DataInfo,
                 generator: torch.Generator, corruption: str = "gaussian", sigma: float = 0.5,
                 rate: float = 0.3, levels: list[float] | None = None,
                 eval_levels: list[float] | None = None, start: str = "noise",
                 sample_steps: int = 50, final_denoise: bool = False,
                 lr: float | None = 1e-3, betas: list[float] | None = None) -> None:
        super().__init__(model, data, generator)
        self.corruption = get_corruption(corruption)
        self.kind = corruption
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        default_level = sigma if self.corruption.level_name == "sigma" else rate
        train_levels = [float(v) for v in (levels if levels else [default_level])]
        check_levels(corruption, train_levels)
        self.eval_levels = ([float(v) for v in eval_levels] if eval_levels
                            else default_ladder(corruption, data.value_range))
        check_levels(corruption, self.eval_levels)
        if start not in START_CHOICES:
            raise ValueError(f"unknown start {start!r} (choose from: {', '.join(START_CHOICES)})")
        if sample_steps < 0:
            raise ValueError(f"sample_steps must be >= 0, got {sample_steps}")
        bounds = getattr(model, "value_range", None)
        low, high = data.value_range
        if bounds is not None and (low < bounds[0] or high > bounds[1]):
            raise ValueError(f"the data lie in [{low}, {high}] but the DAE outputs only "
                             f"[{bounds[0]}, {bounds[1]}] (fix: model.net.value_range="
                             f"[{low},{high}])")
        self.sampler = sampler
        self.sigma = float(sigma)
        self.device = next(model.parameters()).device
        self.levels = torch.tensor(train_levels, device=self.device)
        self.start, self.sample_steps = start, int(sample_steps)
        self.final_denoise = bool(final_denoise)
        self.lr, self.betas = lr, betas
        self._last: dict[str, Tensor] = {}

    def configure_optimizers(self, settings: OptimSettings) -> list[torch.optim.Optimizer]:
        return [make_optimizer(self.model.parameters(), settings, self.lr, self.betas)]

    def corrupt(self, x: Tensor, level: Tensor | float, generator: torch.Generator) -> Tensor:
        """C(x) ``(B, ...)`` at strength ``level`` (a number or one per item ``(B,)``)."""
        level = torch.as_tensor(level, device=x.device, dtype=x.dtype).expand(x.shape[0])
        return self.corruption.apply(x, level, self.data.value_range, generator)

    def training_step(self, x: Tensor) -> dict[str, Tensor]:
        """Denoising loss of one batch; logs the energy of clean and corrupted inputs."""
        pick = torch.randint(len(self.levels), (x.shape[0],), device=x.device,
                             generator=self.generator)
        noisy = self.corrupt(x, self.levels[pick], self.generator)
        recon = self.model.reconstruct(noisy)
        loss = (recon - x).pow(2).flatten(1).sum(1).mean()
        with torch.no_grad():
            # E of the corrupted inputs comes free with the loss; E of clean ones costs one
            # forward pass of a few items: together they show the gap the energy learns.
            energy_noisy = (recon - noisy).pow(2).flatten(1).sum(1).mean()
            energy_clean = self.model.energy(x[:16]).mean()
        self._remember(x, noisy, recon)
        return {"loss": loss, "energy_clean": energy_clean, "energy_corrupted": energy_noisy}

    @torch.no_grad()
    def _remember(self, x: Tensor, noisy: Tensor, recon: Tensor) -> None:
        """Keep the last batch for pictures and refresh part of the pool of chain starts
        (a few items per step: the pool turns over every few dozen steps)."""
        self._last = {"clean": x[:32].detach(), "corrupted": noisy[:32].detach(),
                      "reconstructed": recon[:32].detach()}
        self.model.remember(x[:8])

    def score_energy(self, x: Tensor) -> Tensor:
        """``(B,)`` with value E(x) and input gradient −(r(x) − x)/σ² (minus the score).

        r(x) is evaluated without a graph: the gradient is the fixed vector g = (x − r(x))/σ²
        attached to x through ⟨g, x⟩, so one forward pass per sampler step suffices.
        """
        with torch.no_grad():
            recon = self.model.reconstruct(x.detach())
        diff = (x.detach() - recon).flatten(1)
        energy = diff.pow(2).sum(1)
        pull = (diff / self.sigma ** 2 * x.flatten(1)).sum(1)
        return energy + pull - pull.detach()

    def start_points(self, n: int, generator: torch.Generator) -> Tensor:
        """``(n, *item)`` chain starts: uniform noise in the box, or pooled training items."""
        pool = self.model.pooled()
        if self.start == "data" and len(pool):
            idx = torch.randint(len(pool), (n,), device=pool.device, generator=generator)
            return pool[idx].clone()
        low, high = self.data.box
        return (torch.rand(n, *self.data.item_shape, device=self.device, generator=generator)
                * (high - low) + low)

    def generate(self, n: int, *, steps: int | None = None, generator: torch.Generator,
                 snapshot_every: int = 0) -> SampleResult:
        """``n`` samples: ``steps`` (default ``sample_steps``) sampler steps on
        :meth:`score_energy` from :meth:`start_points`, then r(x) if ``final_denoise``."""
        steps = self.sample_steps if steps is None else steps
        with eval_mode(self.model):
            result = self.sampler.sample(self.score_energy, self.start_points(n, generator),
                                         steps=steps, generator=generator,
                                         snapshot_every=snapshot_every)
            if self.final_denoise:
                with torch.no_grad():
                    result.x = self._clamp(self.model.reconstruct(result.x))
                    result.chain = [self._clamp(self.model.reconstruct(s)) for s in result.chain]
        return result

    def _clamp(self, x: Tensor) -> Tensor:
        return x.clamp(*self.data.value_range)

    @torch.no_grad()
    def energy(self, x: Tensor) -> Tensor:
        """E(x) = ‖r(x) − x‖² ``(B,)``."""
        return self.model.energy(x)

    @torch.no_grad()
    def evaluate(self, test: Tensor, settings, generator: torch.Generator) -> EvalReport:
        """Mean test energy at each corruption level of ``eval_levels`` (metrics and a
        table), whether it rises monotonically, and a figure: for each level a row of
        corrupted test digits and a row of their reconstructions."""
        report = EvalReport()
        rows, means, pictures = [], [], []
        for level in self.eval_levels:
            energies = torch.cat([self.model.energy(self.corrupt(chunk, level, generator))
                                  for chunk in test.split(settings.batch_size)])
            mean = float(energies.mean())
            means.append(mean)
            rows.append({"corruption": self.kind, self.corruption.level_name: level,
                         "mean_energy": mean, "std_energy": float(energies.std())})
            report.metrics[f"dae/energy_{self.kind}_{level:g}"] = mean
            if self.data.is_image:
                shown = self.corrupt(test[:8], level, generator)
                pictures += [shown.clamp(*self.data.value_range), self.model.reconstruct(shown)]
        report.metrics["dae/energy_monotonic"] = float(all(b > a for a, b in
                                                           zip(means, means[1:])))
        report.tables["dae/energy_vs_corruption"] = rows
        if pictures:
            report.figures["dae_corruption"] = image_grid(torch.cat(pictures),
                                                          self.data.value_range, nrow=8)
        return report

    def visuals(self, generator: torch.Generator) -> dict[str, Tensor]:
        """Clean / corrupted / reconstructed grids of the last batch, and the chain film:
        8 chains from fixed starts, one row per snapshot (time runs down)."""
        if not self.data.is_image:
            return {}
        out = {name: images.clamp(*self.data.value_range) for name, images in self._last.items()}
        steps = self.sample_steps
        fixed = torch.Generator(device=self.device).manual_seed(0)  # same starts every time
        start = self.start_points(FILM_CHAINS, fixed)
        with eval_mode(self.model):
            result = self.sampler.sample(self.score_energy, start, steps=steps, generator=fixed,
                                         snapshot_every=max(-(-steps // 7), 1))
        if result.chain:
            out["chain"] = torch.cat(result.chain).clamp(*self.data.value_range)
        return out

    def histograms(self) -> dict[str, Tensor]:
        if not self._last:
            return {}
        with torch.no_grad():
            return {"energy/clean": self.model.energy(self._last["clean"]),
                    "energy/corrupted": self.model.energy(self._last["corrupted"])}
