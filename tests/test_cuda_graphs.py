"""The sampler loop as a CUDA graph (ebmrun.samplers.graphed).

The CPU half checks when a loop may be captured (the rules that keep a replayed graph equal
to the eager loop); the CUDA half, skipped without a GPU, checks that a replay *is* the
eager loop: the same random numbers, the same states within float tolerance, the generator
left where an eager run leaves it, and a graph rebuilt when a setting changes.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from ebmrun.samplers import (HMC, MALA, NUTS, AnnealedLangevin, Langevin,
                             RandomWalkMetropolis, UnderdampedLangevin)
from ebmrun.samplers.gibbs import BlockGibbs
from ebmrun.samplers.graphed import energy_module, graph_key, settings_of

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA GPU (none here)")


class TinyEnergy(nn.Module):
    """A small conv energy, (B, 1, 8, 8) -> (B,)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.SiLU(), nn.Flatten(),
                                 nn.Linear(4 * 64, 1))

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def langevin() -> Langevin:
    return Langevin(step_size=1.0, noise_std=0.01, grad_clip=0.03, steps=12, box=[-1, 1])


def test_loops_are_only_captured_where_a_graph_replays_them_exactly():
    model, x = TinyEnergy(), torch.rand(4, 1, 8, 8)
    # On the CPU every loop runs eagerly.
    assert graph_key(langevin(), model.energy, x, 12, None, 0) is None
    # What makes a stable cache key: a module or its bound method, not a fresh lambda.
    assert energy_module(model.energy) is model and energy_module(model) is model
    assert energy_module(lambda v: model.energy(v)) is None
    # Settings are baked into a graph as numbers: a change must change the key.
    a, b = langevin(), langevin()
    assert settings_of(a) == settings_of(b)
    b.step_size = 2.0
    assert settings_of(a) != settings_of(b)
    # Which samplers' steps are fixed-size tensor ops (MH accepts are masked, adaptation is
    # arithmetic on the step index), and which need the host: NUTS trees, replica swaps,
    # MALA's reflected-proposal density (its number of mirror images depends on the data).
    assert all(s.capturable for s in (langevin(), HMC(box=[-1, 1]), RandomWalkMetropolis(),
                                      BlockGibbs(),
                                      UnderdampedLangevin(box=[-1, 1]), MALA(),
                                      MALA(box=[-1, 1], box_mode="reject")))
    assert not any(s.capturable for s in (MALA(box=[-1, 1]), NUTS(), AnnealedLangevin()))


def test_traces_stay_cpu_tensors_and_the_loop_is_unchanged_on_cpu():
    model = TinyEnergy()
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    gen = torch.Generator().manual_seed(3)
    result = langevin().sample(model.energy, x0, generator=gen)
    assert result.stats["energy"].device.type == "cpu" and result.stats["energy"].shape == (12,)
    assert result.stats["acceptance_rate"] == 1.0
    # The same steps written out by hand (the update rule of the docstring).
    gen = torch.Generator().manual_seed(3)
    x = x0.clone()
    for _ in range(12):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(model.energy(x).sum(), x)
        x = (x.detach() - 1.0 * grad.clamp(-0.03, 0.03)
             + 0.01 * torch.empty_like(x).normal_(generator=gen)).clamp(-1, 1)
    torch.testing.assert_close(result.x, x)


def cuda_pair(steps: int = 40, batch: int = 16):
    torch.manual_seed(0)
    model = TinyEnergy().cuda()
    x0 = torch.rand(batch, 1, 8, 8, device="cuda") * 2 - 1
    eager, graphed = langevin(), langevin()
    eager.cuda_graphs = False
    return model, x0, eager, graphed


CAPTURABLE = {
    "gibbs": lambda: BlockGibbs(steps=40),
    "langevin": langevin,
    "mala": lambda: MALA(step_size=0.01, steps=40, adapt_steps=20),
    "hmc": lambda: HMC(step_size=0.05, leapfrog_steps=3, steps=40, adapt_steps=20,
                       box=[-1, 1]),
    "rw_metropolis": lambda: RandomWalkMetropolis(step_size=0.1, steps=40, adapt_steps=20,
                                                  box=[-1, 1]),
    "underdamped_langevin": lambda: UnderdampedLangevin(step_size=0.05, steps=40,
                                                        box=[-1, 1]),
}


def chain_inputs(name: str):
    """The energy (an RBM for Gibbs) and starting states on the GPU for sampler ``name``."""
    if name == "gibbs":
        from ebmrun.models.rbm import RBM

        torch.manual_seed(0)
        return (RBM((64,), hidden=16, init_std=0.3).cuda(),
                torch.bernoulli(torch.full((16, 64), 0.5, device="cuda")))
    model, x0, _, _ = cuda_pair()
    return model.energy, x0


@needs_cuda
@pytest.mark.parametrize("name", sorted(CAPTURABLE))
def test_a_replayed_loop_equals_the_eager_loop_and_advances_the_generator_alike(name):
    energy, x0 = chain_inputs(name)
    eager, graphed = CAPTURABLE[name](), CAPTURABLE[name]()
    eager.cuda_graphs = False
    gen_e = torch.Generator(device="cuda").manual_seed(7)
    gen_g = torch.Generator(device="cuda").manual_seed(7)
    for _ in range(3):  # capture, then two replays: each draws the next numbers
        e = eager.sample(energy, x0, steps=40, generator=gen_e)
        g = graphed.sample(energy, x0, steps=40, generator=gen_g)
        torch.testing.assert_close(g.x, e.x, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(g.stats["energy"], e.stats["energy"], rtol=1e-4, atol=1e-5)
    assert len(graphed._graphs) == 1  # captured once, replayed after
    assert torch.equal(gen_e.get_state(), gen_g.get_state())
    # The replay's output is a copy: the next replay does not overwrite what a caller kept.
    kept = g.x.clone()
    graphed.sample(energy, x0, steps=40, generator=gen_g)
    assert torch.equal(g.x, kept)


@needs_cuda
def test_a_changed_setting_or_shape_gets_its_own_graph():
    model, x0, _, graphed = cuda_pair()
    graphed.sample(model.energy, x0, steps=40)
    graphed.step_size = 0.5
    graphed.sample(model.energy, x0, steps=40)
    graphed.sample(model.energy, x0[:8], steps=40)
    assert len(graphed._graphs) == 3
    # Snapshots need the states mid-loop: eager, no new graph.
    graphed.sample(model.energy, x0, steps=40, snapshot_every=10)
    assert len(graphed._graphs) == 3


@needs_cuda
def test_training_with_graphs_ends_at_the_eager_loss(tmp_path):
    """300 deep-EBM steps on a small synthetic image set, graphs on vs off, same seed."""
    from hydra import compose, initialize_config_dir

    from ebmrun.build import build_components, optim_settings
    from ebmrun.cli import CONFIG_DIR
    from ebmrun.objectives.base import DataInfo
    from ebmrun.run import training_step

    losses = {}
    for graphs in (False, True):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", overrides=["model=deep_ebm", "device=cuda",
                                                f"device.cuda_graphs={str(graphs).lower()}",
                                                "model.objective.buffer_size=256"])
        info = DataInfo(item_shape=(1, 28, 28), value_range=(-1.0, 1.0), box=(-1.0, 1.0))
        parts = build_components(cfg, info)
        optimizers = parts.objective.configure_optimizers(optim_settings(cfg))
        data = torch.Generator(device="cuda").manual_seed(0)
        for _ in range(300):
            x = torch.rand(32, 1, 28, 28, device="cuda", generator=data) * 2 - 1
            out = training_step(parts.objective, optimizers, x, 0.1)
        losses[graphs] = float(out["loss"].detach())
    assert losses[True] == pytest.approx(losses[False], rel=1e-3, abs=1e-4)


def test_a_captured_step_applies_only_where_a_replay_is_the_eager_step():
    """Where the step may be recorded, and what makes a recorded step stale (CPU-checkable)."""
    from ebmrun.captured_step import CapturedStep, set_capturable, why_not
    from ebmrun.ema import EMA
    from ebmrun.objectives.base import Objective
    from ebmrun.optimization import Updater

    class Quadratic(Objective):
        capturable_step = True

        def training_step(self, x):
            return {"loss": (self.model(x) ** 2).mean()}

        def generate(self, n, **kwargs):
            raise NotImplementedError

    model = nn.Linear(3, 1)
    objective = Quadratic(model, None, torch.Generator())
    adam = torch.optim.Adam(model.parameters(), lr=0.1)
    updater = Updater(objective, [adam], [None], ema=EMA(model, 0.9))
    assert why_not(updater, torch.device("cpu")) == "not on CUDA"
    sgd = Updater(objective, [torch.optim.SGD(model.parameters(), lr=0.1)], [None])
    assert "SGD cannot step inside a CUDA graph" in why_not(sgd, torch.device("cuda"))
    Quadratic.capturable_step = False
    assert "does not declare capturable_step" in why_not(updater, torch.device("cuda"))
    Quadratic.capturable_step = True
    assert why_not(updater, torch.device("cuda")) is None

    captured = CapturedStep(updater)
    assert adam.param_groups[0]["capturable"]
    set_capturable(adam, False)  # eager steps on the CPU (capturable Adam needs a GPU)
    updater(torch.randn(4, 3), 1)
    before = captured._tensors()
    updater(torch.randn(4, 3), 2)
    assert captured._tensors() == before  # steps update state in place: the graph holds
    adam.load_state_dict(copy.deepcopy(adam.state_dict()))  # resume/rollback: new tensors
    assert captured._tensors() != before
    after_load = captured._tensors()
    updater.ema.load_state_dict(updater.ema.state_dict())
    assert captured._tensors() != after_load
    assert captured.grad_norms is updater.grad_norms  # callbacks see the Updater's view


# One experiment per family that declares ``capturable_step``: the CUDA test below is each
# declaration's check (the CPU test after it keeps this list complete).
CAPTURED_EXPERIMENTS = ["vae_mnist", "vae_binarized_mnist", "deep_ebm_mnist",
                        "deep_ebm_shortrun_mnist", "jem_mnist", "ebgan_mnist", "dae_mnist",
                        "rbm_mnist", "contrastive_mnist"]


def test_every_family_that_declares_a_captured_step_has_its_gpu_check():
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.utils import get_class

    from ebmrun.cli import CONFIG_DIR

    def objective_class(experiment: str):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", overrides=[f"experiment={experiment}"])
        return get_class(cfg.model.objective._target_)

    def declares(cls) -> bool:  # a property (CD: images only) counts: these are images
        return isinstance(cls.capturable_step, property) or cls.capturable_step is True

    checked = {objective_class(name) for name in CAPTURED_EXPERIMENTS}
    images = [p.stem for p in Path(CONFIG_DIR, "experiment").glob("*mnist*.yaml")]
    declared = {objective_class(name) for name in images
                if declares(objective_class(name))}
    assert declared - checked == set(), "declares capturable_step without a GPU check"
    assert all(declares(cls) for cls in checked)


@needs_cuda
@pytest.mark.parametrize("experiment", CAPTURED_EXPERIMENTS)
def test_a_captured_training_step_ends_where_the_eager_one_does(experiment, tmp_path,
                                                                 monkeypatch):
    """20 steps (3 eager, then replays) with warm-up + cosine and an EMA, recorded vs eager.

    The eager references run :class:`CapturedStep`'s own eager path (never recorded), so both
    sides use the optimizer arithmetic a recorded step needs: Adam with ``capturable`` keeps
    its bias correction on the device in float32 (the default computes it on the host in
    float64), and Adam turns gradient entries that are pure rounding noise into full-size
    steps, so that difference alone reached 1.2e-3 on the DAE's weights after 20 steps on an
    H200, while the replay stayed within 3e-8 of the eager capturable step. The bar is the
    eager step's own spread (two eager runs from one seed: kernels with atomics make them
    differ too, e.g. contrastive learning) or a float tolerance, whichever is larger.
    """
    from hydra import compose, initialize_config_dir

    from ebmrun import captured_step
    from ebmrun.cli import CONFIG_DIR
    from ebmrun.run import train

    captures, recording = [], {"on": False}
    record = captured_step.CapturedStep._capture

    def capture_or_stay_eager(self, *args):
        if not recording["on"]:
            return False  # the eager reference: this step runs uncaptured, as after a failure
        captures.append(record(self, *args))
        return captures[-1]

    monkeypatch.setattr(captured_step.CapturedStep, "_capture", capture_or_stay_eager)
    runs = {}
    for name, on in (("eager", False), ("eager_again", False), ("captured", True)):
        recording["on"] = on
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", overrides=[
                f"experiment={experiment}", "device=cuda", "device.capture_step=true",
                "trainer.max_steps=20", "optim.schedule=warmup_cosine", "optim.ema=0.9",
                "trainer.progress=false", "trainer.image_every=1000",
                "trainer.quality_every=null", "trainer.ckpt_every=1000"])
        train(cfg, tmp_path / name)
        runs[name] = torch.load(tmp_path / name / "last.pt", weights_only=True)
    assert captures == [True]  # recorded once, replayed 16 times
    for part in ("model", "ema"):
        for key, eager in runs["eager"][part].items():
            if not eager.is_floating_point():
                continue
            spread = (runs["eager_again"][part][key] - eager).abs().max()
            bar = torch.maximum(10 * spread, 1e-4 + 1e-3 * eager.abs().max())
            diff = (runs["captured"][part][key] - eager).abs().max()
            assert diff <= bar, (part, key, float(diff), float(bar))


def test_a_checkpoint_of_a_captured_gpu_step_resumes_on_the_cpu(tmp_path):
    """A captured step's Adam has ``capturable`` on (and that is saved); Adam refuses that on
    CPU parameters, so restoring a checkpoint turns it off again."""
    from conftest import TINY, compose_config

    from ebmrun.run import train

    train(compose_config(["model=deep_ebm", *TINY, "trainer.max_steps=2",
                          "trainer.quality_every=0"]), tmp_path)
    ckpt_path = tmp_path / "last.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    for group in ckpt["optimizers"][0]["param_groups"]:  # as a GPU run with capture saves it
        group["capturable"] = True
    torch.save(ckpt, ckpt_path)
    train(compose_config(["model=deep_ebm", *TINY, "trainer.max_steps=4",
                          "trainer.quality_every=0", f"resume={tmp_path}"]), tmp_path,
          resume_ckpt=torch.load(ckpt_path, weights_only=True))
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 4
