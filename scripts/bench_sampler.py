"""Sampler speed on the tutorial CNN: one JSON line.

    python scripts/bench_sampler.py [--device cpu] [--batch 128] [--steps 20] [--repeats 5]

Measures, on the tutorial CNN (``DeepEnergy((1, 28, 28))`` built from
``conf/model/deep_ebm.yaml``, i.e. with its configured speed options) at batch 128 with
chains uniform in [-1, 1]:

- ``bare_ms``: one forward + input-backward pass of the network alone
  (``autograd.grad(E(x).sum(), x)``, under the Langevin config's autocast) — the floor any
  gradient-based sampler step pays;
- ``langevin_ms`` and ``langevin_over_bare``: one step of the default (tutorial) Langevin
  sampler, including its bookkeeping (noise, clamp, statistics); the issue asks ≤ 1.15;
- ``samplers``: steps/s, ms/step and ms per gradient evaluation of every sampler config
  in ``conf/sampler`` (built through the real config path, ``box: data`` = [-1, 1]).

Bare and sampler timings alternate block by block, so background load hits both alike; the
median over ``--repeats`` blocks of ``--steps`` steps is reported. Speed is measured here,
never in tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ebmrun.build import instantiate
from ebmrun.cli import CONFIG_DIR
from ebmrun.samplers import Sampler
from ebmrun.samplers.energy_eval import autocast_context, autocast_dtype_for

# Gradient evaluations per step, for the cost per gradient (HMC: L; replica exchange: K + a
# forward for its statistics; NUTS: the leapfrog steps its batch ran, read from its stats;
# others: 1).
GRADS_PER_STEP: dict[str, Callable[[Sampler], float]] = {
    "hmc": lambda s: float(s.leapfrog_steps),
    "replica_exchange": lambda s: float(s.num_replicas),
}


def build_sampler(name: str) -> Sampler:
    """The sampler of ``conf/sampler/<name>.yaml`` with the image box [-1, 1]."""
    node = OmegaConf.load(Path(CONFIG_DIR) / "sampler" / f"{name}.yaml")
    node.pop("box")
    return instantiate(node, f"sampler={name}", box=[-1.0, 1.0])


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks (median)")
    parser.add_argument("--samplers", nargs="*", default=None,
                        help="config names (default: every conf/sampler/*.yaml)")
    args = parser.parse_args()

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    net = OmegaConf.load(Path(CONFIG_DIR) / "model" / "deep_ebm.yaml").net
    model = instantiate(net, "model.net", item_shape=[1, 28, 28]).to(device)
    bare_autocast = autocast_dtype_for(build_sampler("langevin").autocast, device)
    generator = torch.Generator(device=device).manual_seed(0)
    x0 = torch.rand(args.batch, 1, 28, 28, device=device, generator=generator) * 2 - 1

    def bare_block() -> None:
        for _ in range(args.steps):
            x = x0.detach().requires_grad_(True)
            with autocast_context(x, bare_autocast):
                energy = model.energy(x)
            torch.autograd.grad(energy.sum(), x)

    names = args.samplers or sorted(p.stem for p in (Path(CONFIG_DIR) / "sampler").glob("*.yaml"))
    bare_times: list[float] = []
    results: dict[str, dict[str, float]] = {}
    for name in names:
        sampler = build_sampler(name)
        last: list = []
        block = lambda: last.append(sampler.sample(model.energy, x0, steps=args.steps,  # noqa
                                                   generator=generator))
        block(), bare_block()  # warm-up (allocator, oneDNN / cuDNN kernel choice)
        times = []
        for _ in range(args.repeats):
            bare_times.append(timed(bare_block, sync) / args.steps)
            times.append(timed(block, sync) / args.steps)
        per_step = statistics.median(times)
        grads = last[-1].stats.get("leapfrog_per_step") or \
            GRADS_PER_STEP.get(name, lambda s: 1.0)(sampler)
        results[name] = {"autocast": str(autocast_dtype_for(sampler.autocast, device)),
                         "steps_per_s": round(1.0 / per_step, 2),
                         "ms_per_step": round(1e3 * per_step, 3),
                         "ms_per_gradient": round(1e3 * per_step / grads, 3),
                         "gradients_per_step": round(grads, 2)}
    bare = statistics.median(bare_times)
    out = {"model": "DeepEnergy((1, 28, 28))", "batch": args.batch, "device": str(device),
           "threads": torch.get_num_threads(), "bare_autocast": str(bare_autocast),
           "bare_ms": round(1e3 * bare, 3),
           "samplers": results}
    if "langevin" in results:
        out["langevin_ms"] = results["langevin"]["ms_per_step"]
        out["langevin_over_bare"] = round(results["langevin"]["ms_per_step"] / (1e3 * bare), 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
