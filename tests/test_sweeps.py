"""Sweeps: parallel and submitit launchers, an Optuna search, and resuming a sweep.

The launcher and sweeper tests need the Hydra plugins of ``pip install 'ebmrun[sweeps]'`` /
``'ebmrun[slurm]'`` and skip without them (CI installs ``.[dev]`` only); resuming a sweep
and the plugin checks need nothing extra.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import TINY, _find_data_root, run_cli
from ebmrun import sweeps
from ebmrun.build import validate_config
from ebmrun.cli import CONFIG_DIR
from ebmrun.errors import UserError

# Fixed energies (no training): a job is start-up, two steps and the final pictures.
ANALYTIC = ["model=analytic", "dataset=toy2d", "device=cpu", "device.threads=1",
            "trainer.max_steps=2", "trainer.progress=false", "model.objective.sample_steps=5",
            "dataset.n_train=1000", "dataset.n_test=200"]


def _replace(base: list[str], *overrides: str) -> list[str]:
    """``base`` with the keys of ``overrides`` replaced (a key given twice is ambiguous)."""
    keys = {o.split("=", 1)[0] for o in overrides}
    return [o for o in base if o.split("=", 1)[0] not in keys] + list(overrides)


# A tiny deep EBM on 8 Gaussians; no pictures before the end (job dir names stay short).
TOY = _replace(["experiment=deep_ebm_toy2d", *TINY, "device.threads=1"],
               "trainer.image_every=1000", "trainer.log_every=10", "trainer.ckpt_every=10")


def _jobs(sweep: Path) -> list[Path]:
    """The job dirs of a sweep, in job order."""
    return sorted((p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: int(p.name.split("_", 1)[0]))


def _writer_pids(job: Path) -> set[str]:
    """Process ids in the job's TensorBoard file names (``...tfevents.<t>.<host>.<pid>.<n>``)."""
    return {p.name.split(".")[-2] for p in job.glob("events.out.tfevents.*")}


def _assert_finished(sweep: Path, n: int) -> list[Path]:
    jobs = _jobs(sweep)
    assert len(jobs) == n, [j.name for j in jobs]
    for job in jobs:
        assert json.loads((job / "metrics.json").read_text())["task"] == "train", job
    return jobs


def test_joblib_launcher_runs_four_jobs_on_two_workers(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher",
                        reason="the joblib launcher plugin is not installed (ebmrun[sweeps])")
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                    f"hydra.sweep.dir={sweep}", *ANALYTIC, "seed=0,1,2,3"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _assert_finished(sweep, 4)
    assert [int(j.name.split("_")[0]) for j in jobs] == [0, 1, 2, 3]
    # Two worker processes shared the four jobs.
    assert len(set().union(*map(_writer_pids, jobs))) == 2
    assert OmegaConf.load(sweep / "multirun.yaml").hydra.launcher.n_jobs == 2


def test_submitit_local_launcher_runs_four_jobs(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="the submitit launcher plugin is not installed (ebmrun[slurm])")
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                    f"hydra.sweep.dir={sweep}", *ANALYTIC, "seed=0,1,2,3"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _assert_finished(sweep, 4)
    # One submitit job (own process) per sweep job.
    assert len([p for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]) == 4
    assert len(set().union(*map(_writer_pids, jobs))) == 4


def test_optuna_search_runs_trials_and_writes_results(tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna", reason="optuna is not installed (ebmrun[sweeps])")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper",
                        reason="the Optuna sweeper plugin is not installed (ebmrun[sweeps])")
    sweep, storage = tmp_path / "search", f"sqlite:///{tmp_path / 'study.db'}"
    # A search dimension with an invalid value: the trials that draw it fail (one line in
    # their error.txt) and the search goes on with the others.
    base = [o for o in TOY if not o.startswith(("sampler.steps=", "trainer.max_steps="))]
    proc = run_cli(["-m", "hparams_search=deep_ebm_toy2d", "hydra.sweeper.n_trials=4",
                    "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweep.dir={sweep}",
                    f"hydra.sweeper.storage={storage}", "eval.grid_size=32",
                    "trainer.max_steps=choice(4,-1)", *base], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _jobs(sweep)
    assert [t.name for t in trials] == ["0", "1", "2", "3"]
    done = [t for t in trials if (t / "metrics.json").is_file()]
    failed = [t for t in trials if t not in done]
    assert done and failed, "the sampler drew only one of the two max_steps values"
    for trial in failed:
        assert "trainer.max_steps=-1" in (trial / "error.txt").read_text()
    values = [json.loads((t / "metrics.json").read_text())["objective"] for t in done]
    assert {v["name"] for v in values} == {"eval/density/test_nll"}

    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert set(results.best_params) == {"optim.lr", "model.objective.alpha",
                                        "sampler.step_size", "sampler.steps",
                                        "trainer.max_steps"}
    assert results.best_params["trainer.max_steps"] == 4
    assert results.best_value == pytest.approx(min(v["value"] for v in values))
    # The study is in the SQLite storage (SQLAlchemy < 2), ready to be continued.
    study = optuna.load_study(study_name="deep_ebm_toy2d", storage=storage)
    states = sorted(t.state.name for t in study.trials)
    assert states == sorted(["COMPLETE"] * len(done) + ["FAIL"] * len(failed))
    assert study.best_value == pytest.approx(results.best_value)


def test_interrupted_sweep_resumes_only_the_missing_jobs(tmp_path: Path) -> None:
    # Job 2 is long: the sweep is killed while it runs, after jobs 0 and 1 finished.
    args = ["-m", *_replace(TOY, "trainer.max_steps=10,12,400,14")]
    env = {**os.environ, "EBMRUN_DATA_DIR": str(_find_data_root())}
    proc = subprocess.Popen([sys.executable, "-m", "ebmrun", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    try:
        while not list(tmp_path.glob("outputs/multirun/*/2_*/last.pt")):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "job 2 never wrote a checkpoint"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no chance to clean up
        proc.wait()
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    jobs = _jobs(sweep)
    assert len(jobs) == 3 and not (jobs[2] / "metrics.json").exists()
    before = {j.name: (j / "metrics.json").stat().st_mtime_ns for j in jobs[:2]}

    resumed = run_cli([*args, f"hydra.sweep.dir={sweep}", "sweep.resume=true"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    jobs = _assert_finished(sweep, 4)
    assert {j.name: (j / "metrics.json").stat().st_mtime_ns for j in jobs[:2]} == before
    assert [f"{j.name}: finished before, skipped" in resumed.stdout for j in jobs] == [
        True, True, False, False]
    (resumed_line,) = [line for line in resumed.stdout.splitlines() if "resuming" in line]
    assert resumed_line.startswith(f"ebmrun: {jobs[2].name}: resuming from step ")
    assert int(resumed_line.split("from step ")[1].split()[0]) >= 10  # not from scratch
    steps = [json.loads((j / "metrics.json").read_text())["steps"] for j in jobs]
    assert steps == [10, 12, 400, 14]


SEARCHES = sorted(p.stem for p in (Path(CONFIG_DIR) / "hparams_search").glob("*.yaml"))


@pytest.mark.parametrize("search", SEARCHES)
def test_every_search_space_names_keys_of_its_experiment(search: str) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper",
                        reason="the Optuna sweeper plugin is not installed (ebmrun[sweeps])")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={search}", f"hparams_search={search}"],
                      return_hydra_config=True)
    validate_config(cfg)
    sweeper = cfg.hydra.sweeper
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sweeper.direction in ("minimize", "maximize")
    assert cfg.trainer.objective_metric.startswith("eval/") and cfg.eval.every
    for key in sweeper.params:  # a typo would silently add a key nothing reads
        assert OmegaConf.select(cfg, key) is not None, f"{search}: {key} is not a config key"


def test_slurm_preset_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="the submitit launcher plugin is not installed (ebmrun[slurm])")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm",
                                           "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert (launcher.gpus_per_node, launcher.array_parallelism) == (1, 16)


def test_missing_plugins_and_misused_resume_are_user_errors(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(sweeps, "_installed", lambda module: False)
    with pytest.raises(UserError, match=r"pip install 'ebmrun\[sweeps\]'"):
        sweeps.check_plugins(["seed=1", "hydra/launcher=joblib"])
    with pytest.raises(UserError, match=r"pip install 'ebmrun\[slurm\]'"):
        sweeps.check_plugins(["hydra/launcher=submitit_slurm"])
    with pytest.raises(UserError, match=r"pip install 'ebmrun\[sweeps\]'"):
        sweeps.check_plugins(["hparams_search=ebgan_mnist"])
    sweeps.check_plugins(["seed=1", "hydra.launcher.n_jobs=2"])  # no plugin chosen: fine
    with pytest.raises(UserError, match="add -m"):
        sweeps.check_resume(True, multirun=False, overrides=[])
    with pytest.raises(UserError, match="hydra.sweep.dir="):
        sweeps.check_resume(True, multirun=True, overrides=["seed=0,1"])
    with pytest.raises(UserError, match="an Optuna search continues from its study"):
        sweeps.check_resume(True, multirun=True, overrides=["hydra.sweep.dir=x",
                                                            "hparams_search=ebgan_mnist"])
    sweeps.check_resume(True, multirun=True, overrides=["hydra.sweep.dir=x"])
    sweeps.check_resume(False, multirun=False, overrides=[])
