"""Diffusion recovery likelihood (Gao, Song, Poole, Wu, Kingma 2021).

Diffuse the data in T levels, x_{t+1} = a_{t+1}·x_t + σ_{t+1}·ε, and learn, at every level,
the *conditional* EBM of the less noisy item given the noisier one. With y = a_{t+1}·x_t:

    p(y | x_{t+1}) ∝ exp( f_θ(y, t) / s_t² − ‖y − x_{t+1}‖² / (2σ_{t+1}²) )

The Gaussian term makes each conditional nearly unimodal, so a short Langevin chain
(~30 steps) started at x_{t+1} mixes; generation runs the levels from pure noise down.
Loss (maximum recovery likelihood, one random level per item):

    loss = mean_i  w_t · ( f_θ(y⁻_i, t_i) − f_θ(y⁺_i, t_i) ),   w_t = σ_1 / σ_{t+1}

y⁺ = a_{t+1}·x_t from the data, y⁻ from the conditional chain. As in the paper, the
network output is divided by the chain's step size s_t² = b²·c_t²·σ_{t+1}² (c_t² =
σ̄_t / σ̄_0, σ̄ the marginal noise std), so one Langevin step moves y by ½∇f_θ whatever the
level; and the last level (x_T ≈ pure noise) drops the Gaussian coupling and learns the
marginal of y = x_{T-1} itself (chains start at x_T ~ N(0, I)).

The chain is the configured sampler run on an ordinary energy function of z = y / s_t:
whitening each item by its own step scale turns the per-level step s_t²/2 into one
constant step (0.5, with noise std 1; ``sampler=drl_langevin``), so the sampler needs no
knowledge of levels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ebmrun.objectives.base import DataInfo, Objective
from ebmrun.samplers.base import SampleResult, Sampler


class RecoveryLikelihood(Objective):
    """Maximum diffusion recovery likelihood for a level-conditioned score network.

    Args:
        model: :class:`ebmrun.models.drl.LevelConditionedEnergy` (``score(y, t)``,
            ``schedule``).
        sampler: the conditional chain; runs in whitened coordinates, so it must have no
            box (``sampler=drl_langevin``: Langevin, step 0.5, noise std 1, 30 steps).
        b_square: b² of the step-size schedule s_t² = b²·c_t²·σ_{t+1}² (paper: 2e-4).
        sample_steps: chain steps per level for fresh samples (pictures, task=sample);
            ``None``: the sampler's steps, i.e. the training chain.
    """

    train_metrics = ("loss", "score_pos", "score_neg", "recovery_error_ratio",
                     "sampler/grad_norm")

    def __init__(self, model: nn.Module, sampler: Sampler, data: DataInfo,
                 generator: torch.Generator, b_square: float = 2e-4,
                 sample_steps: int | None = None) -> None:
        super().__init__(model, data, generator)
        if sampler.box is not None:
            raise ValueError("drl runs its chains in whitened coordinates, where a box "
                             "clamp is wrong: use sampler=drl_langevin or set sampler.box=null")
        if b_square <= 0:
            raise ValueError(f"b_square must be > 0, got {b_square}")
        self.sampler = sampler
        self.b_square = float(b_square)
        self.sample_steps = sampler.steps if sample_steps is None else int(sample_steps)
        self._last: dict[str, Tensor] = {}

    @property
    def schedule(self):
        return self.model.schedule

    def step_scale(self, t: Tensor) -> Tensor:
        """The chain's step scale s_t ``(B,)`` for levels ``t`` ``(B,)``."""
        sch = self.schedule
        c_square = sch.sigma_cum[t] / sch.sigma_cum[0]
        return (self.b_square * c_square).sqrt() * sch.sigma[t + 1]

    def conditional_energy(self, x_next: Tensor, t: Tensor, s: Tensor):
        """The energy in z = y / s of p(y | x_{t+1}) for every row: a function
        ``(B, *item_shape) -> (B,)`` for the sampler. ``x_next``, ``t``, ``s``: ``(B, ...)``,
        ``(B,)``, ``(B,)``."""
        sch = self.schedule
        view = (-1,) + (1,) * (x_next.dim() - 1)
        s_item = s.view(view)
        coupled = (t + 1 < sch.levels).to(x_next.dtype)  # last level: no Gaussian term
        precision = coupled / (2 * sch.sigma[t + 1] ** 2)

        def energy(z: Tensor) -> Tensor:
            y = z * s_item
            pull = (y - x_next).pow(2).flatten(1).sum(1)
            return -self.model.score(y, t).float() / s.pow(2) + precision * pull

        return energy

    def recover(self, x_next: Tensor, t: Tensor, *, steps: int | None,
                generator: torch.Generator | None) -> tuple[Tensor, SampleResult]:
        """Sample y ~ p(y | x_{t+1}) from chains started at ``x_next`` ``(B, ...)``; returns
        y ``(B, ...)`` (x_t = y / y_scale[t+1]) and the sampler's result (in z units)."""
        s = self.step_scale(t)
        s_item = s.view((-1,) + (1,) * (x_next.dim() - 1))
        result = self.sampler.sample(self.conditional_energy(x_next, t, s), x_next / s_item,
                                     steps=steps, generator=generator)
        return result.x * s_item, result

    def training_step(self, x: Tensor) -> dict[str, Tensor]:
        sch = self.schedule
        batch, view = x.shape[0], (-1,) + (1,) * (x.dim() - 1)
        t = torch.randint(sch.levels, (batch,), device=x.device, generator=self.generator)
        noise = torch.randn((2, *x.shape), device=x.device, generator=self.generator)
        x_t = sch.a_cum[t].view(view) * x + sch.sigma_cum[t].view(view) * noise[0]
        x_next = sch.a[t + 1].view(view) * x_t + sch.sigma[t + 1].view(view) * noise[1]
        y_pos = sch.y_scale[t + 1].view(view) * x_t
        y_neg, chains = self.recover(x_next, t, steps=None, generator=self.generator)

        scores = self.model.score(torch.cat([y_pos, y_neg]), torch.cat([t, t]))
        f_pos, f_neg = scores[:batch], scores[batch:]
        weight = sch.sigma[1] / sch.sigma[t + 1]
        loss = (weight * (f_neg - f_pos)).mean()
        self._last = {"score/data": f_pos.detach(), "score/samples": f_neg.detach()}
        # How far the chain moved from its start relative to the true x_t: < 1 = it recovers.
        err_chain = (y_neg.detach() - y_pos).pow(2).flatten(1).sum(1)
        err_start = (x_next - y_pos).pow(2).flatten(1).sum(1)
        return {
            "loss": loss,
            "score_pos": f_pos.mean().detach(),
            "score_neg": f_neg.mean().detach(),
            "recovery_error_ratio": (err_chain.mean() / err_start.mean()).detach(),
            "sampler/grad_norm": chains.stats["grad_norm"].mean(),
        }

    @torch.no_grad()
    def generate(self, n: int, *, steps: int | None = None, generator: torch.Generator,
                 snapshot_every: int = 0) -> SampleResult:
        """Fresh samples: x_T ~ N(0, I), then the chain of every level down to x_0, each
        ``steps`` (default ``sample_steps``) steps. ``snapshot_every > 0`` records x after
        each level (T + 1 snapshots), whatever its value."""
        sch = self.schedule
        steps = self.sample_steps if steps is None else int(steps)
        device = sch.a.device
        x = torch.randn(n, *self.data.item_shape, device=device, generator=generator)
        chain = [x.clone()] if snapshot_every > 0 else []
        traces: dict[str, list[Tensor]] = {"energy": [], "grad_norm": [], "acceptance": []}
        for level in reversed(range(sch.levels)):
            t = torch.full((n,), level, dtype=torch.long, device=device)
            y, result = self.recover(x, t, steps=steps, generator=generator)
            x = y / sch.y_scale[level + 1]
            for key, trace in traces.items():
                trace.append(result.stats[key])
            if snapshot_every > 0:
                chain.append(x.clone())
        stats: dict[str, Tensor | float] = {k: torch.cat(v) for k, v in traces.items()}
        stats["acceptance_rate"] = float(stats["acceptance"].mean()) if steps else 1.0
        return SampleResult(x=x.clamp(*self.data.box), stats=stats,
                            chain=[c.clamp(*self.data.box) for c in chain])

    def energy(self, x: Tensor) -> Tensor:
        """Energy ``(B,)`` of items at the data level, −f_θ(a_1·x, 0) (anomaly scores)."""
        return self.model.energy(x)

    def visuals(self, generator: torch.Generator) -> dict[str, Tensor]:
        if not self.data.is_image:
            return {}
        fresh = self.generate(64, generator=generator, snapshot_every=1)
        # One row per level (noise at the top), 8 chains side by side.
        levels = torch.stack([snap[:8] for snap in fresh.chain]).flatten(0, 1)
        return {"samples_from_noise": fresh.x, "levels": levels}

    def histograms(self) -> dict[str, Tensor]:
        return dict(self._last)
