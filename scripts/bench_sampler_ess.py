"""Sampler efficiency on analytic targets: one JSON line.

    python scripts/bench_sampler_ess.py [--chains 32] [--budget 20000] [--seed 0]

1. ``gaussian``: a 100-dimensional Gaussian with standard deviations log-spaced from 0.1 to
   1 (condition number 100). Chains start at exact draws (no burn-in to hide); each sampler
   adapts during its warm-up (not counted), then runs until it has spent ``--budget``
   gradient evaluations per chain. Reported: the smallest bulk ESS over the 100 coordinates
   and the tail ESS of the same, per gradient evaluation (Vehtari et al. 2021, computed by
   ``ebmrun.metrics.chains``). For NUTS the gradients are counted as its trees needed them
   (``grads``) and as the batch ran them (``grads_batched``: a finished tree waits for the
   slowest chain).
2. ``ring``: the 8-mode ring of ``model=analytic`` (modes 3 apart, std 0.25), every chain
   started in mode 0; the share of chains nearest each mode after the run.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from ebmrun.metrics.chains import ess_bulk, ess_tail
from ebmrun.models.analytic import GaussianMixture
from ebmrun.samplers import HMC, MALA, NUTS, Langevin, StepSizeAdapter, UnderdampedLangevin

DIM = 100
STDS = torch.logspace(-1, 0, DIM)  # condition number (1 / 0.1)² = 100


def gaussian_energy(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((x / STDS) ** 2).sum(1)


def run(name: str, sampler, grads_per_step: float, args, x0: torch.Tensor) -> dict:
    """Warm up (adaptation), then sample ``budget`` gradients' worth; ESS per gradient."""
    generator = torch.Generator().manual_seed(args.seed + 1)
    warm = sampler.sample(gaussian_energy, x0, steps=sampler.steps, generator=generator)
    if isinstance(sampler, NUTS):  # freeze the adapted ε; NUTS's cost per step varies
        sampler.step_size, sampler.adapt_steps = warm.stats["step_size"], 0
        grads_per_step = warm.stats["leapfrog_per_step_needed"]
    elif hasattr(sampler, "adapter"):  # MH: freeze the adapted ε
        sampler.step_size = warm.stats["step_size"]
        sampler.adapter = StepSizeAdapter("none", sampler.adapter.target, 0)
    steps = max(int(args.budget / grads_per_step), 8)
    thin = max(steps // 2000, 1)  # at most 2000 draws per chain in memory
    result = sampler.sample(gaussian_energy, warm.x, steps=steps, generator=generator,
                            snapshot_every=thin)
    draws = torch.stack(result.chain[1:], 2)  # (chains, DIM, draws)
    bulk = min(ess_bulk(draws[:, i]) for i in range(DIM))
    tail = min(ess_tail(draws[:, i]) for i in range(DIM))
    grads = grads_per_step * steps
    var_ratio = draws.permute(1, 0, 2).flatten(1).var(1) / STDS**2  # (DIM,): 1 if unbiased
    out = {"var_ratio_min": round(float(var_ratio.min()), 3),
           "var_ratio_max": round(float(var_ratio.max()), 3), "steps": steps,
           "step_size": round(float(result.stats["step_size"]), 4),
           "acceptance": round(float(result.stats.get("acceptance_rate", 1.0)), 3),
           "grads": round(grads), "min_bulk_ess": round(bulk, 1), "min_tail_ess": round(tail, 1),
           "bulk_ess_per_1k_grads": round(1000 * bulk / grads, 3),
           "tail_ess_per_1k_grads": round(1000 * tail / grads, 3)}
    if isinstance(sampler, NUTS):
        batched = result.stats["leapfrog_per_step"] * steps
        out |= {"grads_batched": round(batched),
                "bulk_ess_per_1k_grads_batched": round(1000 * bulk / batched, 3)}
    return out


def ring(args) -> dict:
    mixture = GaussianMixture((2,), n_modes=8, radius=3.0, std=0.25)
    x0 = mixture.means[0].expand(400, 2).clone()
    samplers = {"nuts": NUTS(step_size=0.1, adapt_steps=100, steps=400),
                "underdamped_langevin": UnderdampedLangevin(step_size=0.1, friction=0.5,
                                                            steps=4000),
                "langevin": Langevin(step_size=0.01, noise_std=None, grad_clip=None,
                                     steps=4000)}
    out = {}
    for name, sampler in samplers.items():
        result = sampler.sample(mixture.energy, x0,
                                generator=torch.Generator().manual_seed(args.seed))
        shares = torch.bincount(mixture.nearest_mode(result.x), minlength=8) / len(x0)
        out[name] = {"steps": sampler.steps, "shares": [round(float(s), 3) for s in shares],
                     "modes_over_1pct": int((shares > 0.01).sum())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=32)
    parser.add_argument("--budget", type=int, default=20000, help="gradients per chain")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    x0 = torch.randn(args.chains, DIM, generator=torch.Generator().manual_seed(args.seed)) * STDS
    contenders = {
        "mala": (MALA(step_size=0.005, adapt_steps=400, steps=500), 1.0),
        "hmc": (HMC(step_size=0.02, leapfrog_steps=10, adapt_steps=150, steps=200), 10.0),
        "nuts": (NUTS(step_size=0.05, adapt_steps=150, steps=200), 1.0),
        "underdamped_langevin": (UnderdampedLangevin(step_size=0.08, friction=1.0, steps=200),
                                 1.0),
    }
    gaussian = {name: run(name, s, g, args, x0) for name, (s, g) in contenders.items()}
    print(json.dumps({"chains": args.chains, "budget": args.budget, "dim": DIM,
                      "condition_number": 100, "gaussian": gaussian, "ring": ring(args)}))


if __name__ == "__main__":
    main()
