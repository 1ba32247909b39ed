"""Score matching: the three losses by hand on a quadratic energy, sliced = exact in
expectation, the dimension guard of the exact method, the noise-conditional energy, and a
short real training on 8gaussians that lowers KL(target ‖ model) below the untrained one."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from ebmrun.build import build_components, validate_config
from ebmrun.checkpoint import load_checkpoint
from ebmrun.data.toy2d import eight_gaussians
from ebmrun.errors import UserError
from ebmrun.metrics.normaliser import grid_report
from ebmrun.objectives.base import DataInfo
from ebmrun.objectives.score_matching import (denoising_score_matching, exact_score_matching,
                                              sliced_score_matching)
from ebmrun.run import train

from conftest import compose_config

A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
B = torch.tensor([0.3, -0.2], dtype=torch.float64)
TOY = DataInfo((2,), (-4.5, 4.5), (-4.5, 4.5))


def quadratic(x: Tensor) -> Tensor:
    """E(x) = ½ xᵀAx + bᵀx: ∇E = Ax + b, ∇²E = A (a Gaussian energy)."""
    return 0.5 * ((x @ A) * x).sum(1) + x @ B


class SmoothEnergy(nn.Module):
    """A non-quadratic energy with a non-constant Hessian."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(2, 16), nn.SiLU(), nn.Linear(16, 1)).double()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1) + 0.1 * x.pow(4).sum(1)


X = torch.tensor([[0.5, -1.0], [2.0, 0.3], [-0.7, 0.1]], dtype=torch.float64)


def test_exact_loss_matches_hand_computation() -> None:
    grad = X @ A + B
    expected = 0.5 * grad.pow(2).sum(1) - torch.trace(A)
    torch.testing.assert_close(exact_score_matching(quadratic, X), expected)


def test_sliced_loss_matches_hand_computation() -> None:
    v = torch.tensor([[[1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]], dtype=torch.float64)
    grad = X @ A + B
    grad_v = (grad * v[0]).sum(1)
    vav = ((v[0] @ A) * v[0]).sum(1)
    torch.testing.assert_close(sliced_score_matching(quadratic, X, v), 0.5 * grad_v**2 - vav)
    torch.testing.assert_close(sliced_score_matching(quadratic, X, v, variance_reduction=True),
                               0.5 * grad.pow(2).sum(1) - vav)


def test_denoising_loss_matches_hand_computation() -> None:
    eps = torch.tensor([[1.0, 0.0], [-0.5, 2.0], [0.2, 0.2]], dtype=torch.float64)
    sigma = 0.3
    noisy = X + sigma * eps
    expected = 0.5 * (eps - sigma * (noisy @ A + B)).pow(2).sum(1)
    torch.testing.assert_close(denoising_score_matching(quadratic, noisy, eps, sigma), expected)


@pytest.mark.parametrize("energy", [quadratic, SmoothEnergy()], ids=["gaussian", "mlp"])
def test_sliced_equals_exact_over_all_rademacher_projections(energy) -> None:
    # The four Rademacher vectors of R² have E[vvᵀ] = I exactly: averaging over all of them
    # is the expectation, which must equal the exact objective (any energy).
    v = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=2)), dtype=torch.float64)
    projections = v[:, None, :].expand(4, len(X), 2)
    torch.testing.assert_close(sliced_score_matching(energy, X, projections),
                               exact_score_matching(energy, X))


def test_sliced_agrees_with_exact_in_expectation_with_gaussian_projections() -> None:
    g = torch.Generator().manual_seed(0)
    many = X.repeat(20000, 1)  # 20,000 projections per point, as one batch
    projections = torch.randn(1, len(many), 2, generator=g, dtype=torch.float64)
    sliced = sliced_score_matching(quadratic, many, projections).mean().detach()
    exact = exact_score_matching(quadratic, X).mean().detach()
    assert float(sliced) == pytest.approx(float(exact), abs=0.05 * abs(float(exact)) + 0.05)


def test_denoising_optimum_is_the_smoothed_gaussian() -> None:
    # Data N(0, s²), energy ½ a x²: the σ²-weighted DSM loss ½ E(ε − σ a x̃)² is minimal at
    # a = 1/(s² + σ²), the precision of the data smoothed by N(0, σ²).
    s, sigma = 0.8, 0.5
    g = torch.Generator().manual_seed(1)
    x = s * torch.randn(100000, 1, generator=g, dtype=torch.float64)
    eps = torch.randn(100000, 1, generator=g, dtype=torch.float64)
    a = torch.linspace(0.5, 2.5, 81, dtype=torch.float64)
    losses = [float(denoising_score_matching(lambda y: 0.5 * k * y.pow(2).sum(1),
                                             x + sigma * eps, eps, sigma).mean().detach())
              for k in a]
    assert float(a[int(torch.tensor(losses).argmin())]) == pytest.approx(1 / (s**2 + sigma**2),
                                                                          abs=0.02)


def test_exact_is_refused_above_max_exact_dim() -> None:
    cfg = compose_config(["model=score_matching", "device=cpu",
                          "model.objective.method=exact"])
    with pytest.raises(UserError, match="784 > max_exact_dim=16.*method=sliced or denoising"):
        build_components(cfg, DataInfo((1, 28, 28), (-1.0, 1.0), (-1.0, 1.0)))
    build_components(cfg, TOY)  # 2-D: fine
    with pytest.raises(UserError, match="method='sloppy' is invalid"):
        build_components(compose_config(["model=score_matching", "device=cpu",
                                         "model.objective.method=sloppy"]), TOY)


def test_noise_conditional_energy_scales_with_sigma() -> None:
    cfg = compose_config(["model=score_matching", "device=cpu",
                          "model.objective.sigmas=[1.0,0.5,0.1]"])
    objective = build_components(cfg, TOY).objective
    x = torch.randn(5, 2)
    e = objective.sampling_energy(x)
    torch.testing.assert_close(objective.sampling_energy(x, torch.full((5,), 0.1)), e)
    torch.testing.assert_close(objective.sampling_energy(x, torch.full((5,), 0.5)), e * 0.2)
    out = objective.training_step(x)  # sigma drawn per item from the three levels
    assert out["loss"].requires_grad and math.isfinite(float(out["loss"].detach()))
    annealed = build_components(compose_config([
        "model=score_matching", "device=cpu", "model.objective.sigmas=[1.0,0.5,0.1]",
        "sampler=annealed_langevin", "sampler.sigmas=[1.0,0.5,0.1]",
        "sampler.steps_per_sigma=2", "sampler.initial_temperature=1.0"]), TOY).objective
    result = annealed.generate(8, steps=6, generator=torch.Generator().manual_seed(0))
    assert result.x.shape == (8, 2) and result.stats["sigma"].tolist() == pytest.approx(
        [1.0, 1.0, 0.5, 0.5, 0.1, 0.1])


@pytest.mark.parametrize("method", ["exact", "sliced", "denoising"])
def test_every_method_trains_and_gets_gradients(method: str) -> None:
    cfg = compose_config(["model=score_matching", "device=cpu", "model.net.mlp_hidden=[16]",
                          f"model.objective.method={method}"])
    objective = build_components(cfg, TOY).objective
    out = objective.training_step(eight_gaussians(32, torch.Generator().manual_seed(0)))
    out["loss"].backward()
    # Every weight gets a gradient; the last bias gets none (a constant energy offset has
    # no score, so score matching cannot see it).
    for p in objective.model.parameters():
        if p.dim() > 1:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert objective.model.body[-1].bias.grad is None


def test_short_training_lowers_kl_on_8gaussians(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=score_matching_toy2d", "device=cpu",
                          "trainer.max_steps=300", "trainer.progress=false",
                          "trainer.image_every=300", "trainer.ckpt_every=300",
                          "dataset.n_train=5000", "dataset.n_test=2000",
                          "model.objective.sample_steps=10"])
    validate_config(cfg)
    untrained = build_components(cfg, TOY).objective
    train(cfg, tmp_path)
    trained = build_components(cfg, TOY).objective
    trained.model.load_state_dict(load_checkpoint(tmp_path)["model"])
    g = torch.Generator().manual_seed(5)
    test, target = eight_gaussians(2000, g), eight_gaussians(50000, g)

    def report(objective) -> dict[str, float]:
        with torch.no_grad():
            return grid_report(objective.energy, test, target, TOY.box, 150)

    before, after = report(untrained), report(trained)
    assert after["kl_target_model"] < 0.5 * before["kl_target_model"]
    assert after["test_nll"] < before["test_nll"] - 1.0
