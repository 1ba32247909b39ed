"""Diffusion recovery likelihood: schedule, network, conditional chain, training, task=sample."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from ebmrun.build import build_components, data_info_of, load_data
from ebmrun.models.drl import DiffusionSchedule, LevelConditionedEnergy, paper_schedule
from ebmrun.objectives.base import DataInfo
from ebmrun.objectives.recovery_likelihood import RecoveryLikelihood
from ebmrun.samplers.energy_eval import energy_and_grad
from ebmrun.samplers.langevin import Langevin

from conftest import compose_config, run_ok

BOX = (-1.0, 1.0)
DRL_TINY = ["model=drl", "device=cpu", "trainer.batch_size=16", "trainer.log_every=2",
            "trainer.image_every=1000", "trainer.ckpt_every=2", "trainer.progress=false",
            "sampler.steps=3", "model.net.levels=3", "model.objective.sample_steps=2"]


def test_paper_schedule_runs_from_data_to_noise() -> None:
    a, sigma = paper_schedule(6)
    assert a.shape == sigma.shape == (7,)
    torch.testing.assert_close(a ** 2 + sigma ** 2, torch.ones(7))
    assert (sigma[1:-1].diff() > 0).all()  # evenly growing steps, then one long last step
    schedule = DiffusionSchedule(6, 1e-4, 0.02)
    assert schedule.sigma_cum[0] < 0.02 and schedule.sigma_cum[-1] > 0.999  # x_T ≈ N(0, I)
    with pytest.raises(ValueError, match="levels >= 2"):
        paper_schedule(1)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (2,)])
def test_score_shape_and_levels_differ(shape: tuple) -> None:
    torch.manual_seed(0)
    model = LevelConditionedEnergy(shape, levels=4)
    y = torch.randn(5, *shape)
    t = torch.tensor([0, 1, 2, 3, 0])
    assert model.score(y, t).shape == (5,) and model.energy(y).shape == (5,)
    # Separate heads: the same item scores differently at two levels.
    s0 = model.score(y, torch.zeros(5, dtype=torch.long))
    s3 = model.score(y, torch.full((5,), 3))
    assert not torch.allclose(s0, s3)


class QuadraticScore(nn.Module):
    """f(y, t) = −c‖y‖²/2: every conditional is Gaussian with a known mean."""

    def __init__(self, levels: int, c: float) -> None:
        super().__init__()
        self.schedule = DiffusionSchedule(levels, 1e-4, 0.02)
        self.c = c
        self.dummy = nn.Parameter(torch.zeros(()))

    def score(self, y: Tensor, t: Tensor) -> Tensor:
        return -0.5 * self.c * y.pow(2).flatten(1).sum(1) + 0 * self.dummy


def _objective(model: nn.Module, steps: int, b_square: float = 2e-4) -> RecoveryLikelihood:
    sampler = Langevin(step_size=0.5, noise_std=None, grad_clip=None, steps=steps)
    return RecoveryLikelihood(model, sampler, DataInfo((3,), BOX, BOX),
                              torch.Generator().manual_seed(0), b_square=b_square)


def test_conditional_energy_gradient_is_the_papers_langevin_drift() -> None:
    """In whitened units z = y/s the gradient is s·(−∇f/s² + (y − x̃)/σ²), so a step of 0.5
    moves y by ½∇f − ½s²(y − x̃)/σ² (the paper's update without noise)."""
    objective = _objective(QuadraticScore(levels=3, c=2.0), steps=1)
    x_next = torch.randn(4, 3)
    t = torch.tensor([0, 1, 2, 0])
    s = objective.step_scale(t)
    y = torch.randn(4, 3)
    _, grad = energy_and_grad(objective.conditional_energy(x_next, t, s), y / s[:, None])
    sigma = objective.schedule.sigma[t + 1][:, None]
    coupled = (t < 2).float()[:, None]  # the last level has no Gaussian term
    expected = s[:, None] * (2.0 * y / s[:, None] ** 2 + coupled * (y - x_next) / sigma ** 2)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-4)


def test_conditional_chain_reaches_the_known_gaussian_mean() -> None:
    """With f = −c‖y‖²/2 the conditional p(y | x̃) is Gaussian with precision
    c/s² + 1/σ² and mean (x̃/σ²)/precision; long chains average to it."""
    c, b_square = 1.0, 0.5  # a large b makes the Gaussian pull visible in the mean
    objective = _objective(QuadraticScore(levels=3, c=c), steps=30, b_square=b_square)
    n = 10000
    x_next = torch.full((n, 3), 0.8)
    t = torch.zeros(n, dtype=torch.long)
    y, _ = objective.recover(x_next, t, steps=30, generator=torch.Generator().manual_seed(1))
    s2 = objective.step_scale(t[:1]) ** 2
    sigma2 = objective.schedule.sigma[1] ** 2
    mean = (0.8 / sigma2) / (c / s2 + 1 / sigma2)
    assert 0.05 < float(mean) < 0.75  # neither the prior's 0 nor the start
    torch.testing.assert_close(y.mean(0), mean.expand(3), atol=0.01, rtol=0.0)


def test_box_sampler_is_refused() -> None:
    with pytest.raises(ValueError, match="sampler=drl_langevin"):
        RecoveryLikelihood(LevelConditionedEnergy((2,), levels=2), Langevin(box=[-1, 1]),
                           DataInfo((2,), BOX, BOX), torch.Generator())


def test_default_config_builds_with_its_own_sampler() -> None:
    cfg = compose_config(["model=drl", "device=cpu"])
    assert cfg.sampler.step_size == 0.5 and cfg.sampler.box is None
    parts = build_components(cfg, DataInfo((1, 28, 28), BOX, BOX))
    result = parts.objective.generate(3, steps=2, generator=torch.Generator().manual_seed(0),
                                      snapshot_every=1)
    levels = parts.model.levels
    assert result.x.shape == (3, 1, 28, 28) and result.x.abs().max() <= 1.0
    assert len(result.chain) == levels + 1 and result.stats["energy"].shape == (2 * levels,)


def test_training_teaches_the_chain_to_recover(data_root: Path) -> None:
    """40 steps on MNIST: the level-0 chain then lands closer to the clean item than its
    noisy start (an untrained network's chain does not)."""
    cfg = compose_config(["model=drl", "device=cpu", "sampler.steps=10", "optim.lr=1e-3",
                          "optim.betas=[0.9,0.999]", "model.net.levels=2",
                          "model.net.channels=[16,32,32,32]", "model.net.hidden=64"])
    data = load_data(cfg)
    parts = build_components(cfg, data_info_of(data))
    optimizer = torch.optim.Adam(parts.model.parameters(), lr=1e-3)
    train_x = data.to_float(data.train[:1024])
    gen = torch.Generator().manual_seed(0)

    def level0_ratio() -> float:
        x = data.to_float(data.test[:256])
        sch = parts.model.schedule
        y_pos = sch.y_scale[1] * (sch.a_cum[0] * x)
        x_next = sch.a[1] * (sch.a_cum[0] * x) + sch.sigma[1] * torch.randn(x.shape, generator=gen)
        t = torch.zeros(len(x), dtype=torch.long)
        y, _ = parts.objective.recover(x_next, t, steps=10, generator=gen)
        return float((y - y_pos).pow(2).sum() / (x_next - y_pos).pow(2).sum())

    before = level0_ratio()
    for step in range(40):
        idx = torch.randint(len(train_x), (32,), generator=gen)
        loss = parts.objective.training_step(train_x[idx])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = level0_ratio()
    assert after < 0.9 < before or after < 0.5 * before, (before, after)


def test_train_then_task_sample(tmp_path: Path, data_root: Path) -> None:
    run_ok([*DRL_TINY, "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'train'}"], tmp_path)
    run_ok(["task=sample", f"ckpt={tmp_path / 'train'}", "sample.n=6", "sample.steps=2",
            f"hydra.run.dir={tmp_path / 'sample'}"], tmp_path)
    samples = torch.load(tmp_path / "sample" / "samples.pt", weights_only=True)
    assert samples.shape == (6, 1, 28, 28) and samples.abs().max() <= 1.0
    assert torch.isfinite(samples).all() and samples.std() > 0
