"""Evaluation: AUROC, the 2-D grid normaliser, task=eval and the sweep report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ebmrun.build import build_components, data_info_of, load_data
from ebmrun.evaluation import evaluate_model
from ebmrun.metrics.normaliser import grid_energies, grid_report, histogram_density, log_normaliser
from ebmrun.metrics.ood import auroc, flipped, uniform_noise_like
from ebmrun.report import collect, csv_text, markdown, sort_rows, table
from conftest import TINY, compose_config, run_cli, run_ok


def test_auroc_perfect_separator_is_one() -> None:
    assert auroc(torch.arange(100.0), torch.arange(100.0) + 1000) == 1.0
    assert auroc(torch.arange(100.0) + 1000, torch.arange(100.0)) == 0.0


def test_auroc_identical_sets_is_one_half() -> None:
    scores = torch.randn(2000, generator=torch.Generator().manual_seed(0))
    assert auroc(scores, scores) == pytest.approx(0.5, abs=1e-12)  # all ties
    other = torch.randn(2000, generator=torch.Generator().manual_seed(1))
    assert auroc(scores, other) == pytest.approx(0.5, abs=0.03)


def test_auroc_matches_pairwise_count() -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.randint(0, 5, (40,), generator=g).double()
    b = torch.randint(2, 8, (30,), generator=g).double()
    pairs = (b[None, :] > a[:, None]).double() + 0.5 * (b[None, :] == a[:, None]).double()
    assert auroc(a, b) == pytest.approx(float(pairs.mean()), abs=1e-12)


def test_grid_normaliser_of_a_gaussian() -> None:
    # E(x) = |x - mu|^2 / (2 s^2)  =>  Z = 2 pi s^2 (the box holds > 8 sigma)
    mu, s = torch.tensor([0.3, -0.2]), 0.7

    def energy(x: torch.Tensor) -> torch.Tensor:
        return ((x - mu) ** 2).sum(dim=1) / (2 * s * s)

    energies, area = grid_energies(energy, (-6.0, 6.0), 400)
    assert log_normaliser(energies, area) == pytest.approx(math.log(2 * math.pi * s * s), abs=1e-4)
    # exact NLL of its own samples: entropy of the Gaussian, and KL(target || model) ~ 0
    g = torch.Generator().manual_seed(0)
    test = mu + s * torch.randn(20000, 2, generator=g)
    target = mu + s * torch.randn(200000, 2, generator=g)
    report = grid_report(energy, test, target, (-6.0, 6.0), 400)
    entropy = 1 + math.log(2 * math.pi * s * s)
    assert report["test_nll"] == pytest.approx(entropy, abs=0.03)
    assert report["kl_target_model"] < 0.02
    # a wrong model (twice as wide) has a clearly positive KL
    wide = grid_report(lambda x: energy(x) / 4, test, target, (-6.0, 6.0), 400)
    assert wide["kl_target_model"] > 0.2 and wide["test_nll"] > report["test_nll"] + 0.2


def test_histogram_density_sums_to_one_and_bins_correctly() -> None:
    points = torch.tensor([[-0.9, -0.9], [0.9, -0.9], [0.9, 0.9], [0.95, 0.95], [5.0, 0.0]])
    mass = histogram_density(points, (-1.0, 1.0), 2, smoothing=0.0)
    # cell order: row-major, y outer: (y<0,x<0), (y<0,x>0), (y>0,x<0), (y>0,x>0)
    assert mass.tolist() == pytest.approx([0.25, 0.25, 0.0, 0.5])


def test_ood_sets_have_the_right_shape_and_range() -> None:
    x = torch.rand(4, 1, 5, 5) * 2 - 1
    noise = uniform_noise_like(x, (0.0, 1.0), torch.Generator().manual_seed(0))
    assert noise.shape == x.shape and 0 <= float(noise.min()) and float(noise.max()) <= 1
    assert torch.equal(flipped(x)[:, :, 0, 0], x[:, :, -1, -1])


def _only_dir(path: Path) -> Path:
    (child,) = [p for p in path.iterdir() if p.is_dir()]
    return child


def test_eval_of_the_true_density_has_tiny_kl(tmp_path: Path) -> None:
    """task=eval without a checkpoint on model=analytic (the exact 8-Gaussians energy): the
    normaliser is exact, so KL(target || model) is ~0 and most noise looks unlikely."""
    proc = run_ok(["task=eval", "model=analytic", "dataset=toy2d", "device=cpu",
                  "eval.grid_size=200"], cwd=tmp_path)
    run_dir = _only_dir(tmp_path / "outputs" / "eval" / "analytic-8gaussians")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["density/kl_target_model"] < 0.05, metrics
    assert metrics["ood/auroc_noise"] > 0.85  # uniform noise sometimes lands on a mode
    assert math.isfinite(metrics["density/test_nll"]) and "ood/auroc_flip" not in metrics
    assert (run_dir / "eval_density.png").is_file()
    assert "density/kl_target_model" in proc.stdout


def test_eval_of_a_trained_mnist_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Train 4 tiny steps with periodic evaluation, then task=eval the checkpoint: sample
    quality with the shipped evaluator (named in metrics.json, none trained or cached; the
    floor is cached) and all AUROCs."""
    from ebmrun.metrics.evaluator import get_evaluator

    cache = tmp_path / "cache"
    monkeypatch.setenv("EBMRUN_CACHE_DIR", str(cache))
    shipped = get_evaluator("mnist", root=None).version
    small = ["eval.n_samples=20", "eval.max_test=100", "eval.sample_steps=2"]
    run_ok([*TINY, *small, "eval.every=2", "trainer.objective_metric=eval/ood/auroc_noise"],
           cwd=tmp_path)
    train_dir = _only_dir(tmp_path / "outputs" / "train" / "deep_ebm-mnist")
    trained = json.loads((train_dir / "metrics.json").read_text())
    assert trained["objective"]["name"] == "eval/ood/auroc_noise"
    assert 0.0 <= trained["objective"]["value"] <= 1.0
    run_ok(["task=eval", f"ckpt={train_dir}", *small], cwd=tmp_path)
    metrics = json.loads((_only_dir(tmp_path / "outputs" / "eval" / "deep_ebm-mnist")
                          / "metrics.json").read_text())
    for key in ("samples/frechet", "samples/frechet_real_floor", "samples/classes_present",
                "samples/mean_confidence", "ood/auroc_fashion_mnist", "ood/auroc_noise",
                "ood/auroc_flip", "energy/test_mean", "buffer/frechet",
                "buffer/frechet_real_floor", "buffer/classes_present", "buffer/mean_confidence"):
        assert math.isfinite(metrics[key]), key
    for group in ("samples", "buffer"):  # FD over the real-vs-real floor of the same count
        assert metrics[f"{group}/frechet_over_floor"] == pytest.approx(
            metrics[f"{group}/frechet"] / metrics[f"{group}/frechet_real_floor"])
    assert metrics["buffer/n_samples"] == 20  # of its 64 slots, as many as fresh samples
    assert metrics["buffer/frechet"] != metrics["samples/frechet"]
    assert metrics["checkpoint_step"] == 4 and metrics["samples/n_samples"] == 20
    assert metrics["samples/evaluator"] == trained["eval/samples/evaluator"] == shipped
    assert not (cache / "evaluators").exists()  # the shipped weights: none trained or cached
    assert list((cache / "floors").glob("mnist-n20-*.json"))  # the floor, measured once


def test_buffer_is_scored_only_where_chains_persist() -> None:
    """Short-run chains (buffer_size 0) keep no buffer: no ``buffer/*`` metrics; the
    persistent recipe's buffer is scored on its own (here straight after init: uniform
    noise, far from digits)."""
    small = ["device=cpu", "eval.n_samples=16", "eval.max_test=64", "eval.sample_steps=1",
             "eval.ood=[]", "model.objective.sample_steps=1"]
    for buffer_size, scored in ((0, False), (32, True)):
        cfg = compose_config(["experiment=deep_ebm_shortrun_mnist", *small,
                              f"model.objective.buffer_size={buffer_size}"])
        data = load_data(cfg)
        parts = build_components(cfg, data_info_of(data))
        metrics = evaluate_model(cfg, parts.objective, data, parts.device).metrics
        assert "samples/frechet_over_floor" in metrics
        assert any(k.startswith("buffer/") for k in metrics) == scored, sorted(metrics)
        if scored:
            assert metrics["buffer/n_samples"] == 16 and metrics["buffer/frechet_over_floor"] > 1


def test_sample_draws_report_the_median_fd_and_its_spread() -> None:
    """eval.sample_draws=3 scores three sets of n_samples: FD is their median (beside the
    spread of one draw), the floor is that of n_samples real images as with one draw. The
    floor is the same whatever the run's seed (a constant of the data and the count)."""
    small = ["device=cpu", "eval.n_samples=16", "eval.max_test=64", "eval.sample_steps=1",
             "eval.ood=[]", "model.objective.sample_steps=1"]
    found = {}
    for draws, seed in ((1, 0), (3, 0), (1, 1)):
        cfg = compose_config(["experiment=deep_ebm_shortrun_mnist", *small,
                              f"eval.sample_draws={draws}", f"seed={seed}"])
        data = load_data(cfg)
        parts = build_components(cfg, data_info_of(data))
        found[draws, seed] = evaluate_model(cfg, parts.objective, data, parts.device).metrics
    one, three, other_seed = found[1, 0], found[3, 0], found[1, 1]
    assert "samples/frechet_sd" not in one and three["samples/frechet_sd"] > 0
    assert three["samples/n_samples"] == one["samples/n_samples"] == 16
    assert three["samples/sample_draws"] == 3
    assert three["samples/frechet_real_floor"] == one["samples/frechet_real_floor"]
    assert three["samples/frechet_over_floor"] == pytest.approx(
        three["samples/frechet"] / three["samples/frechet_real_floor"])
    assert other_seed["samples/frechet"] != one["samples/frechet"]  # another model and draw
    assert other_seed["samples/frechet_real_floor"] == one["samples/frechet_real_floor"]


def test_eval_needs_a_checkpoint_for_trained_families(tmp_path: Path) -> None:
    proc = run_cli(["task=eval", "device=cpu"], cwd=tmp_path)
    assert proc.returncode == 2 and "task=eval needs a checkpoint" in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_report_ranks_jobs_and_lists_failures(tmp_path: Path) -> None:
    """A 3-job sweep where one job fails inside (lr < 0 is caught per job): the report
    sorts the finished jobs by the objective and puts the failed one last with its error."""
    proc = run_cli(["-m", "model=analytic", "dataset=toy2d", "device=cpu", "trainer.max_steps=2",
                    "trainer.progress=false", "trainer.objective_metric=energy_data",
                    "model.objective.sample_steps=2", "seed=0,1", "optim.lr=1e-3,-1"],
                   cwd=tmp_path)
    sweep = _only_dir(tmp_path / "outputs" / "multirun")
    rows = sort_rows(collect(sweep), None, maximize=False)
    assert [r.status for r in rows] == ["ok", "ok", "failed", "failed"], proc.stderr[-2000:]
    assert rows[0].objective <= rows[1].objective
    assert "optim.lr" in rows[-1].error and "optim.lr=-1" in " ".join(rows[-1].overrides)
    header, body = table(rows, ["steps"])
    text = markdown(header, body)
    assert text.count("\n") == 2 + 4 and "failed" in text
    assert csv_text(rows).splitlines()[0].startswith("job,status,overrides,objective_name")
    cli = subprocess.run([sys.executable, "-m", "ebmrun.report", str(sweep)], capture_output=True,
                         text=True)
    assert cli.returncode == 0 and (sweep / "report.csv").is_file(), cli.stderr
    assert "2 ok, 2 failed" in cli.stdout
    bad = subprocess.run([sys.executable, "-m", "ebmrun.report", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "is not a directory" in bad.stderr


def test_report_shows_a_finished_jobs_health_warning(tmp_path: Path) -> None:
    """A job that finished with a health warning (metrics.json ``warnings``) is ok, and its
    first warning fills the error / warning column (markdown and CSV)."""
    for name, warnings in (("0_seed=7", ["step 200: the generator has collapsed", "later"]),
                           ("1_seed=0", [])):
        job = tmp_path / name
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- {name.split('_')[1]}\n")
        (job / "metrics.json").write_text(json.dumps(
            {"loss": 1.0, "warnings": warnings, "objective": {"name": "loss", "value": 1.0}}))
    rows = sort_rows(collect(tmp_path), None, maximize=False)
    assert [r.status for r in rows] == ["ok", "ok"]
    by_name = {r.name: r for r in rows}
    assert by_name["0_seed=7"].warning == "step 200: the generator has collapsed"
    assert by_name["1_seed=0"].warning == "" and "warnings" not in by_name["0_seed=7"].metrics
    text = markdown(*table(rows, ["loss"]))
    assert "warning: step 200: the generator has collapsed" in text and "later" not in text
    assert csv_text(rows).splitlines()[0].endswith(",error,warning")
