"""NCE: the loss by hand, the noise densities, the fitted noise in the checkpointed state,
and a short real training on 8gaussians that lowers KL and self-normalises exp(−E)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ebmrun.build import build_components, validate_config
from ebmrun.checkpoint import load_checkpoint
from ebmrun.data.toy2d import eight_gaussians
from ebmrun.errors import UserError
from ebmrun.metrics.normaliser import grid_energies, grid_report, log_normaliser
from ebmrun.objectives.base import DataInfo
from ebmrun.objectives.nce import GaussianNoise, UniformNoise, nce_loss
from ebmrun.run import train

from conftest import compose_config

TOY = DataInfo((2,), (-4.5, 4.5), (-4.5, 4.5))


def test_loss_matches_hand_computation() -> None:
    e_data, e_noise = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.0, 1.0, 3.0])
    lq_data, lq_noise = torch.tensor([-2.0, -1.5]), torch.tensor([-1.0, -3.0, -2.0, -2.5])
    nu = 2.0
    # G = −E − log q − log ν;  data: −log σ(G), noise: −log(1 − σ(G)), noise term × ν.
    g_data = [-0.5 + 2.0 - math.log(2), 1.0 + 1.5 - math.log(2)]
    g_noise = [-2.0 + 1.0 - math.log(2), 0.0 + 3.0 - math.log(2), -1.0 + 2.0 - math.log(2),
               -3.0 + 2.5 - math.log(2)]
    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    expected = (-sum(math.log(sig(g)) for g in g_data) / 2
                - nu * sum(math.log(1 - sig(g)) for g in g_noise) / 4)
    loss, accuracy = nce_loss(e_data, e_noise, lq_data, lq_noise, nu)
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    # correct: both data (G > 0); noise G = [−1.69, 2.31, 0.31, −1.19] -> 2 of 4 right
    assert float(accuracy) == pytest.approx(4 / 6)


def test_uniform_noise_density_and_support() -> None:
    noise = UniformNoise(TOY)
    y = noise.sample(1000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert y.shape == (1000, 2) and y.min() >= -4.5 and y.max() <= 4.5
    torch.testing.assert_close(noise.log_prob(y), torch.full((1000,), -2 * math.log(9.0)))


def test_gaussian_noise_fits_the_batch_and_has_the_normal_density() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 2, generator=g) @ torch.tensor([[1.0, 0.0], [0.6, 0.5]]) + 1.0
    noise = GaussianNoise(TOY, scale=1.5)
    noise.fit(x)
    cov = torch.cov(x.T.double()) * 1.5**2
    cov += GaussianNoise.RIDGE * cov.diagonal().mean() * torch.eye(2, dtype=cov.dtype)
    reference = torch.distributions.MultivariateNormal(x.double().mean(0), cov)
    y = noise.sample(20000, g, torch.device("cpu"))
    torch.testing.assert_close(noise.log_prob(y).double(), reference.log_prob(y.double()),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cov(y.T.double()), cov, atol=0.06, rtol=0.05)
    images = GaussianNoise(DataInfo((1, 4, 4), (-1.0, 1.0), (-1.0, 1.0)))
    images.fit(torch.rand(8, 1, 4, 4))  # fewer items than dimensions: the ridge keeps it valid
    assert images.sample(3, g, torch.device("cpu")).shape == (3, 1, 4, 4)


def test_settings_are_checked() -> None:
    with pytest.raises(UserError, match="noise='pink' is invalid"):
        build_components(compose_config(["model=nce", "device=cpu",
                                         "model.objective.noise=pink"]), TOY)


def test_training_step_gradients_and_fitted_noise_state() -> None:
    cfg = compose_config(["model=nce", "device=cpu", "model.net.mlp_hidden=[16]"])
    objective = build_components(cfg, TOY).objective
    x = eight_gaussians(64, torch.Generator().manual_seed(0))
    out = objective.training_step(x)
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in objective.model.parameters())
    assert 0.0 <= float(out["accuracy"]) <= 1.0
    state = objective.state_dict()
    fresh = build_components(cfg, TOY).objective
    fresh.load_state_dict(state)
    assert fresh.fitted and torch.equal(fresh.noise.mean, objective.noise.mean)
    # the first batch fixes the noise: later batches do not refit it
    objective.training_step(x + 10)
    assert torch.equal(objective.noise.mean, fresh.noise.mean)


def test_short_training_lowers_kl_and_self_normalises(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=nce_toy2d", "device=cpu", "trainer.max_steps=300",
                          "trainer.progress=false", "trainer.image_every=300",
                          "trainer.ckpt_every=300", "dataset.n_train=5000",
                          "dataset.n_test=2000", "model.objective.sample_steps=10"])
    validate_config(cfg)
    untrained = build_components(cfg, TOY).objective
    metrics = train(cfg, tmp_path)
    trained = build_components(cfg, TOY).objective
    trained.model.load_state_dict(load_checkpoint(tmp_path)["model"])
    g = torch.Generator().manual_seed(5)
    test, target = eight_gaussians(2000, g), eight_gaussians(50000, g)
    with torch.no_grad():
        before = grid_report(untrained.energy, test, target, TOY.box, 150)
        after = grid_report(trained.energy, test, target, TOY.box, 150)
        log_z = log_normaliser(*grid_energies(trained.energy, TOY.box, 150))
    assert after["kl_target_model"] < 0.5 * before["kl_target_model"]
    assert after["test_nll"] < before["test_nll"] - 1.0
    assert abs(log_z) < 0.5  # NCE learns the normaliser: ∫ exp(−E) ≈ 1
    assert metrics["accuracy"] > 0.5 and math.isfinite(metrics["log_z_is"])
