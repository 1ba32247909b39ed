"""2-D pictures, analytic models end to end, and the toy2d recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ebmrun.build import build_components, validate_config
from ebmrun.logging import figures, plots2d
from ebmrun.logging.run_logger import image_grid
from ebmrun.objectives.base import DataInfo
from ebmrun.run import train

from conftest import TINY, compose_config, run_cli

BOX = (-4.0, 4.0)


def _brightest(values: torch.Tensor) -> tuple[int, int]:
    """Row and column of the largest value of a ``(H, W)`` map."""
    flat = values.flatten().argmax()
    return int(flat // values.shape[1]), int(flat % values.shape[1])


def test_grid_orientation() -> None:
    points = plots2d.grid_points(BOX, 4)
    assert points[0].tolist() == [-3.0, 3.0] and points[-1].tolist() == [3.0, -3.0]


def test_density_and_histogram_put_mass_where_it_is() -> None:
    """A blob at (+3, +3) lands top right in both maps; (−3, −3) bottom left."""
    def energy(x: torch.Tensor) -> torch.Tensor:
        return 2 * (x - torch.tensor([3.0, 3.0])).pow(2).sum(1)

    density = plots2d.density_values(energy, BOX, res=64)
    row, col = _brightest(density)
    assert density.shape == (64, 64) and row < 16 and col > 48
    points = torch.randn(500, 2) * 0.2 + torch.tensor([-3.0, -3.0])
    histogram = plots2d.histogram_values(points, BOX, res=64)
    row, col = _brightest(histogram)
    assert row > 48 and col < 16 and float(histogram.max()) == 1.0
    # Items with more values than (x0, x1) are evaluated at (x0, x1, 0, ...).
    wide = plots2d.density_values(lambda x: energy(x.flatten(1)[:, :2]) + x.flatten(1)[:, 2:]
                                  .sum(1), BOX, res=8, item_shape=(1, 2, 2))
    assert wide.shape == (8, 8) and float(wide.max()) == 1.0


def test_trajectories_panels_and_value_range() -> None:
    chain = [torch.tensor([[-3.0, -3.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 3.0]])]
    paths = figures.trajectories_figure(chain, BOX, background=torch.zeros(16, 16))
    assert paths.shape[0] == 3 and paths.min() >= 0 and paths.max() <= 1
    panel = figures.panels_2d([figures.Panel("a", values=torch.rand(16, 16)),
                               figures.Panel("b", points=torch.randn(50, 2))], BOX)
    assert panel.shape[2] > 1.8 * panel.shape[1]
    batch = plots2d.in_value_range(panel, (-4.5, 4.5))
    assert torch.allclose(image_grid(batch, (-4.5, 4.5), nrow=1), panel, atol=1e-6)


def test_contrastive_divergence_draws_the_2d_landscape() -> None:
    cfg = compose_config(["dataset=toy2d", *TINY])
    parts = build_components(cfg, DataInfo((2,), BOX, BOX))
    parts.objective.training_step(torch.randn(16, 2))
    pictures = parts.objective.visuals(torch.Generator().manual_seed(0))
    (image,) = pictures.values()
    assert image.shape[:2] == (1, 3) and image.shape[3] > 3 * image.shape[2]  # 4 panels
    assert image.min() >= BOX[0] and image.max() <= BOX[1]


def test_analytic_model_trains_nothing_and_logs_pictures(tmp_path: Path) -> None:
    cfg = compose_config(["model=analytic", "dataset=toy2d", *[o for o in TINY if "buffer" not
                                                               in o]])
    validate_config(cfg)
    metrics = train(cfg, tmp_path)
    assert metrics["loss"] == 0.0 and metrics["energy_data"] > 0
    assert any(p.name.startswith("events") for p in tmp_path.iterdir())


def test_sample_an_analytic_model_without_checkpoint(tmp_path: Path) -> None:
    proc = run_cli(["model=analytic", "dataset=toy2d", "task=sample", "device=cpu",
                    "sampler=mala", "sample.n=64", "sample.steps=30"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "outputs" / "sample" / "analytic-8gaussians").iterdir()
    for name in ("samples.pt", "samples.png", "trajectories.png", "metrics.json"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["checkpoint"] is None and 0 < metrics["sampler/acceptance_rate"] <= 1
    assert torch.load(run_dir / "samples.pt").shape == (64, 2)


@pytest.mark.parametrize("density", ["gaussian", "double_well", "mixture"])
def test_every_analytic_density_samples(density: str) -> None:
    cfg = compose_config(["model=analytic", f"model.net.density={density}", "sampler=hmc",
                          "device=cpu"])
    parts = build_components(cfg, DataInfo((2,), BOX, BOX))
    result = parts.objective.generate(16, steps=5, generator=torch.Generator().manual_seed(0))
    assert result.x.shape == (16, 2) and torch.isfinite(result.x).all()


def test_toy2d_experiment_runs_end_to_end(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=deep_ebm_toy2d", *TINY])
    validate_config(cfg)
    metrics = train(cfg, tmp_path)
    assert cfg.sampler.noise_std is None and cfg.dataset.name == "8gaussians"
    assert metrics["steps"] == 4 and 0 < metrics["sampler/acceptance_rate"] <= 1
