"""Shared fixtures: the offline data root, Hydra composition, and tiny run settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ebmrun.cli import CONFIG_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]

# Settings that make any deep-EBM run take a second or two on a CPU.
TINY = ["device=cpu", "trainer.max_steps=4", "trainer.batch_size=16", "trainer.log_every=2",
        "trainer.image_every=2", "trainer.ckpt_every=2", "trainer.progress=false",
        "sampler.steps=3", "model.objective.buffer_size=64", "model.objective.sample_steps=4"]


def _find_data_root() -> Path:
    env = os.environ.get("EBMRUN_DATA_DIR")
    return (REPO_ROOT / env).resolve() if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The root holding MNIST/raw and FashionMNIST/raw: $EBMRUN_DATA_DIR (relative to the
    repo root, as CI sets it) or the shared folder next to the repo. Fails, not skips: the
    data is always there in CI."""
    root = _find_data_root()
    if not (root / "MNIST" / "raw").is_dir() or not (root / "FashionMNIST" / "raw").is_dir():
        pytest.fail(f"MNIST / Fashion-MNIST not found under {root}: set EBMRUN_DATA_DIR to the "
                    f"folder holding MNIST/raw and FashionMNIST/raw")
    return root


@pytest.fixture(autouse=True)
def _absolute_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configs read ${oc.env:EBMRUN_DATA_DIR}; make it absolute so tests may chdir."""
    monkeypatch.setenv("EBMRUN_DATA_DIR", str(_find_data_root()))


def compose_config(overrides: list[str]) -> DictConfig:
    """The config the CLI would build from ``overrides`` (no run dir is created)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m ebmrun args`` in ``cwd`` and capture its output."""
    env = {**os.environ, "EBMRUN_DATA_DIR": str(_find_data_root()), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "ebmrun", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_ok(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """:func:`run_cli` that must succeed (the failure shows the end of stderr)."""
    proc = run_cli(args, cwd, timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc
