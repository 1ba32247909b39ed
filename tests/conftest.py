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

# EBGAN's shipped nets (a 1024 x 6272 layer in G) write ~87 MB of weights and Adam state per
# checkpoint; tests about the runner, not the recipe, use the same layers at toy widths.
SMALL_EBGAN_NETS = ["model.net.z_dim=8", "model.net.gen_fc=[32]", "model.net.gen_channels=[16,8]",
                    "model.net.disc_channels=[8]", "model.net.code_dim=8"]


def _find_data_root() -> Path:
    """$EBMRUN_DATA_DIR (relative to the repo root, as CI sets it), else the shared folder
    next to the repo if there is one, else ./data: the same choice as the Makefile's."""
    env = os.environ.get("EBMRUN_DATA_DIR")
    if env:
        return (REPO_ROOT / env).resolve()
    shared = REPO_ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else REPO_ROOT / "data"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs one worker per core) each worker's torch gets its
    share of the cores, not all of them: N workers x all cores oversubscribes the CPU."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Without MNIST / Fashion-MNIST most tests cannot run: end the session before the first
    test with one line naming the files, the folder and the fix, not a wall of failures.
    (Here rather than in pytest_sessionstart, where pytest prints the message twice.)"""
    from ebmrun.data.fetch import missing_by_folder, missing_message

    root = _find_data_root()
    missing = missing_by_folder(root)
    if missing:
        pytest.exit(f"ebmrun tests need data: {missing_message(root, missing)}", returncode=2)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The root holding MNIST/raw and FashionMNIST/raw (see :func:`_find_data_root`);
    no test runs without them (:func:`pytest_collection_modifyitems`)."""
    return _find_data_root()


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
