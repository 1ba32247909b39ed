"""The `ebmrun` command end to end, as a user runs it (subprocesses, real MNIST)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, run_cli, run_ok


def _run_dirs(root: Path, task: str = "train") -> list[Path]:
    return sorted(p.parent for p in (root / "outputs" / task).glob("*/*/config.yaml"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def trained_run(workdir: Path) -> Path:
    run_ok(TINY, workdir)
    (run_dir,) = _run_dirs(workdir)
    return run_dir


def test_train_writes_the_run_dir_contract(trained_run: Path) -> None:
    assert trained_run.parent.name == "deep_ebm-mnist"
    for name in ("last.pt", "metrics.json", "config.yaml", "samples.pt", "samples.png"):
        assert (trained_run / name).is_file(), name
    assert list(trained_run.glob("events.out.tfevents.*"))
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["images_per_s"] > 0
    assert metrics["objective"]["name"] == "loss"
    assert not (trained_run / ".ebmrun.lock").exists()  # released when the run ended
    umask = os.umask(0)
    os.umask(umask)
    for name in ("last.pt", "metrics.json", "config.yaml", "samples.pt"):  # like open()
        assert (trained_run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_resume_then_sample(trained_run: Path, workdir: Path) -> None:
    resumed = run_ok([f"resume={trained_run}", "trainer.max_steps=6"], workdir)
    shown = str(trained_run.relative_to(workdir))  # printed at the start and the end
    assert f"train run dir: {shown}" in resumed.stdout
    assert f"tensorboard --logdir {shown}" in resumed.stdout
    assert json.loads((trained_run / "metrics.json").read_text())["steps"] == 6
    assert _run_dirs(workdir) == [trained_run]  # same run dir, no new one

    again = run_cli([f"resume={trained_run}", "trainer.max_steps=6"], workdir)
    assert again.returncode == 2 and "already finished" in again.stderr

    sampled = run_ok(["task=sample", f"ckpt={trained_run}", "sample.n=12", "sample.steps=5"],
                     workdir)
    (sample_dir,) = _run_dirs(workdir, "sample")
    assert f"outputs in {sample_dir.relative_to(workdir)}" in sampled.stdout
    samples = torch.load(sample_dir / "samples.pt", weights_only=True)
    assert samples.shape == (12, 1, 28, 28) and samples.dtype == torch.float32
    assert samples.min() >= -1 and samples.max() <= 1
    assert (sample_dir / "samples.png").stat().st_size > 0
    assert json.loads((sample_dir / "metrics.json").read_text())["n"] == 12


def test_corrupt_checkpoint_for_sampling(tmp_path: Path) -> None:
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 100)
    result = run_cli(["task=sample", f"ckpt={tmp_path / 'bad.pt'}"], tmp_path)
    assert result.returncode == 2 and "truncated or corrupt" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_multirun_makes_one_dir_per_job(tmp_path: Path) -> None:
    result = run_cli(["-m", *TINY, "trainer.max_steps=2", "optim.lr=1e-4,3e-4", "seed=0,1"],
                     tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    shown = str(sweep.relative_to(tmp_path))  # the sweep dir, at the start and the end
    assert f"sweep dir: {shown}" in result.stdout
    assert f"ebmrun-report {shown}" in result.stdout
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 4 and len(set(jobs)) == 4
    assert jobs[0].startswith("0_") and "optim.lr=0.0001" in jobs[0]
    for job in jobs:
        assert (sweep / job / "metrics.json").is_file()
        assert list((sweep / job).glob("events.out.tfevents.*"))


def test_jobs_started_together_never_share_a_dir(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "ebmrun", *TINY, "trainer.max_steps=1"]
    procs = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for _ in range(3)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    assert len(_run_dirs(tmp_path)) == 3


HEAVY_IMPORTS = ("torchvision", "torch._dynamo", "matplotlib")  # ~3 s each on a 2-core CPU


@pytest.mark.parametrize("args,code", [(["--help"], 0), (["task=bogus"], 2)],
                         ids=["help", "bad input"])
def test_help_and_input_errors_skip_the_slow_imports(args: list[str], code: int,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision (which pulls in torch._dynamo) and matplotlib are imported where pictures
    are drawn, so `ebmrun --help` and a one-line input error come back without them."""
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # stderr: one line per module imported
    result = run_cli(args, tmp_path)
    assert result.returncode == code, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "torch" in imported  # the probe sees the imports at all
    assert not imported & set(HEAVY_IMPORTS)


def test_help_lists_groups(tmp_path: Path) -> None:
    result = run_cli(["--help"], tmp_path)
    assert result.returncode == 0
    for group in ("model:", "sampler:", "dataset:", "device:", "experiment:"):
        assert group in result.stdout
