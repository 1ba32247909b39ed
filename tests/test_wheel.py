"""A non-editable install from a built wheel works from any directory (config tree inside)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from conftest import REPO_ROOT, _find_data_root


def _run(args: list, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={"PATH": "/usr/bin:/bin",
                                            "EBMRUN_DATA_DIR": str(_find_data_root())})


def test_wheel_install_runs_from_an_unrelated_directory(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-w", dist, REPO_ROOT])
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = dist.glob("ebmrun-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"ebmrun/conf/config.yaml", "ebmrun/conf/model/deep_ebm.yaml",
            "ebmrun/conf/dataset/mnist.yaml", "ebmrun/cli.py",
            "ebmrun/metrics/evaluator_weights/mnist.pt",
            "ebmrun/metrics/evaluator_weights/fashion_mnist.pt"} <= names

    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", venv]).returncode == 0
    # Reuse this environment's torch & co. (reinstalling gigabytes would dominate the test);
    # a .pth path line adds them after the venv's own site-packages, where the wheel goes.
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = venv / "lib" / version / "site-packages"
    (site / "_ebmrun_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = _run([venv / "bin" / "pip", "install", "--no-deps", "--no-index", wheel])
    assert installed.returncode == 0, installed.stderr[-2000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([venv / "bin" / "python", "-c", "import ebmrun; print(ebmrun.__file__)"],
                 elsewhere)
    assert str(site) in where.stdout, where.stdout + where.stderr
    helped = _run([venv / "bin" / "ebmrun", "--help"], elsewhere)
    assert helped.returncode == 0 and "deep_ebm" in helped.stdout
    ran = _run([venv / "bin" / "ebmrun", "dataset=toy2d", "device=cpu", "trainer.max_steps=3",
                "trainer.batch_size=32", "trainer.progress=false", "sampler.steps=2",
                "model.objective.buffer_size=64", "model.objective.sample_steps=2"], elsewhere)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert list(elsewhere.glob("outputs/train/deep_ebm-8gaussians/*/last.pt"))
