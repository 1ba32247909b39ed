"""RBM: free energy and log Z against brute-force enumeration, AIS against the exact log Z,
block Gibbs against the exact distribution, the CD/PCD loss and gradient by hand, a short
real training that learns, exact resume, and train -> eval (AIS) through the CLI."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from ebmrun.build import build_components, validate_config
from ebmrun.checkpoint import load_checkpoint
from ebmrun.errors import UserError
from ebmrun.metrics.ais import (ais_log_partition, base_rate_bias, beta_schedule,
                                exact_log_partition)
from ebmrun.models.rbm import RBM
from ebmrun.objectives.base import DataInfo
from ebmrun.run import train
from ebmrun.samplers.gibbs import BlockGibbs

from conftest import compose_config, run_ok

TINY_RBM = ["model=rbm", "device=cpu", "dataset.value_range=[0,1]", "dataset.binarize=dynamic",
            "trainer.max_steps=4", "trainer.batch_size=16", "trainer.log_every=2",
            "trainer.image_every=2", "trainer.ckpt_every=2", "trainer.progress=false",
            "model.net.hidden=16", "model.objective.sample_steps=5", "trainer.grad_clip=null"]


def tiny_rbm(visible: int = 4, hidden: int = 3, seed: int = 0, scale: float = 1.0) -> RBM:
    torch.manual_seed(seed)
    rbm = RBM((visible,), hidden=hidden)
    with torch.no_grad():
        rbm.weight.normal_(0, scale)
        rbm.visible_bias.normal_(0, scale)
        rbm.hidden_bias.normal_(0, scale)
    return rbm.double().requires_grad_(False)


def all_states(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float64)


def brute_force_log_p(rbm: RBM) -> tuple[torch.Tensor, torch.Tensor]:
    """All 2^V visible states and their exact log p(v), from E(v, h) over all (v, h)."""
    v, h = all_states(rbm.visible), all_states(rbm.hidden)
    vv, hh = v.repeat_interleave(len(h), 0), h.repeat(len(v), 1)
    minus_e = -rbm.joint_energy(vv, hh).view(len(v), len(h))
    log_pv = torch.logsumexp(minus_e, 1)
    return v, log_pv - torch.logsumexp(log_pv, 0)


# ---- the model ---------------------------------------------------------------------------

def test_free_energy_matches_brute_force_enumeration() -> None:
    rbm = tiny_rbm(4, 3)
    v, h = all_states(4), all_states(3)
    for state in v:  # F(v) = −log Σ_h exp(−E(v, h)), with E written out by hand
        e = torch.stack([-(state @ rbm.visible_bias) - (hs @ rbm.hidden_bias)
                         - state @ rbm.weight @ hs for hs in h])
        expected = -torch.logsumexp(-e, 0)
        assert float(rbm.free_energy(state[None])) == pytest.approx(float(expected), abs=1e-10)
    torch.testing.assert_close(rbm.energy(v), rbm.free_energy(v))


@pytest.mark.parametrize(("visible", "hidden"), [(4, 3), (3, 5)])  # enumerates h, then v
def test_exact_log_partition_matches_enumeration(visible: int, hidden: int) -> None:
    rbm = tiny_rbm(visible, hidden, seed=1)
    v, h = all_states(visible), all_states(hidden)
    minus_e = -rbm.joint_energy(v.repeat_interleave(len(h), 0), h.repeat(len(v), 1))
    assert exact_log_partition(rbm) == pytest.approx(float(torch.logsumexp(minus_e, 0)), abs=1e-9)


def test_beta_schedule_runs_from_zero_to_one() -> None:
    betas = beta_schedule(1000)
    assert len(betas) == 1001 and betas[0] == 0 and betas[-1] == 1
    assert (betas.diff() > 0).all()
    assert betas.diff()[-1] < betas.diff()[0]  # denser near β = 1


def test_ais_matches_exact_log_z_on_the_tiny_rbm() -> None:
    rbm = tiny_rbm(4, 3).float()
    exact = exact_log_partition(rbm)
    for base in (None, torch.zeros(4)):
        result = ais_log_partition(rbm, chains=200, steps=1000,
                                   generator=torch.Generator().manual_seed(0), base_bias=base)
        assert result.log_z == pytest.approx(exact, abs=0.03)
        assert 150 < result.ess <= 200  # a tiny model: the weights are nearly equal


def test_ais_matches_exact_log_z_at_mnist_size() -> None:
    # 784 visible x 12 hidden: log Z by enumerating the 4096 hidden states.
    torch.manual_seed(3)
    rbm = RBM((1, 28, 28), hidden=12)
    with torch.no_grad():
        rbm.weight.normal_(0, 0.1)
        rbm.visible_bias.normal_(-1, 1)
        rbm.hidden_bias.normal_(0, 1)
    exact = exact_log_partition(rbm)
    fake_data = torch.bernoulli(torch.sigmoid(rbm.visible_bias).expand(500, -1))
    result = ais_log_partition(rbm, chains=50, steps=1000, generator=torch.Generator()
                               .manual_seed(0), base_bias=base_rate_bias(fake_data))
    assert result.log_z == pytest.approx(exact, abs=0.15)


# ---- block Gibbs -------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_block_gibbs_samples_the_exact_distribution(temperature: float) -> None:
    rbm = tiny_rbm(4, 3, seed=2).float()
    sampler = BlockGibbs(steps=30, temperature=temperature)
    v0 = torch.zeros(8000, 4)
    result = sampler.sample(rbm, v0, generator=torch.Generator().manual_seed(0))
    codes = (result.x * torch.tensor([8.0, 4.0, 2.0, 1.0])).sum(1).long()
    empirical = torch.bincount(codes, minlength=16).double() / len(codes)
    # p_T(v) ∝ Σ_h exp(−E(v, h)/T): the RBM with all parameters divided by T.
    cooled = tiny_rbm(4, 3, seed=2)
    with torch.no_grad():
        for p in cooled.parameters():
            p.div_(temperature)
    _, log_p = brute_force_log_p(cooled)
    assert 0.5 * float((empirical - log_p.exp()).abs().sum()) < 0.03  # total variation
    assert set(result.x.unique().tolist()) <= {0.0, 1.0}
    assert result.stats["energy"].shape == (30,) and float(result.stats["acceptance_rate"]) == 1


def test_gibbs_needs_block_conditionals() -> None:
    with pytest.raises(UserError, match="sampler=gibbs needs a model with block conditionals"):
        BlockGibbs(steps=2).sample(lambda x: x.pow(2).sum(1), torch.zeros(3, 4))


def test_rbm_refuses_other_samplers() -> None:
    cfg = compose_config(["model=rbm", "device=cpu", "sampler=langevin"])
    with pytest.raises(UserError, match="fix: sampler=gibbs"):
        build_components(cfg, DataInfo((1, 28, 28), (0.0, 1.0), (0.0, 1.0)))


# ---- the objective -----------------------------------------------------------------------

def _objective(persistent: bool, steps: int):
    cfg = compose_config(["model=rbm", "device=cpu", "model.net.hidden=3",
                          f"model.objective.persistent={str(persistent).lower()}",
                          f"sampler.steps={steps}", "model.objective.init_visible_bias=false"])
    return build_components(cfg, DataInfo((4,), (0.0, 1.0), (0.0, 1.0))).objective


def test_loss_and_gradient_match_the_cd_update_by_hand() -> None:
    objective = _objective(persistent=True, steps=0)  # 0 sweeps: the negatives are the chains
    rbm = objective.model
    data = torch.tensor([[1.0, 0, 1, 1], [0, 1, 1, 0]])
    chains = torch.tensor([[0.0, 0, 1, 1], [1, 1, 1, 1]])
    objective.chains = chains.clone()
    out = objective.training_step(data)
    fe = {tuple(v.tolist()): float(f) for v, f in zip(all_states(4), rbm.free_energy(
        all_states(4).float()).detach())}
    expected = (sum(fe[tuple(v.tolist())] for v in data)
                - sum(fe[tuple(v.tolist())] for v in chains)) / 2
    assert float(out["loss"].detach()) == pytest.approx(expected, abs=1e-5)
    out["loss"].backward()
    # −(positive − negative phase) statistics: ⟨v σ(c + vW)ᵀ⟩_data − ⟨...⟩_model, negated.
    def stats(v: torch.Tensor) -> torch.Tensor:
        return v.T @ torch.sigmoid(v @ rbm.weight.detach() + rbm.hidden_bias.detach()) / len(v)
    torch.testing.assert_close(rbm.weight.grad, stats(chains) - stats(data))
    torch.testing.assert_close(rbm.visible_bias.grad, chains.mean(0) - data.mean(0))


def test_cd_starts_at_the_data_and_pcd_keeps_its_chains() -> None:
    cd = _objective(persistent=False, steps=0)
    data = torch.bernoulli(torch.full((6, 4), 0.5), generator=torch.Generator().manual_seed(0))
    assert float(cd.training_step(data)["loss"].detach()) == pytest.approx(0.0, abs=1e-6)
    pcd = _objective(persistent=True, steps=3)
    pcd.training_step(data)
    state = pcd.state_dict()
    assert state["chains"].shape == (6, 4) and state["bias_initialised"]
    fresh = _objective(persistent=True, steps=3)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.chains, pcd.chains)


def test_short_training_raises_the_exact_test_likelihood(tmp_path: Path, data_root: Path) -> None:
    cfg = compose_config([*TINY_RBM, "trainer.max_steps=300", "trainer.batch_size=50",
                          "trainer.image_every=300", "trainer.ckpt_every=300",
                          "trainer.log_every=50", "sampler.steps=1"])
    validate_config(cfg)
    info = DataInfo((1, 28, 28), (0.0, 1.0), (0.0, 1.0))
    untrained = build_components(cfg, info).objective
    train(cfg, tmp_path)
    trained = build_components(cfg, info).objective
    trained.model.load_state_dict(load_checkpoint(tmp_path)["model"])
    from ebmrun.data.idx import load_idx_dataset

    test = load_idx_dataset("mnist", str(data_root), value_range=(0, 1)).test[:500]
    v = trained.test_visible(test.float() / 255)

    def exact_ll(objective) -> float:  # 16 hidden units: log Z by enumeration
        log_z = exact_log_partition(objective.model)
        return float(-objective.model.free_energy(v).detach().double().mean()) - log_z

    before, after = exact_ll(untrained), exact_ll(trained)
    assert before < -500 and after < -100 and after > before + 250  # ~ -543 -> ~ -180
    ais = ais_log_partition(trained.model, chains=50, steps=500,
                            generator=torch.Generator().manual_seed(0),
                            base_bias=base_rate_bias(v))
    assert ais.log_z == pytest.approx(exact_log_partition(trained.model), abs=1.0)


def test_resume_is_exact(tmp_path: Path, data_root: Path) -> None:
    # The PCD chains and the bias-initialisation flag travel with the checkpoint.
    overrides = [*TINY_RBM, "sampler.steps=2", "trainer.image_every=100"]
    straight = train(compose_config(overrides), tmp_path / "straight")
    train(compose_config([*overrides, "trainer.max_steps=2"]), tmp_path / "split")
    resumed = train(compose_config(overrides), tmp_path / "split",
                    resume_ckpt=load_checkpoint(tmp_path / "split"))
    assert resumed["loss"] == pytest.approx(straight["loss"], rel=1e-6)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["objective"]["chains"], b["objective"]["chains"])


def test_cli_train_and_eval(tmp_path: Path, data_root: Path) -> None:
    run = tmp_path / "run"
    run_ok([*TINY_RBM, f"hydra.run.dir={run}"], tmp_path)
    assert load_checkpoint(run)["objective"]["chains"].shape == (16, 784)
    run_ok(["task=eval", f"ckpt={run}", "device=cpu", "eval.ais_chains=10",
           "eval.ais_steps=50", "eval.max_test=64", "eval.sample_quality=false",
           "eval.ood=[noise]", f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["rbm/ais_steps"] == 50 and math.isfinite(metrics["rbm/test_ll_ais"])
    assert metrics["rbm/test_ll_ais"] < 0 and math.isfinite(metrics["rbm/log_z_ais"])
    assert (tmp_path / "eval" / "eval_rbm_filters.png").is_file()
    samples = torch.load(run / "samples.pt")  # drawn by generate at the end of training
    assert samples.shape == (100, 1, 28, 28) and 0 <= samples.min() <= samples.max() <= 1
