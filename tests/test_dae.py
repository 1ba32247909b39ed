"""DAE: the corruption kinds, the model's energy, the score energy that samplers follow, the
DAE Markov chain as the dae_chain sampler, energy rising with corruption on a briefly
trained model, and train -> sample -> eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ebmrun.build import build_components, validate_config
from ebmrun.checkpoint import load_checkpoint, load_model_state
from ebmrun.cli import TASKS
from ebmrun.config import EvalConfig
from ebmrun.data.idx import load_idx_dataset
from ebmrun.models.dae import DenoisingAutoEncoder
from ebmrun.objectives.base import DataInfo
from ebmrun.objectives.corruption import CORRUPTIONS, check_levels, default_ladder
from ebmrun.objectives.dae import DenoisingObjective
from ebmrun.run import train
from ebmrun.samplers.dae_chain import DenoisingChain
from ebmrun.samplers.langevin import Langevin

from conftest import compose_config, run_ok

MNIST = DataInfo((1, 28, 28), (-1.0, 1.0), (-1.0, 1.0))
TINY_DAE = ["model=dae", "sampler=dae_chain", "device=cpu", "device.threads=1",
            "trainer.max_steps=4", "trainer.batch_size=16", "trainer.log_every=2",
            "trainer.image_every=2", "trainer.ckpt_every=2", "trainer.progress=false",
            "model.net.hidden=[64]", "model.net.code_dim=16", "model.objective.sample_steps=3"]


# ---- corruption --------------------------------------------------------------------------

def _corrupt(kind: str, x: torch.Tensor, level: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return CORRUPTIONS[kind].apply(x, torch.full((x.shape[0],), level), (-1.0, 1.0), g)


def test_gaussian_corruption_adds_noise_of_std_sigma() -> None:
    x = torch.zeros(64, 1, 28, 28)
    noisy = _corrupt("gaussian", x, 0.3)
    assert noisy.std().item() == pytest.approx(0.3, rel=0.02)
    assert noisy.abs().max() > 1.0 / 3  # additive, not clamped
    assert torch.equal(_corrupt("gaussian", x + 0.5, 0.0), x + 0.5)


def test_masking_drops_a_share_of_entries_to_the_background() -> None:
    x = torch.ones(64, 1, 28, 28)
    masked = _corrupt("masking", x, 0.25)
    assert set(masked.unique().tolist()) == {-1.0, 1.0}
    assert (masked == -1).float().mean().item() == pytest.approx(0.25, abs=0.01)


def test_salt_and_pepper_sets_half_low_half_high() -> None:
    x = torch.zeros(64, 1, 28, 28)
    out = _corrupt("salt_and_pepper", x, 0.4)
    assert (out == -1).float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert (out == 1).float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert (out == 0).float().mean().item() == pytest.approx(0.6, abs=0.01)


def test_levels_apply_per_item() -> None:
    x = torch.zeros(2, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    out = CORRUPTIONS["masking"].apply(x + 1, torch.tensor([0.0, 1.0]), (-1.0, 1.0), g)
    assert torch.equal(out[0], x[0] + 1) and torch.equal(out[1], x[1] - 1)


def test_level_checks_and_ladders() -> None:
    with pytest.raises(ValueError, match="rate must be in"):
        check_levels("masking", [0.5, 1.5])
    with pytest.raises(ValueError, match="unknown corruption 'blur'"):
        check_levels("blur", [0.1])
    assert default_ladder("gaussian", (0.0, 1.0))[-1] == 0.5  # scaled to the range
    assert default_ladder("masking", (0.0, 1.0))[0] == 0.0
    with pytest.raises(ValueError, match="unknown corruption"):
        DenoisingObjective(DenoisingAutoEncoder((2,)), Langevin(), MNIST, torch.Generator(),
                           corruption="blur")


# ---- model and score ---------------------------------------------------------------------

@pytest.mark.parametrize(("arch", "shape"), [("mlp", (1, 28, 28)), ("conv", (1, 28, 28)),
                                             ("conv", (3, 32, 32)), ("mlp", (2,))])
def test_energy_is_the_summed_squared_reconstruction_error(arch: str, shape: tuple) -> None:
    torch.manual_seed(0)
    model = DenoisingAutoEncoder(shape, arch=arch, hidden=[32], code_dim=8)
    x = torch.rand(5, *shape) * 2 - 1
    recon = model.reconstruct(x)
    assert recon.shape == x.shape and recon.abs().max() <= 1.0
    torch.testing.assert_close(model.energy(x), (recon - x).pow(2).flatten(1).sum(1))
    linear = DenoisingAutoEncoder(shape, arch=arch, hidden=[32], value_range=None)
    assert linear.reconstruct(x * 100).abs().max() > 1.0  # no squashing without a range


def test_score_energy_has_the_energy_value_and_minus_the_score_as_gradient() -> None:
    torch.manual_seed(0)
    model = DenoisingAutoEncoder((1, 28, 28), hidden=[32], code_dim=8)
    objective = DenoisingObjective(model, Langevin(), MNIST, torch.Generator(), sigma=0.4)
    x = (torch.rand(3, 1, 28, 28) * 2 - 1).requires_grad_(True)
    value = objective.score_energy(x)
    (grad,) = torch.autograd.grad(value.sum(), x)
    with torch.no_grad():
        recon = model.reconstruct(x)
        torch.testing.assert_close(value, model.energy(x))
    torch.testing.assert_close(grad, -(recon - x.detach()) / 0.4 ** 2)
    assert all(p.grad is None for p in model.parameters())


def test_dae_chain_sampler_is_the_dae_markov_chain() -> None:
    torch.manual_seed(0)
    model = DenoisingAutoEncoder((1, 28, 28), hidden=[32], code_dim=8)
    chain = DenoisingChain(sigma=0.3, steps=3)  # no box: compare the raw updates
    objective = DenoisingObjective(model, chain, MNIST, torch.Generator(), sigma=0.3)
    x0 = torch.rand(4, 1, 28, 28) * 2 - 1
    out = chain.sample(objective.score_energy, x0, generator=torch.Generator().manual_seed(5)).x
    g, x = torch.Generator().manual_seed(5), x0.clone()
    with torch.no_grad():
        for _ in range(3):  # x <- r(x + sigma * eps)
            x = model.reconstruct(x + 0.3 * torch.randn(x.shape, generator=g))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-5)


def test_dae_chain_sigma_follows_the_dae() -> None:
    cfg = compose_config(["model=dae", "sampler=dae_chain", "device=cpu",
                          "model.objective.sigma=0.7"])
    validate_config(cfg)
    parts = build_components(cfg, MNIST)
    assert isinstance(parts.sampler, DenoisingChain) and parts.sampler.sigma == 0.7
    assert parts.sampler.box == (-1.0, 1.0)


# ---- training ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> tuple:
    """A DAE trained for 300 steps (a few seconds) and the run dir."""
    run = tmp_path_factory.mktemp("dae")
    cfg = compose_config([*TINY_DAE, "trainer.max_steps=300", "trainer.batch_size=64",
                          "trainer.image_every=300", "trainer.ckpt_every=300",
                          "trainer.log_every=20", "model.net.hidden=[256]",
                          "model.net.code_dim=64", "model.objective.sample_steps=20"])
    validate_config(cfg)
    metrics = train(cfg, run)
    parts = build_components(cfg, MNIST)
    load_model_state(parts.model, load_checkpoint(run))
    parts.model.eval()
    test = load_idx_dataset("mnist", str(data_root)).test[:1000].float() / 127.5 - 1
    return parts.objective, test, metrics, run


def test_energy_rises_monotonically_with_corruption(trained: tuple) -> None:
    objective, test, _, _ = trained
    report = objective.evaluate(test, EvalConfig(batch_size=500),
                                torch.Generator().manual_seed(0))
    rows = report.tables["dae/energy_vs_corruption"]
    means = [row["mean_energy"] for row in rows]
    assert [row["sigma"] for row in rows] == objective.eval_levels and rows[0]["sigma"] == 0
    assert all(b > a for a, b in zip(means, means[1:])), means
    assert report.metrics["dae/energy_monotonic"] == 1.0
    assert "dae_corruption" in report.figures
    for kind in ("salt_and_pepper", "masking"):  # the same energy, other corruptions
        objective.kind, objective.corruption = kind, CORRUPTIONS[kind]
        levels = [0.0, 0.1, 0.2, 0.3]
        energies = [objective.energy(objective.corrupt(test, lv, torch.Generator().manual_seed(0)))
                    .mean().item() for lv in levels]
        assert all(b > a for a, b in zip(energies, energies[1:])), (kind, energies)
    objective.kind, objective.corruption = "gaussian", CORRUPTIONS["gaussian"]


def test_training_learns_and_logs(trained: tuple) -> None:
    objective, test, metrics, run = trained
    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0}).Reload()
    loss = events.Scalars("train/loss")
    assert loss[-1].value < 0.5 * loss[0].value
    assert metrics["energy_clean"] < 0.5 * metrics["energy_corrupted"]
    assert {"images/clean", "images/corrupted", "images/reconstructed",
            "images/chain"} <= set(events.Tags()["images"])
    assert objective.model.pooled().shape == (256, 1, 28, 28)  # saved with the weights


def test_chain_samples_sit_on_the_data_manifold(trained: tuple) -> None:
    objective, test, _, _ = trained
    result = objective.generate(64, steps=20, generator=torch.Generator().manual_seed(0),
                                snapshot_every=10)
    assert result.x.shape == (64, 1, 28, 28) and len(result.chain) == 3
    e_samples = objective.energy(result.x).mean().item()
    e_test = objective.energy(test).mean().item()
    e_noise = objective.energy(torch.rand(64, 1, 28, 28) * 2 - 1).mean().item()
    assert e_samples < 2 * e_test and e_samples < e_noise / 3
    # Digits are mostly background with a few bright strokes, as in the data.
    assert 0.05 < (result.x > 0).float().mean().item() < 0.35
    assert result.x.std(0).mean().item() > 0.1  # not one image repeated


def test_langevin_on_the_score_and_data_starts(trained: tuple) -> None:
    objective, test, _, _ = trained
    objective.sampler = Langevin(step_size=0.02, noise_std=None, grad_clip=None,
                                 box=[-1.0, 1.0])
    objective.start, objective.final_denoise = "data", True
    start = objective.start_points(8, torch.Generator().manual_seed(0))
    pool = objective.model.pooled()
    assert any(torch.equal(start[0], item) for item in pool)
    result = objective.generate(16, steps=30, generator=torch.Generator().manual_seed(0))
    e_test = objective.energy(test).mean().item()
    assert objective.energy(result.x).mean().item() < 2 * e_test
    objective.start, objective.final_denoise = "noise", False


def test_cli_train_sample_eval(tmp_path: Path, data_root: Path) -> None:
    run = tmp_path / "run"
    run_ok([*TINY_DAE, "model.objective.start=data", f"hydra.run.dir={run}"], tmp_path)
    run_ok(["task=sample", f"ckpt={run}", "sample.n=10", "device=cpu",
           f"hydra.run.dir={tmp_path / 'sample'}"], tmp_path)
    samples = torch.load(tmp_path / "sample" / "samples.pt")
    assert samples.shape == (10, 1, 28, 28) and samples.abs().max() <= 1.0
    assert (tmp_path / "sample" / "chain.png").is_file()
    # task=eval in-process (what the CLI runs after Hydra composed the same overrides)
    overrides = ["task=eval", f"ckpt={run}", "device=cpu", "eval.max_test=100",
                 "eval.sample_quality=false", "eval.ood=[noise]"]
    metrics = TASKS["eval"](compose_config(overrides), tmp_path / "eval", overrides)
    assert len(metrics["tables"]["dae/energy_vs_corruption"]) == 7
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= written["ood/auroc_noise"] <= 1.0  # 4 steps: no claim on its value
    assert (tmp_path / "eval" / "eval_dae_corruption.png").is_file()
