"""Samplers: one contract test over every sampler, config instantiation, and (slow)
statistical checks against analytic energies with known answers."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from ebmrun.build import build_components, validate_config
from ebmrun.cli import CONFIG_DIR
from ebmrun.models.analytic import GaussianEnergy, GaussianMixture, build_analytic_energy
from ebmrun.objectives.base import DataInfo
from ebmrun.samplers import (HMC, MALA, SAMPLERS, STRUCTURED_SAMPLERS, AnnealedLangevin,
                             DenoisingChain, Langevin, RandomWalkMetropolis, ReplicaExchange,
                             NUTS, Sampler, StepSizeAdapter, UnderdampedLangevin)
from ebmrun.samplers.box import in_box, reflect_into_box

from conftest import compose_config

# Small, fast settings of every sampler (and of the variants with their own code paths).
FAST: dict[str, Callable[..., Sampler]] = {
    "langevin": lambda **kw: Langevin(step_size=0.01, noise_std=None, grad_clip=None, **kw),
    "langevin_tutorial": lambda **kw: Langevin(**kw),
    "mala": lambda **kw: MALA(step_size=0.05, adapt_steps=3, **kw),
    "mala_per_chain_reject": lambda **kw: MALA(step_size=0.05, adapt="per_chain", adapt_steps=3,
                                               box_mode="reject", **kw),
    "hmc": lambda **kw: HMC(step_size=0.05, leapfrog_steps=3, adapt_steps=3, **kw),
    "hmc_reject": lambda **kw: HMC(step_size=0.05, leapfrog_steps=2, box_mode="reject",
                                   adapt="none", **kw),
    "rw_metropolis": lambda **kw: RandomWalkMetropolis(step_size=0.3, adapt_steps=3, **kw),
    "rw_metropolis_no_grad": lambda **kw: RandomWalkMetropolis(
        step_size=0.3, track_grad_norm=False, box_mode="reject", adapt_steps=3, **kw),
    "annealed_langevin": lambda **kw: AnnealedLangevin(step_size=0.01, initial_temperature=3.0,
                                                       **kw),
    "annealed_langevin_linear": lambda **kw: AnnealedLangevin(
        step_size=0.01, schedule="linear", anneal_fraction=0.5, grad_clip=1.0, **kw),
    "replica_exchange": lambda **kw: ReplicaExchange(num_replicas=3, max_temperature=4.0,
                                                     swap_every=2, adapt_steps=3, **kw),
    "replica_exchange_langevin": lambda **kw: ReplicaExchange(
        num_replicas=2, max_temperature=3.0, swap_every=1, move="langevin", **kw),
    "dae_chain": lambda **kw: DenoisingChain(sigma=0.1, **kw),
    "underdamped_langevin": lambda **kw: UnderdampedLangevin(step_size=0.2, **kw),
    "nuts": lambda **kw: NUTS(step_size=0.2, max_tree_depth=4, adapt_steps=3, **kw),
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
STEPS = 7


class TinyEnergy(nn.Module):
    """A confining energy with real parameters: MLP(x) + ½‖x‖², any item shape."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(dim, 8), nn.SiLU(), nn.Linear(8, 1))
        self.net[3].bias.requires_grad_(False)  # a mixed flag, which must survive sampling

    def energy(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1) + 0.5 * x.flatten(1).pow(2).sum(1)


# Sampler configs that are a family's settings of another sampler's class, not a sampler.
PRESETS: dict[str, type[Sampler]] = {
    "drl_langevin": Langevin,  # model=drl's per-level chain
    "jem_langevin": Langevin,  # model=jem's SGLD for p(x)
    "latent_langevin": Langevin,  # model=ebgan's latent refinement
}


def test_every_sampler_class_is_covered_and_configured() -> None:
    configs = {p.stem for p in (Path(CONFIG_DIR) / "sampler").glob("*.yaml")}
    # gibbs: tests/test_rbm.py
    assert configs == set(SAMPLERS) | set(STRUCTURED_SAMPLERS) | set(PRESETS)
    for name, cls in PRESETS.items():
        target = OmegaConf.load(Path(CONFIG_DIR) / "sampler" / f"{name}.yaml")._target_
        assert hydra.utils.get_class(target) is cls, name
    covered = {type(factory()) for factory in FAST.values()}
    assert covered == set(SAMPLERS.values())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(6, 2), (4, 1, 5, 5)])
@pytest.mark.parametrize("name", list(FAST))
def test_sampler_contract(name: str, shape: tuple, dtype: torch.dtype, device: str) -> None:
    torch.manual_seed(0)
    model = TinyEnergy(math.prod(shape[1:])).to(device=device, dtype=dtype).train()
    flags = [p.requires_grad for p in model.parameters()]
    sampler = FAST[name](steps=STEPS, box=[-1.0, 1.0])
    x0 = torch.randn(shape, dtype=dtype, device=device) * 0.6  # a few values outside the box
    x0_copy = x0.clone()

    def run(seed: int):
        generator = torch.Generator(device=device).manual_seed(seed)
        return sampler.sample(model.energy, x0, generator=generator, snapshot_every=3)

    result = run(0)
    assert result.x.shape == x0.shape and result.x.dtype == dtype
    assert result.x.device.type == device
    assert torch.equal(x0, x0_copy), "x0 was modified"
    assert torch.equal(result.x, run(0).x), "same seed, different samples"
    assert not torch.equal(result.x, run(1).x), "different seeds, same samples"
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags and model.training
    assert in_box(result.x, (-1.0, 1.0)).all() and torch.isfinite(result.x).all()
    for key in ("energy", "grad_norm", "acceptance"):
        assert result.stats[key].shape == (STEPS,), key
    assert torch.isfinite(result.stats["energy"]).all()
    assert ((result.stats["acceptance"] >= 0) & (result.stats["acceptance"] <= 1)).all()
    if name != "rw_metropolis_no_grad":  # gradient-free by request: NaN grad norms
        assert torch.isfinite(result.stats["grad_norm"]).all()
    assert isinstance(result.stats["step_size"], float) and result.stats["step_size"] > 0
    assert 0.0 <= result.stats["acceptance_rate"] <= 1.0
    assert [len(c) for c in [result.chain]] == [4]  # x0, steps 3 and 6, the last step
    assert all(s.shape == x0.shape for s in result.chain)
    assert all(math.isfinite(v) for k, v in result.summary().items() if "grad" not in k)


def test_zero_steps_returns_the_start() -> None:
    x0 = torch.rand(3, 2)
    for factory in FAST.values():
        result = factory(steps=0).sample(lambda x: x.pow(2).sum(1), x0)
        assert torch.equal(result.x, x0) and result.stats["energy"].shape == (0,)


def test_noise_conditional_energy_gets_the_sigma_schedule() -> None:
    sigmas = [1.0, 0.5, 0.1]
    seen: list[float] = []

    def energy(x: Tensor, sigma: Tensor) -> Tensor:
        assert sigma.shape == (x.shape[0],)
        seen.append(float(sigma[0]))
        return 0.5 * x.pow(2).sum(1) / (1 + sigma**2)

    sampler = AnnealedLangevin(step_size=0.01, sigmas=sigmas, steps_per_sigma=4,
                               initial_temperature=1.0)
    result = sampler.sample(energy, torch.randn(5, 2))
    assert sampler.steps == 12 and seen == pytest.approx([s for s in sigmas for _ in range(4)])
    assert result.stats["sigma"].tolist() == pytest.approx(seen)
    assert result.stats["step_size"] == pytest.approx(0.01)  # ε at the smallest σ
    ncsn = AnnealedLangevin(sigmas=sigmas, temperature=2.0)  # NCSN: anneal σ, not T
    assert ncsn.temperature_at(0, 9) == 2.0 and AnnealedLangevin().temperature_at(0, 9) == 10.0
    temps = AnnealedLangevin(initial_temperature=8.0, temperature=2.0)
    assert [temps.temperature_at(t, 3) for t in range(3)] == pytest.approx([8.0, 4.0, 2.0])


def test_reflection_folds_into_the_box() -> None:
    x = torch.tensor([-3.5, -1.2, 0.3, 1.0, 1.4, 2.5, 5.2])
    y, flipped = reflect_into_box(x, -1.0, 1.0)
    assert y.tolist() == pytest.approx([0.5, -0.8, 0.3, 1.0, 0.6, -0.5, 0.8])
    assert flipped.tolist() == [False, True, False, True, True, True, True]  # 1.0: at the wall


@pytest.mark.parametrize("mode", ["per_chain", "shared", "none"])
def test_adapter_moves_toward_target_only_in_warmup_and_ends_shared(mode: str) -> None:
    adapter = StepSizeAdapter(mode, target=0.5, steps=3)
    log_step = torch.zeros(4)
    accept = torch.tensor([1.0, 0.2, 0.6, 0.6])
    after = adapter.update(log_step, accept, t=0, warmup=3)
    expected = {"per_chain": [0.5, -0.3, 0.1, 0.1], "shared": [0.1] * 4, "none": [0.0] * 4}
    assert after.tolist() == pytest.approx(expected[mode])
    # The last warm-up step pools ε (here within 2 groups of 2 rows: one ε per group) ...
    last = adapter.update(after, accept, t=2, warmup=3, groups=2)
    assert last[0] == last[1] and last[2] == last[3]
    assert torch.equal(adapter.update(last, accept, t=3, warmup=3), last)  # ... then freezes
    assert adapter.warmup_for(10) == (0 if mode == "none" else 3)
    assert adapter.warmup_for(3) == (0 if mode == "none" else 1)  # a shorter call: half


def test_bad_settings_are_value_errors() -> None:
    for make in (lambda: MALA(adapt="sometimes"), lambda: MALA(target_accept=1.5),
                 lambda: HMC(box_mode="wrap"), lambda: RandomWalkMetropolis(step_size=0),
                 lambda: AnnealedLangevin(schedule="cosine"),
                 lambda: ReplicaExchange(move="gibbs"),
                 lambda: ReplicaExchange(max_temperature=0.5),
                 lambda: MALA(adapt_steps=100, steps=100), lambda: HMC(adapt_steps=80, steps=50),
                 lambda: ReplicaExchange(adapt_steps=200, steps=200)):
        with pytest.raises(ValueError):
            make()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_config_instantiates_and_samples(name: str) -> None:
    cfg = compose_config([f"sampler={name}", "model=analytic", "dataset=toy2d", "device=cpu"])
    validate_config(cfg)
    parts = build_components(cfg, DataInfo((2,), (-4.5, 4.5), (-4.5, 4.5)))
    assert isinstance(parts.sampler, SAMPLERS[name]) and parts.sampler.box == (-4.5, 4.5)
    result = parts.objective.generate(8, steps=3, generator=torch.Generator().manual_seed(0))
    assert result.x.shape == (8, 2) and in_box(result.x, (-4.5, 4.5)).all()


def test_analytic_energies() -> None:
    gauss = GaussianEnergy((2,), mean=(1.0, -1.0), cov=((2.0, 0.0), (0.0, 0.5)))
    assert gauss.energy(torch.tensor([[1.0, -1.0], [3.0, -1.0]])).tolist() == [0.0, 1.0]
    ring = build_analytic_energy((1, 4, 4))  # any item shape: extra coordinates are N(0, 1)
    x = torch.zeros(8, 1, 4, 4)
    x.view(8, -1)[:, :2] = ring.means
    assert torch.equal(ring.nearest_mode(x), torch.arange(8))
    assert ring.energy(x).std() < 1e-5 and ring.energy(x).mean() < ring.energy(x * 0).mean()
    well = build_analytic_energy((2,), "double_well", {"center": 2.0})
    assert well.energy(torch.tensor([[2.0, 0.0], [-2.0, 0.0]])).abs().max() < 1e-6
    assert next(ring.parameters()).requires_grad is False
    with pytest.raises(ValueError, match="valid: .*center"):
        build_analytic_energy((2,), "double_well", {"centre": 2.0})
    with pytest.raises(ValueError, match="choose from"):
        build_analytic_energy((2,), "banana")


# ----------------------------------------------------------------------------- statistics
# Truth: a 2-D Gaussian with correlation 0.8 (condition number 9) away from the origin.
MEAN = torch.tensor([1.0, -1.0])
COV = torch.tensor([[1.0, 0.8], [0.8, 1.0]])
# Settings that mix on that target (step counts include adaptation / annealing warm-up).
EXACT: dict[str, Callable[..., Sampler]] = {
    "langevin": lambda **kw: Langevin(step_size=0.02, noise_std=None, grad_clip=None,
                                      steps=1500, **kw),
    "mala": lambda **kw: MALA(step_size=0.1, adapt_steps=300, steps=1000, **kw),
    "hmc": lambda **kw: HMC(step_size=0.2, leapfrog_steps=5, adapt_steps=200, steps=500, **kw),
    "rw_metropolis": lambda **kw: RandomWalkMetropolis(step_size=0.5, adapt_steps=300,
                                                       steps=1500, **kw),
    "annealed_langevin": lambda **kw: AnnealedLangevin(step_size=0.02, initial_temperature=10.0,
                                                       anneal_fraction=0.5, steps=2000, **kw),
    "replica_exchange": lambda **kw: ReplicaExchange(num_replicas=4, max_temperature=6.0,
                                                     step_size=0.1, steps=1000, **kw),
    # h = 0.1 is small next to the target's smallest scale (sd 0.45 along x1 − x2).
    "underdamped_langevin": lambda **kw: UnderdampedLangevin(step_size=0.1, friction=1.0,
                                                             steps=600, **kw),
    "nuts": lambda **kw: NUTS(step_size=0.3, adapt_steps=100, steps=300, **kw),
}
N_CHAINS = 4000
# Standard errors with 4000 independent chains are ≈ 0.02 (mean) and ≈ 0.03 (covariance);
# ULA's O(ε) bias adds ≈ 0.01 at ε = 0.02. Tolerances: 0.08 (mean), 0.1 · T (covariance).
MEAN_TOL, COV_TOL = 0.08, 0.1


def _moments(name: str, temperature: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    energy = GaussianEnergy((2,), mean=MEAN.tolist(), cov=COV.tolist()).energy
    sampler = EXACT[name](temperature=temperature)
    x0 = torch.randn(N_CHAINS, 2, generator=torch.Generator().manual_seed(seed + 100)) * 3
    x = sampler.sample(energy, x0, generator=torch.Generator().manual_seed(seed)).x
    return x.mean(0), torch.cov(x.T)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXACT))
def test_gaussian_mean_and_covariance(name: str) -> None:
    mean, cov = _moments(name, temperature=1.0)
    assert (mean - MEAN).abs().max() < MEAN_TOL, f"{name} mean {mean.tolist()}"
    assert (cov - COV).abs().max() < COV_TOL, f"{name} cov {cov.tolist()}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXACT))
def test_temperature_two_doubles_the_covariance(name: str) -> None:
    mean, cov = _moments(name, temperature=2.0, seed=1)
    assert (mean - MEAN).abs().max() < MEAN_TOL * 1.5, f"{name} mean {mean.tolist()}"
    assert (cov - 2 * COV).abs().max() < 2 * COV_TOL, f"{name} cov {cov.tolist()}"


# Exact samplers on a box-truncated target: N(0, 1) restricted to [0, 2] (most of its mass
# lies outside), mean φ(0)−φ(2) / (Φ(2)−Φ(0)) = 0.7228, variance 0.2513.
TRUNCATED = {"mala_reflect": lambda: MALA(step_size=0.3),
             "mala_reject": lambda: MALA(step_size=0.3, box_mode="reject"),
             "hmc_reflect": lambda: HMC(step_size=0.3, leapfrog_steps=4),
             "hmc_reject": lambda: HMC(step_size=0.3, leapfrog_steps=4, box_mode="reject"),
             "rw_reflect": lambda: RandomWalkMetropolis(step_size=1.0),
             "rw_reject": lambda: RandomWalkMetropolis(step_size=1.0, box_mode="reject")}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TRUNCATED))
def test_box_handling_is_exact_for_the_truncated_target(name: str) -> None:
    sampler = TRUNCATED[name]()
    sampler.box, sampler.steps = (0.0, 2.0), 600
    x0 = torch.rand(4000, 1, generator=torch.Generator().manual_seed(3)) * 2
    x = sampler.sample(lambda x: 0.5 * x.pow(2).sum(1), x0,
                       generator=torch.Generator().manual_seed(4)).x
    assert abs(float(x.mean()) - 0.7228) < 0.03, f"{name}: mean {float(x.mean()):.4f}"
    assert abs(float(x.var()) - 0.2513) < 0.03, f"{name}: var {float(x.var()):.4f}"


@pytest.mark.slow
@pytest.mark.parametrize(("cls", "target", "extra"), [
    (MALA, 0.574, {}), (HMC, 0.65, {"leapfrog_steps": 5}), (RandomWalkMetropolis, 0.234, {})])
@pytest.mark.parametrize("adapt", ["per_chain", "shared"])
def test_adapted_acceptance_hits_the_target(cls, target: float, extra: dict, adapt: str) -> None:
    """From a step size 100× too small, 400 warm-up steps reach the optimal acceptance; the
    rate over the next 400 steps (fixed step sizes) is within ±0.05 of the target."""
    energy = GaussianEnergy((2,), mean=MEAN.tolist(), cov=COV.tolist()).energy
    sampler = cls(step_size=0.005, adapt=adapt, adapt_steps=400, steps=800, **extra)
    x0 = torch.randn(1000, 2, generator=torch.Generator().manual_seed(5)) + MEAN
    result = sampler.sample(energy, x0, generator=torch.Generator().manual_seed(6))
    rate = float(result.stats["acceptance"][400:].mean())
    assert abs(rate - target) < 0.05, f"{cls.__name__}/{adapt}: acceptance {rate:.3f}"
    trace = result.stats["step_size_trace"]
    assert torch.equal(trace[400:], trace[400].expand(400)), "step size changed after warm-up"


@pytest.mark.slow
def test_replica_exchange_visits_all_modes_where_langevin_does_not() -> None:
    """8 modes on a circle, barriers ≈ 10 energy units; every chain starts in mode 0. Replica
    exchange spreads the chains over all 8 modes in equal shares; plain Langevin with the
    same number of gradient evaluations (K × the steps) stays in and next to mode 0."""
    mixture = GaussianMixture((2,), n_modes=8, radius=3.0, std=0.25)
    x0 = mixture.means[0].expand(800, 2).clone()
    k, steps = 8, 500
    exchange = ReplicaExchange(num_replicas=k, max_temperature=20.0, swap_every=2,
                               step_size=0.05, steps=steps)
    result = exchange.sample(mixture.energy, x0, generator=torch.Generator().manual_seed(0))
    shares = torch.bincount(mixture.nearest_mode(result.x), minlength=8) / len(x0)
    assert (shares > 0.125 - 0.06).all() and (shares < 0.125 + 0.06).all(), shares.tolist()
    assert result.stats["swap_acceptance_min"] > 0.3

    langevin = Langevin(step_size=0.01, noise_std=None, grad_clip=None, steps=k * steps)
    plain = langevin.sample(mixture.energy, x0, generator=torch.Generator().manual_seed(0)).x
    plain_shares = torch.bincount(mixture.nearest_mode(plain), minlength=8) / len(x0)
    assert (plain_shares > 0.01).sum() <= 3 and plain_shares[0] > 0.8, plain_shares.tolist()
