"""What a user meets in TensorBoard, asserted through a real server's HTTP API.

One logdir holds a deep-EBM run, an EBGAN run and a 2-job sweep (tiny runs); a
``tensorboard`` process serves it on a free 127.0.0.1 port. The logger-side pieces (tag
scheme, HParams sessions, layout, job names, figures) are tested without a server below.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY, compose_config, run_ok
from ebmrun.build import validate_config
from ebmrun.job_names import job_name, swept_dirname, swept_keys
from ebmrun.logging import RunLogger, figures, tags
from ebmrun.logging.hparams import run_hparams
from ebmrun.preflight import check_objective_metric
from ebmrun.run import train

EBGAN = ["model=ebgan", *[o for o in TINY if "objective" not in o]]
# The quality probe on at every log step for the deep EBM (few, short chains: ~2 s, mostly
# the evaluator's reference features), explicitly off for EBGAN.
QUALITY_ON = ["trainer.quality_every=2", "trainer.quality_samples=16", "trainer.quality_steps=2"]
SWEEP_RUNS = ("sweep/0_optim.lr=0.0001", "sweep/1_optim.lr=0.0003")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tb")
    for name, overrides in (("deep_ebm", ["model=deep_ebm", *TINY, *QUALITY_ON]),
                            ("ebgan", [*EBGAN, "trainer.quality_every=0"])):
        cfg = compose_config(overrides)
        validate_config(cfg)
        train(cfg, root / name)
    run_ok(["-m", *TINY, "trainer.max_steps=2", "trainer.image_every=100",
            "optim.lr=1e-4,3e-4", f"hydra.sweep.dir={root / 'sweep'}"], root)
    return root


def test_the_quality_probe_ends_in_metrics_json(logdir: Path) -> None:
    """Its last values are in metrics.json, so a sweep can optimise them (and the pre-flight
    admits them as trainer.objective_metric); a run with the probe off has none."""
    with_probe = json.loads((logdir / "deep_ebm" / "metrics.json").read_text())
    assert math.isfinite(with_probe["quality/frechet"])
    assert with_probe["quality/frechet_real_floor"] > 0
    without = json.loads((logdir / "ebgan" / "metrics.json").read_text())
    assert not [k for k in without if k.startswith("quality/")]
    cfg = compose_config(["model=deep_ebm", *TINY, *QUALITY_ON,
                          "trainer.objective_metric=quality/frechet"])
    validate_config(cfg)
    check_objective_metric(cfg)  # admitted: no error


@pytest.fixture(scope="module")
def server(logdir: Path):
    """Base URL of a TensorBoard serving ``logdir`` once all four runs are loaded."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
                             "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false",
                             "--reload_interval", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if len(_get(f"{base}/data/plugin/scalars/tags")) == 4:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        time.sleep(1.5)  # one more reload: every run's last events are in
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _session_groups(base: str) -> dict[str, dict]:
    body = {"experimentName": "", "startIndex": 0, "sliceSize": 100, "colParams": [],
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                "STATUS_RUNNING"]}
    groups = _get(f"{base}/data/plugin/hparams/session_groups", body)["sessionGroups"]
    return {g["name"]: g for g in groups}


def test_hparams_compare_every_run_with_its_own_metrics(server: str) -> None:
    experiment = _get(f"{server}/data/plugin/hparams/experiment", {"experimentName": ""})
    columns = {m["name"]["tag"] for m in experiment["metricInfos"]}
    # The union of both families' metrics, not one run's list.
    assert {"train/loss", "train/energy/gap", "train/loss/contrastive",
            "train/loss/discriminator", "train/energy/hinge_active"} <= columns
    groups = _session_groups(server)
    assert set(groups) == {"deep_ebm", "ebgan", *SWEEP_RUNS}
    for name, group in groups.items():
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        own = {"train/loss", "train/energy/data", "train/energy/samples", "train/energy/gap"}
        own |= {"train/loss/discriminator"} if name == "ebgan" else {"train/loss/contrastive"}
        assert own <= set(values) and all(math.isfinite(values[k]) for k in own), name
        assert [s["status"] for s in group["sessions"]] == ["STATUS_SUCCESS"]
    lrs = {name: groups[name]["hparams"].get("lr", groups[name]["hparams"].get("optim.lr"))
           for name in SWEEP_RUNS}
    assert lrs == {SWEEP_RUNS[0]: 1e-4, SWEEP_RUNS[1]: 3e-4}


def test_no_step0_final_scalars(server: str) -> None:
    scalar_tags = _get(f"{server}/data/plugin/scalars/tags")
    for run, run_tags in scalar_tags.items():
        assert not [t for t in run_tags if t.startswith("final/")], run
        for tag in run_tags:
            points = _get(f"{server}/data/plugin/scalars/scalars?"
                          + urllib.parse.urlencode({"run": run, "tag": tag}))
            assert min(p[1] for p in points) > 0, (run, tag)  # [wall_time, step, value]


def test_custom_scalars_layout_puts_data_and_sample_energies_together(server: str) -> None:
    layout = _get(f"{server}/data/plugin/custom_scalars/layout")
    charts = {c["title"]: c["multiline"]["tag"] for cat in layout["category"]
              for c in cat["chart"]}
    energy = next(p for title, p in charts.items() if title.startswith("E(data), E(samples)"))
    scalar_tags = _get(f"{server}/data/plugin/scalars/tags")
    for run in ("deep_ebm", "ebgan"):  # the same chart draws both families' energies
        shown = {t for t in scalar_tags[run] for p in energy if re.search(p, t)}
        margin = {"train/energy/margin"} if run == "ebgan" else set()  # EBGAN's m beside them
        assert shown == {"train/energy/data", "train/energy/samples"} | margin, run
    assert any(title.startswith("gap E(samples)") for title in charts)
    assert "loss and its terms" in charts


def test_pictures_and_histograms_are_served(server: str) -> None:
    images = _get(f"{server}/data/plugin/images/tags")["deep_ebm"]
    assert {"images/data", "images/buffer", "images/samples_from_noise",
            "images/langevin_chain", "final/samples", "final/sampling_chain"} <= set(images)
    histograms = _get(f"{server}/data/plugin/histograms/tags")
    for run in ("deep_ebm", "ebgan"):  # one name for the same quantity in both families
        assert {"energy/data", "energy/samples"} <= set(histograms[run]), run


def test_learning_rates_by_network_and_run_performance(server: str) -> None:
    scalar_tags = _get(f"{server}/data/plugin/scalars/tags")
    assert {t for t in scalar_tags["ebgan"] if t.startswith("lr/")} == {"lr/d", "lr/g"}
    assert {t for t in scalar_tags["deep_ebm"] if t.startswith("lr/")} == {"lr/model"}
    for run in ("deep_ebm", "ebgan"):
        points = _get(f"{server}/data/plugin/scalars/scalars?" + urllib.parse.urlencode(
            {"run": run, "tag": "perf/images_per_s"}))
        assert [p[1] for p in points] == [2, 4] and points[-1][2] > 0, run  # window, run
        grads = {t for t in scalar_tags[run] if t.startswith("grad/")}
        # The deep EBM clips at 0.1 (its share is shown), EBGAN does not clip by default.
        assert grads == ({"grad/norm/d", "grad/norm/g"} if run == "ebgan"
                         else {"grad/norm/model", "grad/clipped/model"}), run
    images = _get(f"{server}/data/plugin/images/tags")["deep_ebm"]
    assert "energy/data_vs_samples" in images


def test_buffer_statistics_and_quality_probe_are_logged(server: str) -> None:
    scalar_tags = _get(f"{server}/data/plugin/scalars/tags")
    buffer = {"train/buffer/age_mean", "train/buffer/reinit_share"}
    quality = {"quality/frechet", "quality/frechet_real_floor"}
    assert buffer | quality <= set(scalar_tags["deep_ebm"])
    assert not (buffer | quality) & set(scalar_tags["ebgan"])  # no buffer; probe off
    for run in SWEEP_RUNS:  # 2 steps, default quality_every=1000: the probe never ran
        assert buffer <= set(scalar_tags[run]) and not quality & set(scalar_tags[run]), run
    points = {tag: _get(f"{server}/data/plugin/scalars/scalars?" + urllib.parse.urlencode(
        {"run": "deep_ebm", "tag": tag})) for tag in buffer | quality}
    ages = [p[2] for p in points["train/buffer/age_mean"]]
    # 16 of 64 slots drawn per step: the negatives' mean age starts at 1 and grows.
    assert [p[1] for p in points["train/buffer/age_mean"]] == [2, 4] and 1 <= ages[0] < ages[1]
    assert all(0 <= p[2] <= 1 for p in points["train/buffer/reinit_share"])
    assert [p[1] for p in points["quality/frechet"]] == [2, 4]
    assert all(p[2] > 0 for tag in quality for p in points[tag])
    layout = _get(f"{server}/data/plugin/custom_scalars/layout")
    titles = [c["title"] for cat in layout["category"] for c in cat["chart"]]
    assert any(t.startswith("replay buffer") for t in titles)
    assert any(t.startswith("quality probe") for t in titles)


def test_quality_probe_leaves_training_unchanged(logdir: Path, tmp_path: Path) -> None:
    """The deep EBM of the logdir probed quality every 2 steps; without the probe the same
    run ends with the same weights, replay buffer (and ages) and random states."""
    cfg = compose_config(["model=deep_ebm", *TINY, "trainer.quality_every=0"])
    train(cfg, tmp_path)
    on = torch.load(logdir / "deep_ebm" / "last.pt", weights_only=True)
    off = torch.load(tmp_path / "last.pt", weights_only=True)
    for part in ("model", "rng"):
        assert on[part].keys() == off[part].keys()
        assert all(torch.equal(on[part][k], off[part][k]) for k in on[part]), part
    for key in ("data", "ages"):
        assert torch.equal(on["objective"]["buffer"][key], off["objective"]["buffer"][key])


def test_buffer_ages_follow_the_chains_and_resume(tmp_path: Path) -> None:
    """Ages count sampler runs since the start from noise; a buffer saved and loaded
    (weights_only) mid-run continues exactly like the one that was not."""
    from ebmrun.objectives.replay_buffer import ReplayBuffer

    def buffer() -> ReplayBuffer:
        return ReplayBuffer(8, (2,), (-1.0, 1.0), torch.device("cpu"),
                            torch.Generator().manual_seed(0))

    def step(buf: ReplayBuffer, reinit: float) -> dict[str, float]:
        x0, idx = buf.draw(8, reinit)
        buf.push(idx, x0 + 0.1)
        return {k: float(v) for k, v in buf.stats().items()}

    a = buffer()
    assert step(a, 0.0) == {"age_mean": 1.0, "reinit_share": 0.0}  # all 8 slots, from age 0
    assert step(a, 0.0) == {"age_mean": 2.0, "reinit_share": 0.0}
    assert step(a, 1.0) == {"age_mean": 1.0, "reinit_share": 1.0}  # all restarted
    step(a, 0.5)
    torch.save(a.state_dict(), tmp_path / "buffer.pt")
    b = buffer()
    b.load_state_dict(torch.load(tmp_path / "buffer.pt", weights_only=True))
    b.generator.set_state(a.generator.get_state())
    for _ in range(3):
        assert step(a, 0.5) == step(b, 0.5)
    assert torch.equal(a.ages, b.ages) and torch.equal(a.data, b.data)
    assert int(a.ages.max()) <= 7


def test_run_names_lead_with_the_swept_value(server: str) -> None:
    runs = _get(f"{server}/data/runs")
    assert set(SWEEP_RUNS) <= set(runs)  # "model=...", "device=cpu", ... stay out of names


def test_hparams_hold_the_real_sampling_settings(server: str) -> None:
    groups = _session_groups(server)
    # EBGAN's samples run the latent chain (model.objective.latent_refine, its default), so
    # its settings are shown; with refinement off they are not (the unit test below).
    assert {"sampler", "sampler.steps", "sampler.step_size",
            "model.objective.latent_refine"} <= set(groups["ebgan"]["hparams"])
    assert {"sampler.steps", "model.objective.buffer_size"} <= set(groups["deep_ebm"]["hparams"])


# ---- logger side, no server ---------------------------------------------------------------

def test_canonical_names_and_gap() -> None:
    assert tags.canonical("energy_sample") == tags.canonical("energy_fake") == "energy/samples"
    assert tags.canonical("energy/real") == "energy/data"
    assert tags.with_gap({"energy/data": 1.0, "energy/samples": 3.5})["energy/gap"] == 2.5
    assert "energy: data vs samples" not in tags.layout(["train/loss"])
    both = tags.layout(["train/energy/data", "eval/energy/test_mean"])["energy: data vs samples"]
    assert any("test set" in title for title in both)


def test_final_metrics_at_the_last_step_and_constants_held(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path)
    logger.start_session({"model.name": "deep_ebm", "sampler.noise_std": None,
                          "model.net.hidden": [16, 32]})
    for step in (2, 4):
        logger.scalars({"loss": 1.0 / step, "sampler/acceptance_rate": 1.0,
                        "sampler/step_size": 0.1 * step}, step, prefix="train/")
    logger.final_metrics({"final/loss": 0.25, "perf/wall_time_s": 3.0, "model": "x"})
    logger.close()
    events = EventAccumulator(str(tmp_path)).Reload()
    scalars = set(events.Tags()["scalars"])
    assert "train/sampler/acceptance_rate" not in scalars  # constant: held back
    assert [e.step for e in events.Scalars("train/sampler/step_size")] == [2, 4]
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]  # not written again
    assert [(e.step, e.value) for e in events.Scalars("perf/wall_time_s")] == [(4, 3.0)]
    assert not [t for t in scalars if t.startswith("final/")]


def test_run_hparams_leave_out_what_does_not_apply() -> None:
    overrides = ["optim.lr=0.001", "device=cpu", "model.net.mlp_hidden=[8]"]
    deep = run_hparams(compose_config(["model=deep_ebm", *overrides]), sampler_used=True,
                       overrides=overrides)
    assert deep["sampler"] == "Langevin" and "sampler.steps" in deep
    assert deep["model.net.mlp_hidden"] == [8] and "device" not in deep
    ebgan_cfg = compose_config(["model=ebgan", "model.objective.margin=0.7"])
    ebgan = run_hparams(ebgan_cfg, sampler_used=False,
                        overrides=["sampler.steps=5"])
    assert not [k for k in ebgan if k.startswith("sampler")]
    assert ebgan["model.objective.margin"] == 0.7


def test_job_names_keep_only_the_swept_keys() -> None:
    keys = swept_keys(["model=deep_ebm", "optim.lr=1e-4,3e-4", "seed=range(2)", "device=cpu"])
    assert keys == {"optim.lr", "seed"}
    assert job_name(["model=deep_ebm", "optim.lr=0.0001", "seed=1", "device=cpu"], keys) \
        == "optim.lr=0.0001,seed=1"
    assert job_name(["optim.lr=0.0001", "seed=1"], keys, exclude=["seed"]) == "optim.lr=0.0001"


def test_swept_dirname_reads_the_sweep_and_keeps_old_job_dirs(tmp_path: Path) -> None:
    OmegaConf.save({"hydra": {"overrides": {"task": ["model=ebgan", "seed=0,1"]}}},
                   tmp_path / "multirun.yaml")
    long = ",".join(f"trainer.k{i}={'x' * 20}" for i in range(20))  # > 255 bytes
    job = {"num": 1, "override_dirname": f"model=ebgan,seed=1,{long}",
           "config": {"override_dirname": {"exclude_keys": []}}}
    root = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "job": job, "overrides": {
        "task": ["model=ebgan", "seed=1", *long.split(",")]}}})
    assert swept_dirname(_root_=root) == "seed=1"
    (tmp_path / "1_model=ebgan,seed=1").mkdir()  # a sweep named the old way: resumable
    root.hydra.job.override_dirname = "model=ebgan,seed=1"
    assert swept_dirname(_root_=root) == "model=ebgan,seed=1"


def test_figures_render_without_a_display() -> None:
    points = torch.randn(200, 2)
    image = figures.points_figure(points, (-4.0, 4.0), data=torch.randn(300, 2))
    assert image.shape[0] == 3 and image.shape[1] >= 400 and 0 <= image.min() < image.max() <= 1
    panel = figures.panels_2d([figures.Panel("data", points=points),
                               figures.Panel("exp(-E)", values=torch.rand(32, 32))], (-4.0, 4.0))
    assert panel.shape[2] > 1.8 * panel.shape[1]  # two panels side by side
    assert figures.snapshot_steps(4, 32, 100) == ["step 0", "step 32", "step 64", "step 100"]
    film = figures.chain_film(torch.rand(3, 62, 302), ["step 0", "step 8"])
    assert film.shape[1] > 62 and film.shape[2] > 302  # labels and margins around the grid
