"""Reliability: killed runs resume bit-identically, divergence is stopped or rolled back."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ebmrun.checkpoint import load_checkpoint
from ebmrun.divergence import DivergenceGuard
from conftest import SMALL_EBGAN_NETS, TINY, _find_data_root, run_cli

# A driver that dies (like SIGKILL) half-way through writing the N-th checkpoint: the temp
# file is truncated and the process exits before the rename.
DIE_MID_CHECKPOINT = """
import os, sys
real_fsync, seen = os.fsync, [0]
def dying_fsync(fd):
    if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".last.pt."):
        seen[0] += 1
        if seen[0] == int(os.environ["DIE_AT_CHECKPOINT"]):
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            os._exit(137)
    real_fsync(fd)
os.fsync = dying_fsync
from ebmrun.cli import main
main(sys.argv[1:])
"""

DEEP_EBM = [o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.ckpt_every"))]
EBGAN = ["model=ebgan", "device=cpu", "trainer.batch_size=16", "trainer.log_every=2",
         "trainer.image_every=5", "trainer.progress=false", "sampler.steps=3", *SMALL_EBGAN_NETS]


def _env() -> dict[str, str]:
    return {**os.environ, "EBMRUN_DATA_DIR": str(_find_data_root()), "OMP_NUM_THREADS": "1"}


def _state(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(run_dir)
    flat = {f"model.{k}": v for k, v in ckpt["model"].items()}
    flat.update({f"objective.{k}": v for k, v in ckpt["objective"].items()
                 if torch.is_tensor(v)})
    buffer = ckpt["objective"].get("buffer")
    if buffer is not None:  # the chains and their ages
        flat.update({f"buffer.{k}": v for k, v in buffer.items()})
    flat["step"] = torch.tensor(ckpt["step"])
    return flat


def _start(args: list[str], cwd: Path, die_at: int | None = None) -> subprocess.Popen:
    command = ([sys.executable, "-c", DIE_MID_CHECKPOINT] if die_at else
               [sys.executable, "-m", "ebmrun"])
    env = _env() | ({"DIE_AT_CHECKPOINT": str(die_at)} if die_at else {})
    return subprocess.Popen([*command, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("family", [DEEP_EBM, EBGAN], ids=["deep_ebm", "ebgan"])
def test_killed_run_resumes_bit_identically(family: list[str], tmp_path: Path) -> None:
    """Uninterrupted run vs the same run killed mid-checkpoint, then SIGKILLed at random
    moments, and resumed each time: the final checkpoints are equal bit for bit."""
    # One CPU thread in every segment: the straight run and the resumed ones must split their
    # float reductions the same way (a different thread count changes the last bits).
    args = [*family, "trainer.max_steps=30", "trainer.ckpt_every=1", "device.threads=1"]
    straight = tmp_path / "straight"
    done = run_cli([*args, f"hydra.run.dir={straight}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]

    run_dir = tmp_path / "killed"
    died = _start([*args, f"hydra.run.dir={run_dir}"], tmp_path, die_at=4)
    assert died.wait(timeout=300) == 137
    assert list(run_dir.glob(".last.pt.*.tmp")), "the half-written temp file should be there"
    assert load_checkpoint(run_dir)["step"] == 3  # the previous good checkpoint is intact

    rng = random.Random(0)
    for _ in range(3):  # SIGKILL at random moments of the resumed runs
        proc = _start([f"resume={run_dir}"], tmp_path)
        start_step = load_checkpoint(run_dir)["step"]
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                if load_checkpoint(run_dir)["step"] > start_step:
                    break
            except Exception:
                pass
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    final = run_cli([f"resume={run_dir}"], cwd=tmp_path)
    if final.returncode != 0:  # the last kill came too late: the run had already finished
        assert "already finished" in final.stderr, final.stderr[-2000:]
    a, b = _state(straight), _state(run_dir)
    assert a.keys() == b.keys()
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, unequal
    assert not list(run_dir.glob(".last.pt.*.tmp"))  # leftovers cleaned by the next save
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 30


def test_guard_flags_non_finite_values_and_huge_energies() -> None:
    guard = DivergenceGuard(max_abs_energy=100.0)
    assert guard.check({"loss": torch.tensor(1.0), "energy_data": torch.tensor(-50.0)}) is None
    assert "loss=nan" in guard.check({"loss": torch.tensor(float("nan"))})
    assert "energy_data" in guard.check({"loss": torch.tensor(1.0),
                                         "energy_data": torch.tensor(-500.0)})
    assert guard.check({"grad_norm": torch.tensor(500.0)}) is None  # not an energy term


ABSURD = [*DEEP_EBM, "trainer.max_steps=12", "trainer.ckpt_every=1", "trainer.log_every=1",
          "optim.lr=1e3", "trainer.divergence.max_abs_energy=1e3"]


def test_divergence_stops_with_the_last_good_checkpoint(tmp_path: Path) -> None:
    proc = run_cli([*ABSURD, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "training diverged at step 2" in line and "last good checkpoint" in line
    assert "Traceback" not in proc.stderr
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["step"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_divergence_rolls_back_with_a_smaller_learning_rate(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # ckpt_every=5: the rollback target is step 0 (the checkpoint written after step 1
    # already holds weights blown up by lr=1e3, and no learning rate repairs those).
    run_dir = tmp_path / "run"
    proc = run_cli([*ABSURD, "trainer.ckpt_every=5", "trainer.on_divergence=rollback",
                    "trainer.divergence.lr_factor=1e-6", f"hydra.run.dir={run_dir}"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = load_checkpoint(run_dir)
    assert ckpt["step"] == 12 and ckpt["divergence"]["rollbacks"] >= 1
    lr = ckpt["optimizers"][0]["param_groups"][0]["lr"]
    assert lr == pytest.approx(1e3 * 1e-6 ** ckpt["divergence"]["rollbacks"])
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert events.Scalars("divergence/rollbacks")[-1].value >= 1
    assert max(e.value for e in events.Scalars("train/energy/data")) < 1e3


def test_rollback_gives_up_after_max_rollbacks(tmp_path: Path) -> None:
    proc = run_cli([*ABSURD, "trainer.on_divergence=rollback", "trainer.divergence.lr_factor=0.9",
                    "trainer.divergence.max_rollbacks=2", f"hydra.run.dir={tmp_path / 'run'}"],
                   cwd=tmp_path)
    assert proc.returncode == 2 and "after 2 rollback(s)" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_wall_clock_budget_ends_the_run(tmp_path: Path) -> None:
    from ebmrun.run import train
    from conftest import compose_config

    cfg = compose_config([*DEEP_EBM, "trainer.max_steps=null", "trainer.max_minutes=0.002"])
    metrics = train(cfg, tmp_path)  # 0.12 s: a few steps, then the normal ending
    assert 1 <= metrics["steps"] < 10_000 and (tmp_path / "metrics.json").is_file()
    assert load_checkpoint(tmp_path)["step"] == metrics["steps"]
