"""VAE: the ELBO terms against hand computations, the IWAE bound, dynamic binarisation,
shapes and ranges, a short real training that learns, resume, and train -> sample -> eval
through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ebmrun.build import build_components, validate_config
from ebmrun.checkpoint import load_checkpoint
from ebmrun.config import EvalConfig
from ebmrun.data.idx import load_idx_dataset
from ebmrun.errors import UserError
from ebmrun.models.vae import VAE
from ebmrun.objectives import vae as vae_objective
from ebmrun.objectives.base import DataInfo
from ebmrun.objectives.vae import VAEObjective, binarize, manifold_latents
from ebmrun.run import train
from ebmrun.samplers.langevin import Langevin

from conftest import compose_config, run_ok

UNIT = DataInfo((1, 28, 28), (0.0, 1.0), (0.0, 1.0))
TINY_VAE = ["model=vae", "device=cpu", "device.threads=1", "dataset.value_range=[0,1]",
            "trainer.max_steps=4", "trainer.batch_size=16", "trainer.log_every=2",
            "trainer.image_every=2", "trainer.ckpt_every=2", "trainer.progress=false",
            "model.net.hidden=[32]", "model.net.z_dim=2"]


def _model(**kw) -> VAE:
    torch.manual_seed(0)
    kw = {"hidden": [16], "z_dim": 3, "value_range": [0.0, 1.0], **kw}
    return VAE((1, 4, 4), **kw)


# ---- the ELBO terms ----------------------------------------------------------------------

def test_kl_and_reconstruction_match_hand_computation() -> None:
    model = _model()
    mu = torch.tensor([[1.0, 0.0, -2.0]])
    logvar = torch.tensor([[0.0, math.log(4.0), math.log(0.25)]])
    model.encode = lambda x: (mu, logvar)  # fix q(z|x)
    x = torch.rand(1, 1, 4, 4).round()
    eps = torch.tensor([[0.5, -1.0, 2.0]])
    recon, kl = model.elbo_terms(x, eps)
    # KL = ½ Σ (μ² + σ² − log σ² − 1): (1+1−0−1) + (0+4−log 4−1) + (4+¼−log ¼−1)
    expected_kl = 0.5 * (1.0 + (3.0 - math.log(4.0)) + (3.25 + math.log(4.0)))
    assert kl.item() == pytest.approx(expected_kl, rel=1e-6)
    z = mu + torch.exp(0.5 * logvar) * eps  # = [1.5, -2.0, -1.0]
    p = torch.sigmoid(model.decode(z)).flatten()
    bce = -(x.flatten() * p.log() + (1 - x.flatten()) * (1 - p).log()).sum()
    assert recon.item() == pytest.approx(bce.item(), rel=1e-5)


def test_kl_matches_a_monte_carlo_estimate() -> None:
    model = _model()
    x = torch.rand(4, 1, 4, 4)
    mu, logvar = model.encode(x)
    _, kl = model.elbo_terms(x, torch.zeros(4, 3))
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    z = q.sample((20000,))
    p = torch.distributions.Normal(0.0, 1.0)
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)
    torch.testing.assert_close(mc, kl.detach(), atol=0.05, rtol=0.02)


def test_gaussian_likelihood_is_the_normal_density() -> None:
    model = _model(likelihood="gaussian", gaussian_std=0.3)
    mean, x = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    expected = torch.distributions.Normal(mean, 0.3).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(model.likelihood.log_prob(mean, x), expected)
    torch.testing.assert_close(model.likelihood.nll_sum(mean, x), -expected.sum())
    assert not model.likelihood.log_std.requires_grad  # fixed std
    assert _model(likelihood="gaussian").likelihood.log_std.requires_grad  # learned std


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_fused_batch_terms_equal_the_per_item_terms(likelihood: str) -> None:
    model = _model(likelihood=likelihood)
    x, eps = torch.rand(5, 1, 4, 4), torch.randn(5, 3)
    recon, kl = model.elbo_terms(x, eps)
    batch_recon, batch_kl = model.batch_terms(x, eps)
    torch.testing.assert_close(batch_recon, recon.mean())
    torch.testing.assert_close(batch_kl, kl.mean())


def test_auto_likelihood_follows_the_value_range() -> None:
    assert _model().likelihood_name == "bernoulli"
    assert _model(value_range=[-1.0, 1.0]).likelihood_name == "gaussian"
    assert _model(value_range=None).likelihood_name == "gaussian"
    with pytest.raises(ValueError, match="unknown vae likelihood 'poisson'"):
        _model(likelihood="poisson")


# ---- the IWAE bound ----------------------------------------------------------------------

def test_one_importance_sample_is_the_single_sample_elbo() -> None:
    model = _model()
    x, eps = torch.rand(6, 1, 4, 4).round(), torch.randn(1, 6, 3)
    log_w = model.log_weights(x, eps)[0]
    mu, logvar = model.encode(x)
    z = mu + torch.exp(0.5 * logvar) * eps[0]
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(1)
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    recon, _ = model.elbo_terms(x, eps[0])
    torch.testing.assert_close(log_w, -recon + prior - q)


def test_iwae_bound_tightens_with_k_and_is_above_the_elbo() -> None:
    model = _model()
    objective = VAEObjective(model, Langevin(), DataInfo((1, 4, 4), (0.0, 1.0), (0.0, 1.0)),
                             torch.Generator())
    x = torch.rand(400, 1, 4, 4).round()
    nll = {k: objective.iw_nll(x, k, torch.Generator().manual_seed(k)).mean().item()
           for k in (1, 10, 100)}
    with torch.no_grad():
        mu, logvar = model.encode(x)
        recon = torch.stack([model.elbo_terms(x, torch.randn(400, 3))[0] for _ in range(50)])
        neg_elbo = (recon.mean(0) + model.elbo_terms(x, torch.zeros(400, 3))[1]).mean().item()
    assert nll[1] == pytest.approx(neg_elbo, abs=0.3)  # k = 1: an ELBO estimate
    assert nll[100] < nll[10] < nll[1]  # log p̂_k rises towards log p(x) with k
    assert nll[100] < neg_elbo


def test_iwae_chunks_combine_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    objective = VAEObjective(model, Langevin(), DataInfo((1, 4, 4), (0.0, 1.0), (0.0, 1.0)),
                             torch.Generator())
    x = torch.rand(8, 1, 4, 4).round()
    monkeypatch.setattr(vae_objective, "IW_ROWS", 8 * 7)  # 7 samples per chunk: 7, 7, 6
    chunked = objective.iw_nll(x, 20, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)  # the same draws, in one piece
    eps = torch.cat([torch.randn(m, 8, 3, generator=g) for m in (7, 7, 6)])
    with torch.no_grad():
        log_w = model.log_weights(x, eps).double()
    expected = -(torch.logsumexp(log_w, dim=0) - math.log(20)).float()
    torch.testing.assert_close(chunked, expected)


# ---- binarisation ------------------------------------------------------------------------

def test_binarize_draws_bernoulli_pixels() -> None:
    grey = torch.full((200, 1, 28, 28), 0.3)
    drawn = binarize(grey, torch.Generator().manual_seed(0))
    assert set(drawn.unique().tolist()) == {0.0, 1.0}
    assert drawn.mean().item() == pytest.approx(0.3, abs=0.01)


def test_dynamic_binarisation_in_training_and_a_fixed_test_draw() -> None:
    cfg = compose_config(["model=vae", "device=cpu", "dataset.value_range=[0,1]",
                          "dataset.binarize=dynamic"])
    objective = build_components(cfg, UNIT).objective
    assert objective.binarize == "dynamic"
    grey = torch.rand(8, 1, 28, 28)
    seen = []
    objective.model.batch_terms = lambda x, eps: (seen.append(x) or (x.sum(), x.sum()))
    objective.training_step(grey)
    objective.training_step(grey)
    assert set(seen[0].unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(seen[0], seen[1])  # a fresh draw every time the items are used
    test = objective.binarized_test(grey)
    assert torch.equal(test, objective.binarized_test(grey))  # the test draw is fixed


def test_binarize_needs_unit_range(data_root: Path) -> None:
    with pytest.raises(UserError, match=r"fix: dataset.value_range=\[0,1\]"):
        load_idx_dataset("mnist", str(data_root), binarize="dynamic")
    with pytest.raises(UserError, match="choose from: null, dynamic"):
        load_idx_dataset("mnist", str(data_root), value_range=(0, 1), binarize="static")
    data = load_idx_dataset("mnist", str(data_root), value_range=(0, 1), binarize="dynamic")
    assert data.binarize == "dynamic"
    model = VAE((1, 28, 28), value_range=[-1.0, 1.0])
    with pytest.raises(ValueError, match="binarize needs data in"):
        VAEObjective(model, Langevin(), DataInfo((1, 28, 28), (-1.0, 1.0), (-1.0, 1.0)),
                     torch.Generator(), binarize="dynamic")
    with pytest.raises(ValueError, match="bernoulli likelihood needs data in"):
        VAEObjective(VAE((1, 28, 28), likelihood="bernoulli"), Langevin(),
                     DataInfo((1, 28, 28), (-1.0, 1.0), (-1.0, 1.0)), torch.Generator())


# ---- shapes, sampling, pictures ----------------------------------------------------------

@pytest.mark.parametrize(("arch", "value_range"), [("mlp", (0.0, 1.0)), ("conv", (0.0, 1.0)),
                                                   ("conv", (-1.0, 1.0))])
def test_shapes_ranges_and_energy(arch: str, value_range: tuple) -> None:
    info = DataInfo((1, 28, 28), value_range, value_range)
    cfg = compose_config(["model=vae", "device=cpu", f"model.net.arch={arch}",
                          f"dataset.value_range=[{value_range[0]},{value_range[1]}]"])
    objective = build_components(cfg, info).objective
    x = torch.rand(5, 1, 28, 28) * (value_range[1] - value_range[0]) + value_range[0]
    energy = objective.energy(x)
    assert energy.shape == (5,) and torch.isfinite(energy).all()
    torch.testing.assert_close(energy, objective.energy(x))  # fixed seed: deterministic
    samples = objective.generate(7, generator=torch.Generator().manual_seed(0)).x
    assert samples.shape == (7, 1, 28, 28)
    assert samples.min() >= value_range[0] and samples.max() <= value_range[1]


def test_latent_refinement_lowers_the_latent_energy() -> None:
    cfg = compose_config(["model=vae", "device=cpu", "dataset.value_range=[0,1]",
                          "model.objective.latent_refine=true", "sampler.noise_std=0.0",
                          "sampler.grad_clip=null", "sampler.step_size=0.01"])
    objective = build_components(cfg, UNIT).objective
    result = objective.generate(6, steps=10, generator=torch.Generator().manual_seed(0),
                                snapshot_every=5)
    assert result.x.shape == (6, 1, 28, 28) and len(result.chain) == 3
    trace = result.stats["energy"]
    assert trace[-1] < trace[0]
    assert all(p.grad is None for p in objective.model.parameters())


def test_manifold_grid_covers_the_prior() -> None:
    z = manifold_latents(4, torch.device("cpu"))
    assert z.shape == (16, 2)
    assert z[:, 0].min() == pytest.approx(-1.6449, abs=1e-3)  # the 5 % quantile
    assert z[0, 1] > z[-1, 1] and z[0, 0] < z[3, 0]  # z1 falls down the rows, z0 rises along


# ---- training ----------------------------------------------------------------------------

def test_short_training_learns(tmp_path: Path, data_root: Path) -> None:
    cfg = compose_config([*TINY_VAE, "trainer.max_steps=150", "trainer.batch_size=64",
                          "trainer.image_every=150", "trainer.ckpt_every=150",
                          "trainer.log_every=10", "model.net.hidden=[128]",
                          "model.net.z_dim=8", "dataset.binarize=dynamic"])
    validate_config(cfg)
    metrics = train(cfg, tmp_path)
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0}).Reload()
    first = events.Scalars("train/neg_elbo")[0].value
    assert metrics["neg_elbo"] < 0.5 * first  # ~545 nats at the start
    assert metrics["kl"] > 1.0  # the codes carry information
    assert {"train/recon", "train/kl", "train/neg_elbo"} <= set(events.Tags()["scalars"])
    images = set(events.Tags()["images"])
    assert {"images/reconstructions", "images/prior_samples"} <= images
    assert "images/manifold" not in images  # z_dim = 8: no 2-D manifold to draw
    parts = build_components(cfg, DataInfo((1, 28, 28), (0.0, 1.0), (0.0, 1.0)))
    parts.model.load_state_dict(load_checkpoint(tmp_path)["model"])
    test = load_idx_dataset("mnist", str(data_root), value_range=(0, 1)).test[:200]
    report = parts.objective.evaluate(test.float() / 255, EvalConfig(iw_samples=20),
                                      torch.Generator().manual_seed(0))
    nll, neg_elbo = report.metrics["vae/test_nll_iw"], report.metrics["vae/test_neg_elbo"]
    assert nll < neg_elbo < 0.5 * first
    assert set(report.figures) == {"vae_reconstructions", "vae_prior_samples"}


def test_resume_is_exact(tmp_path: Path, data_root: Path) -> None:
    overrides = [*TINY_VAE, "dataset.binarize=dynamic"]
    straight = train(compose_config(overrides), tmp_path / "straight")
    train(compose_config([*overrides, "trainer.max_steps=2"]), tmp_path / "split")
    ckpt = load_checkpoint(tmp_path / "split")
    cfg = compose_config(overrides)
    resumed = train(cfg, tmp_path / "split", resume_ckpt=ckpt)
    assert resumed["loss"] == pytest.approx(straight["loss"], rel=1e-6)
    a = load_checkpoint(tmp_path / "straight")["model"]
    b = load_checkpoint(tmp_path / "split")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    events = EventAccumulator(str(tmp_path / "straight"), size_guidance={"images": 0}).Reload()
    assert "images/manifold" in events.Tags()["images"]  # z_dim = 2


def test_cli_train_sample_eval(tmp_path: Path, data_root: Path) -> None:
    run = tmp_path / "run"
    run_ok([*TINY_VAE, "dataset.binarize=dynamic", f"hydra.run.dir={run}"], tmp_path)
    run_ok(["task=sample", f"ckpt={run}", "sample.n=12", "device=cpu",
           f"hydra.run.dir={tmp_path / 'sample'}"], tmp_path)
    samples = torch.load(tmp_path / "sample" / "samples.pt")
    assert samples.shape == (12, 1, 28, 28) and 0 <= samples.min() <= samples.max() <= 1
    run_ok(["task=eval", f"ckpt={run}", "device=cpu", "eval.iw_samples=5",
           "eval.max_test=64", "eval.sample_quality=false",
           f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["vae/iw_samples"] == 5
    assert metrics["vae/test_nll_iw"] <= metrics["vae/test_neg_elbo"] + 5.0
    assert 0.0 <= metrics["ood/auroc_noise"] <= 1.0
    assert (tmp_path / "eval" / "eval_vae_manifold.png").is_file()


def test_loss_is_bce_plus_kl_as_in_the_framework_example() -> None:
    # The framework example's loss (sigmoid + F.binary_cross_entropy, summed) per image.
    model = _model()
    x, eps = torch.rand(3, 1, 4, 4), torch.randn(3, 3)
    mu, logvar = model.encode(x)
    z = mu + torch.exp(0.5 * logvar) * eps
    bce = F.binary_cross_entropy(torch.sigmoid(model.decode(z)), x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    recon, kl = model.batch_terms(x, eps)
    torch.testing.assert_close((recon + kl) * 3, bce + kld, rtol=1e-5, atol=1e-4)
