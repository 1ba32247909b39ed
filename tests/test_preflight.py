"""The pre-flight refusals (in-process, bad-input-matrix style: exit 2, one stderr line, no
traceback, nothing written), the metric names the pre-flight trusts, and the run-dir lock
with two real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ebmrun.run import training_step
from ebmrun.build import build_components, data_info_of, load_data, optim_settings
from ebmrun.checkpoint import atomic_write_bytes
from ebmrun.cli import CONFIG_DIR, main
from ebmrun.errors import UserError
from ebmrun.evaluation import evaluate_model
from ebmrun.lock import LOCK_NAME, RunLock
from ebmrun.metric_names import objective_class, produced, train_metrics
from ebmrun.preflight import check_hparams_preset
from ebmrun.run import train
from conftest import REPO_ROOT, compose_config, run_cli

SETTINGS = ["device=cpu", "trainer.max_steps=4", "trainer.batch_size=16", "trainer.log_every=2",
            "trainer.image_every=1000", "trainer.ckpt_every=2", "trainer.progress=false"]
TOY = ["experiment=nce_toy2d", *SETTINGS]  # a resume takes its recipe from the checkpoint


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step NCE run on 8gaussians (about a second)."""
    run_dir = tmp_path_factory.mktemp("preflight") / "nce"
    train(compose_config(TOY), run_dir)
    return run_dir


REFUSALS: list[tuple[str, list[str], str]] = [
    ("argument without =", ["train"], "(fix: ebmrun task=train)"),
    ("option in the wrong case", ["dataset=MNIST"], "unknown dataset 'MNIST' (fix: dataset=mnist;"),
    ("misspelt key", ["trainer.max_stepz=3"], "unknown key trainer.max_stepz (did you mean "
                                              "max_steps?)"),
    ("misspelt model key", ["model.objective.noise_ration=1"], "(did you mean noise_ratio?)"),
    ("misspelt task", ["task=trian"], "unknown task 'trian' (did you mean train?)"),
    ("zero steps", ["trainer.max_steps=0"], "trainer.max_steps=0 is invalid"),
    ("zero epochs", ["trainer.max_epochs=0"], "trainer.max_epochs=0 is invalid"),
    ("eval metric without eval.every", ["trainer.objective_metric=eval/ood/auroc_noise"],
     "never evaluates (fix: eval.every=<steps>"),
    ("2-D density metric on images", ["trainer.objective_metric=eval/density/test_nll",
                                      "eval.every=2", "dataset=mnist", "model=nce"],
     "eval/density/test_nll is never produced by nce on mnist"),
    ("sample quality of a non-generator", ["trainer.objective_metric=eval/samples/frechet",
                                           "eval.every=2", "experiment=sparse_coding_mnist"],
     "never produced by sparse_coding on mnist"),
    ("quality metric with the probe off", ["trainer.objective_metric=quality/frechet",
                                            "trainer.quality_every=0", "experiment=vae_mnist"],
     "comes from the quality probe, which is off"),
    ("quality metric on 2-D data", ["trainer.objective_metric=quality/frechet",
                                    "trainer.quality_every=2"],
     "quality/frechet is never produced by nce on 8gaussians"),
    ("training scalar never logged", ["trainer.objective_metric=loss_cd"],
     "trainer.objective_metric=loss_cd is never produced by nce"),
    ("ckpt with task=train", ["ckpt={run}"], "task=train would ignore it (fix: resume="),
    ("resume as another family", ["resume={run}", "model=score_matching"],
     "continues a nce run, not score_matching"),
    ("resume on other data", ["resume={run}", "dataset=mnist"],
     "continues a run on 8gaussians, not on mnist"),
    ("resume on another toy density", ["resume={run}", "dataset.name=rings"],
     "not on rings"),
]


@pytest.mark.parametrize(("name", "args", "expected"), REFUSALS, ids=[c[0] for c in REFUSALS])
def test_preflight_refuses(name: str, args: list[str], expected: str, toy_run: Path,
                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in toy_run.iterdir()}
    with pytest.raises(SystemExit) as stop:
        own = any(a.startswith(("experiment=", "resume=", "ckpt=")) for a in args)
        main([*(SETTINGS if own else TOY),
              *[a.format(run=toy_run) for a in args]])
    assert stop.value.code == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ebmrun: error: "), out.err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in out.err + out.out
    assert not list(tmp_path.rglob("*")), "a refused run wrote something"
    assert {p: p.stat().st_mtime_ns for p in toy_run.iterdir()} == before


def test_every_search_preset_names_an_existing_experiment() -> None:
    for preset in sorted((Path(CONFIG_DIR) / "hparams_search").glob("*.yaml")):
        entries = [e for e in OmegaConf.load(preset).defaults if "override /experiment" in e]
        assert len(entries) == 1, f"{preset.name} names no experiment"
        experiment = entries[0]["override /experiment"]
        assert (Path(CONFIG_DIR) / "experiment" / f"{experiment}.yaml").is_file()
        check_hparams_preset({"hparams_search": preset.stem, "experiment": experiment})
        with pytest.raises(UserError, match=f"searches experiment={experiment}, not"):
            check_hparams_preset({"hparams_search": preset.stem, "experiment": "rbm_mnist"})


def test_readme_commands_name_no_mismatched_search() -> None:
    """The README's Optuna line once trained MNIST in every trial (the preset's experiment
    was not chosen): every `hparams_search=X` there must work as written."""
    for line in (REPO_ROOT / "README.md").read_text().splitlines():
        if "hparams_search=" in line and line.startswith("ebmrun"):
            preset = line.split("hparams_search=")[1].split()[0]
            experiment = [w.split("=")[1] for w in line.split() if w.startswith("experiment=")]
            assert not experiment or experiment == [preset], line


# Every model family (a new one is covered, or fails here until it declares its names), on
# MNIST or, for the 2-D recipes, toy data (the probe is one training step, about a second).
FAMILIES = {p.stem: [f"model={p.stem}", *(["dataset=toy2d"] if p.stem in
                                          ("analytic", "nce", "score_matching") else [])]
            for p in sorted((Path(CONFIG_DIR) / "model").glob("*.yaml"))}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_declared_training_metrics_cover_what_training_logs(family: str) -> None:
    cfg = compose_config([*FAMILIES[family], "device=cpu", "trainer.batch_size=8",
                          "sampler.steps=2"])
    data = load_data(cfg)
    parts = build_components(cfg, data_info_of(data))
    optimizers = parts.objective.configure_optimizers(optim_settings(cfg))
    labels = data.train_labels[:8] if parts.objective.uses_labels else None
    logged = training_step(parts.objective, optimizers, data.to_float(data.train[:8]), None,
                           y=labels)
    declared = train_metrics(cfg, None)
    assert "loss" in logged and all(produced(k, declared) for k in logged), (sorted(logged),
                                                                            declared)


@pytest.mark.parametrize("overrides", [["experiment=deep_ebm_toy2d"], ["model=dae"],
                                       ["model=jem"]],
                         ids=["deep_ebm_toy2d", "dae_mnist", "jem_mnist"])
def test_declared_eval_metrics_match_an_evaluation(overrides: list[str]) -> None:
    cfg = compose_config([*overrides, "device=cpu", "eval.every=1", "eval.max_test=64",
                          "eval.grid_size=16", "eval.sample_quality=false"])
    data = load_data(cfg)
    parts = build_components(cfg, data_info_of(data))
    report = evaluate_model(cfg, parts.objective, data, parts.device)
    declared = [n for n in train_metrics(cfg, (data.name, tuple(data.item_shape)))
                if n.startswith("eval/")]
    reported = [f"eval/{k}" for k in report.metrics]
    assert all(produced(k, declared) for k in reported), (reported, declared)
    exact = [n for n in declared if "*" not in n]  # and nothing declared that never comes
    assert set(exact) <= set(reported), set(exact) - set(reported)
    assert objective_class(cfg).__name__ == type(parts.objective).__name__


def test_outputs_respect_the_umask(tmp_path: Path) -> None:
    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        old = os.umask(umask)
        try:
            atomic_write_bytes(tmp_path / f"f{umask:o}", b"x")
        finally:
            os.umask(old)
        assert (tmp_path / f"f{umask:o}").stat().st_mode & 0o777 == mode


def test_one_writer_per_run_dir(toy_run: Path) -> None:
    """A second process is refused while the first holds the run dir; when the holder is
    killed (its lock file left behind, stale), the next run takes the dir over."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ebmrun.lock import RunLock; "
         "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)",
         str(toy_run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = json.loads((toy_run / LOCK_NAME).read_text())
        assert lock["pid"] == holder.pid and lock["host"] == socket.gethostname()
        before = {p: p.stat().st_mtime_ns for p in toy_run.iterdir()}
        refused = run_cli([*SETTINGS, f"resume={toy_run}", "trainer.max_steps=6"], toy_run.parent)
        assert refused.returncode == 2, refused.stderr[-2000:]
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and f"is in use by pid {holder.pid} on " in lines[0], lines
        assert {p: p.stat().st_mtime_ns for p in toy_run.iterdir()} == before
        with pytest.raises(UserError, match=f"pid {holder.pid}"):
            RunLock(toy_run).acquire()  # in this process too
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (toy_run / LOCK_NAME).is_file()  # stale: its process is gone
    resumed = run_cli([*SETTINGS, f"resume={toy_run}", "trainer.max_steps=6"], toy_run.parent)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((toy_run / "metrics.json").read_text())["steps"] == 6
    assert not (toy_run / LOCK_NAME).exists()  # released at the end
    assert torch.load(toy_run / "last.pt", weights_only=True)["step"] == 6
