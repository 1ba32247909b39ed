"""Langevin sampling speed side by side with torchebm (the peer a user would pick): JSON.

    pip install torchebm==0.8.9 --no-deps   # for this comparison only, not an ebmrun dependency
    python scripts/bench_torchebm.py --device cuda [--chains 128 --steps 60 --reps 20]

Both run plain Langevin, x ← clamp(x − ε∇E(x) + √(2ε)·η, −1, 1), for ``--chains`` chains and
``--steps`` steps on the same network with the same weights: the deep EBM's tutorial CNN
(``model=deep_ebm``, 28×28 images) initialised from one seed. torchebm 0.8.9 runs its
``LangevinDynamics`` (Euler–Maruyama integrator); ebmrun runs its ``Langevin`` sampler, with
its CUDA graph (the default on CUDA) and without (``device.cuda_graphs=false``). Reported:
the median milliseconds of one ``steps``-step call over ``--reps`` calls after two warm-up
calls (which also capture the graph), chains × steps per second, and ebmrun's speed-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ebmrun.models.deep_ebm import DeepEnergy
from ebmrun.samplers import Langevin


def median_ms(call, reps: int, device: torch.device) -> float:
    """Median wall milliseconds of ``call()`` over ``reps`` runs after two warm-up runs."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(reps + 2):
        sync()
        start = time.perf_counter()
        call()
        sync()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--chains", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--step-size", type=float, default=0.01)
    args = parser.parse_args()
    try:
        from torchebm.core import BaseModel
        from torchebm.samplers import LangevinDynamics
    except ImportError:
        raise SystemExit("bench_torchebm: torchebm is not installed "
                         "(fix: pip install torchebm==0.8.9 --no-deps)") from None

    device = torch.device(args.device)
    torch.manual_seed(0)
    net = DeepEnergy((1, 28, 28), polyphase_first_conv=False).to(device)

    class SameNet(BaseModel):  # torchebm's model interface around the very same module
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.energy(x)

    x0 = torch.rand(args.chains, 1, 28, 28, device=device) * 2 - 1
    eps, results = args.step_size, {}
    peer = LangevinDynamics(SameNet(), step_size=eps, noise_scale=1.0, clamp=(-1.0, 1.0),
                            device=device)
    results["torchebm_ms"] = median_ms(lambda: peer.sample(x=x0.clone(), n_steps=args.steps),
                                       args.reps, device)
    for name, graphs in (("ebmrun_eager_ms", False), ("ebmrun_ms", True)):
        ours = Langevin(step_size=eps, noise_std=None, grad_clip=None, steps=args.steps,
                        box=[-1.0, 1.0])
        ours.cuda_graphs = graphs
        generator = torch.Generator(device=device).manual_seed(0)
        results[name] = median_ms(lambda: ours.sample(net.energy, x0, generator=generator),
                                  args.reps, device)
    chain_steps = args.chains * args.steps
    print(json.dumps({
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "chains": args.chains, "steps": args.steps,
        **{k: round(v, 3) for k, v in results.items()},
        **{k.replace("_ms", "_chain_steps_per_s"): round(chain_steps / (v / 1000))
           for k, v in results.items()},
        "speedup_vs_torchebm": round(results["torchebm_ms"] / results["ebmrun_ms"], 2),
        "speedup_eager_vs_torchebm": round(results["torchebm_ms"] / results["ebmrun_eager_ms"],
                                           2)}))


if __name__ == "__main__":
    main()
