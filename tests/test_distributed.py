"""DDP under torchrun (gloo on CPU): the same gradients as one process, one run dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose_config, run_cli
from ebmrun import distributed as ddp
from ebmrun.build import build_components, data_info_of, load_data, make_batches, optim_settings
from ebmrun.errors import UserError
from ebmrun.objectives.base import Objective
from ebmrun.objectives.contrastive_divergence import ContrastiveDivergence
from ebmrun.objectives.ebgan import EBGANObjective
from ebmrun.run import training_step

TOY = ["experiment=deep_ebm_toy2d", *TINY, "device.threads=1", "dataset.n_train=2000",
       "dataset.n_test=500"]
# SGD with clipping active: a mismatch in the averaged gradient shows in the weights too.
STEP = [*TOY, "optim.name=sgd", "optim.lr=0.1", "trainer.grad_clip=0.05"]


def torchrun(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 <args>`` (gloo: every rank on the CPU)."""
    # PYTHONPATH: the rank script imports SquaredEnergy from this file.
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


# One training step of a deterministic loss through the runner's DDP path (shard, the
# DDP-wrapped step, backward, clip, SGD); each rank saves its gradients and weights.
RANK_SCRIPT = textwrap.dedent('''
    import sys
    from pathlib import Path

    import hydra
    import torch
    import torch.distributed as dist

    from ebmrun import distributed as ddp
    from ebmrun.build import build_components, data_info_of, load_data, make_batches, optim_settings
    from ebmrun.cli import CONFIG_DIR
    from ebmrun.run import training_step
    from test_distributed import SquaredEnergy

    dist.init_process_group("gloo")
    with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra.compose("config", overrides=sys.argv[2:])
    data = load_data(cfg)
    parts = build_components(cfg, data_info_of(data))
    objective = SquaredEnergy(parts.model, parts.objective.data, parts.generator)
    optimizers = objective.configure_optimizers(optim_settings(cfg))
    batches = make_batches(cfg, data)
    forward = ddp.step_function(objective, batches.batch_size)
    x = data.to_float(data.train[ddp.shard(batches.next_indices())])
    training_step(objective, optimizers, x, cfg.trainer.grad_clip, forward)
    # Stop decisions of one rank become everyone's: rank 1 diverged, rank 0 ran out of time.
    rank = dist.get_rank()
    agreed = ddp.agree("loss=nan" if rank == 1 else None, rank == 0, None)
    torch.save({"grads": [p.grad for p in parts.model.parameters()],
                "params": [p.detach() for p in parts.model.parameters()],
                "batch": x, "buffer": parts.objective.buffer.data, "agreed": agreed},
               Path(sys.argv[1]) / f"rank{rank}.pt")
    dist.barrier()  # both ranks done before either tears gloo down (an abort was seen in CI)
    dist.destroy_process_group()
''')


class SquaredEnergy(Objective):
    """A loss without randomness, so one process and N ranks must give the same gradient:
    mean over the batch of E(x)^2 + E(x)."""

    def training_step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        energy = self.model.energy(x)
        return {"loss": (energy ** 2 + energy).mean()}

    def generate(self, n, *, steps=None, generator, snapshot_every=0):
        raise NotImplementedError


def test_two_rank_gradients_match_one_process(tmp_path: Path) -> None:
    script = tmp_path / "rank_step.py"
    script.write_text(RANK_SCRIPT)
    proc = torchrun([str(script), str(tmp_path), *STEP], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]

    # The reference: one process, the whole global batch, no DDP.
    cfg = compose_config(STEP)
    data = load_data(cfg)
    parts = build_components(cfg, data_info_of(data))
    objective = SquaredEnergy(parts.model, parts.objective.data, parts.generator)
    optimizers = objective.configure_optimizers(optim_settings(cfg))
    x = data.to_float(data.train[make_batches(cfg, data).next_indices()])
    training_step(objective, optimizers, x, cfg.trainer.grad_clip)

    # Each rank had a disjoint half of the same global batch.
    assert len(ranks[0]["batch"]) == len(ranks[1]["batch"]) == len(x) // 2
    torch.testing.assert_close(torch.cat([ranks[0]["batch"], ranks[1]["batch"]]), x)
    for rank in ranks:
        for got, want in zip(rank["grads"], [p.grad for p in parts.model.parameters()],
                             strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        for got, want in zip(rank["params"], list(parts.model.parameters()), strict=True):
            torch.testing.assert_close(got, want.detach(), rtol=1e-4, atol=1e-6)
    assert ranks[0]["agreed"] == ("diverged on another rank", True, None)
    assert ranks[1]["agreed"] == ("loss=nan", True, None)
    # Rank 0 keeps the single-process random streams; rank 1 has its own.
    torch.testing.assert_close(ranks[0]["buffer"], parts.objective.buffer.data)
    assert not torch.equal(ranks[0]["buffer"], ranks[1]["buffer"])


def test_torchrun_training_writes_one_run_dir_and_resumes_on_one_process(tmp_path: Path
                                                                        ) -> None:
    proc = torchrun(["-m", "ebmrun", *TOY], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "outputs").glob("*/*/*"))
    assert len(runs) == 1, runs  # rank 1 used rank 0's dir and wrote nothing of its own
    run = runs[0]
    assert sorted(p.name for p in (run / ".hydra").iterdir()) == [
        "config.yaml", "hydra.yaml", "overrides.yaml"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["objective"]["name"] == "loss"
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["step"] == 4

    # The checkpoint holds rank 0's state: it resumes with another world size (here 1).
    resumed = run_cli([f"resume={run}", "trainer.max_steps=6", "device.threads=1"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["steps"] == 6
    assert list((tmp_path / "outputs").glob("*/*/*")) == [run]


class _SelfStepping(SquaredEnergy):
    manual_optimization = True


@pytest.mark.parametrize("objective_cls, batch_size, message", [
    (_SelfStepping, 16, "steps its own optimizers"),
    (SquaredEnergy, 15, "does not split over 2 processes"),
])
def test_unsupported_ddp_setups_are_user_errors(monkeypatch: pytest.MonkeyPatch,
                                                objective_cls, batch_size: int,
                                                message: str) -> None:
    monkeypatch.setattr(ddp, "world_size", lambda: 2)
    cfg = compose_config(TOY)
    parts = build_components(cfg, data_info_of(load_data(cfg)))
    objective = objective_cls(parts.model, parts.objective.data, parts.generator)
    with pytest.raises(UserError, match=message):
        ddp.step_function(objective, batch_size)


def test_torchrun_refuses_sweeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="not a sweep"):
        ddp.start("unused", ["-m", "seed=0,1"])


# ---- EBGAN: two parameter groups (d then g) under torchrun ------------------------------

class FixedLatentEBGAN(EBGANObjective):
    """EBGAN whose training latents are one fixed table of ``GLOBAL_BATCH`` rows: one
    process draws all of them, rank r of N its own ``GLOBAL_BATCH / N`` rows, so both see
    the same fakes for the same items (the random streams differ per rank by design)."""

    def draw_z(self, n: int, generator: torch.Generator) -> torch.Tensor:
        table = torch.randn(GLOBAL_BATCH, self.model.z_dim,
                            generator=torch.Generator().manual_seed(5))
        start = ddp.rank() * n if n * ddp.world_size() == GLOBAL_BATCH else 0
        return table[start:start + n].to(self.device)


GLOBAL_BATCH = 16
# D has no BatchNorm; G's is put in eval mode and the pulling-away term (a statistic of the
# whole batch, computed per rank like BatchNorm's) is off: per-item losses, so two halves
# must give the joined batch's gradients. SGD and clipping make a mismatch show.
EBGAN_STEP = ["model=ebgan", "device=cpu", "device.threads=1", "model.net.arch=mlp",
              "model.net.z_dim=4", "model.net.code_dim=4", "model.net.mlp_gen_hidden=[32]",
              "model.net.mlp_enc_hidden=[16]", "model.net.mlp_dec_hidden=[16]",
              "model.objective._target_=test_distributed.FixedLatentEBGAN",
              "model.objective.pt_weight=0", "model.objective.n_fixed=4",
              f"trainer.batch_size={GLOBAL_BATCH}", "optim.name=sgd",
              "model.objective.lr_d=0.5", "model.objective.lr_g=0.5", "trainer.grad_clip=0.05"]

EBGAN_RANK_SCRIPT = textwrap.dedent('''
    import sys
    from pathlib import Path

    import hydra
    import torch
    import torch.distributed as dist

    from ebmrun import distributed as ddp
    from ebmrun.build import build_components, data_info_of, load_data, make_batches, optim_settings
    from ebmrun.cli import CONFIG_DIR
    from ebmrun.run import training_step

    dist.init_process_group("gloo")
    with hydra.initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra.compose("config", overrides=sys.argv[2:])
    data = load_data(cfg)
    parts = build_components(cfg, data_info_of(data))
    parts.model.generator.eval()
    optimizers = parts.objective.configure_optimizers(optim_settings(cfg))
    batches = make_batches(cfg, data)
    forward = ddp.step_function(parts.objective, batches.batch_size)
    x = data.to_float(data.train[ddp.shard(batches.next_indices())])
    training_step(parts.objective, optimizers, x, cfg.trainer.grad_clip, forward)
    torch.save({"grads": [p.grad for p in parts.model.parameters()],
                "params": [p.detach() for p in parts.model.parameters()]},
               Path(sys.argv[1]) / f"rank{dist.get_rank()}.pt")
    dist.barrier()
    dist.destroy_process_group()
''')


def test_two_rank_ebgan_gradients_match_one_process(tmp_path: Path) -> None:
    script = tmp_path / "rank_step.py"
    script.write_text(EBGAN_RANK_SCRIPT)
    proc = torchrun([str(script), str(tmp_path), *EBGAN_STEP], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]

    cfg = compose_config(EBGAN_STEP)
    data = load_data(cfg)
    parts = build_components(cfg, data_info_of(data))
    parts.model.generator.eval()
    before = [p.detach().clone() for p in parts.model.parameters()]
    optimizers = parts.objective.configure_optimizers(optim_settings(cfg))
    x = data.to_float(data.train[make_batches(cfg, data).next_indices()])
    training_step(parts.objective, optimizers, x, cfg.trainer.grad_clip)

    params = list(parts.model.parameters())
    assert all(p.grad is not None for p in params)  # both groups were stepped
    assert all(not torch.equal(a, b.detach()) for a, b in zip(before, params))
    for rank in ranks:
        for got, want in zip(rank["grads"], [p.grad for p in params], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        for got, want in zip(rank["params"], params, strict=True):
            torch.testing.assert_close(got, want.detach(), rtol=1e-4, atol=1e-6)


class SelfStepping(ContrastiveDivergence):
    """A (legacy) objective that steps its own optimizers: DDP refuses it."""

    manual_optimization = True


def test_torchrun_refuses_a_self_stepping_family_before_joining(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused in the pre-flight of every rank (only rank 0 prints the line): no process
    group, no run dir, no rank waiting for another that has quit."""
    from ebmrun.cli import CONFIG_DIR

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="steps its own optimizers"):
        ddp.start(CONFIG_DIR, ["device=cpu",
                               "model.objective._target_=test_distributed.SelfStepping"])
    assert not torch.distributed.is_initialized()
