"""The evaluators shipped with the package: loaded without training, named by their weights'
hash, and giving the same Fréchet distance for the same samples file on every run.

If scripts/train_evaluator.py is rerun and the weights change, SHIPPED below must change
with them (and with it every samples/evaluator name): that is the point of the version.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch

from ebmrun.data.idx import load_idx_dataset
from ebmrun.metrics import evaluator as evaluator_module
from ebmrun.metrics.evaluator import RECIPES, get_evaluator, shipped_path, weights_digest
from ebmrun.metrics.sample_quality import reference_stats, sample_quality

# version name, test accuracy (recorded when trained) and the FD of the fixed samples below.
SHIPPED = {
    "mnist": ("mnist-d69916d8b077", 0.9901000261306763, 632.5146054008961),
    "fashion_mnist": ("fashion_mnist-a6f9392412cf", 0.9038000106811523, 93.63293947169834),
}


def _no_training(*args: object, **kwargs: object) -> None:
    raise AssertionError("the shipped evaluator must not be trained")


@pytest.mark.parametrize("dataset", sorted(RECIPES))
def test_shipped_weights_load_without_training(dataset: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluator_module, "train_evaluator", _no_training)
    path = shipped_path(dataset)
    assert path.is_file() and path.stat().st_size < 1_000_000  # small enough to commit
    start = time.perf_counter()
    ev = get_evaluator(dataset, root="/nonexistent", cache_dir=str(tmp_path))  # no data needed
    assert time.perf_counter() - start < 30  # a file read, not minutes of training
    assert list(tmp_path.iterdir()) == []  # nothing cached
    version, accuracy, _ = SHIPPED[dataset]
    assert re.fullmatch(rf"{dataset}-[0-9a-f]{{12}}", ev.version)
    assert ev.version == version
    assert ev.version == f"{dataset}-{weights_digest(ev.state_dict())[:12]}"
    assert ev.test_accuracy == pytest.approx(accuracy, abs=1e-9)
    assert ev.test_accuracy >= RECIPES[dataset].target_accuracy
    payload = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors only
    assert payload["dataset"] == dataset


@pytest.mark.parametrize("dataset", sorted(RECIPES))
def test_same_fd_for_a_fixed_samples_file(dataset: str, data_root: Path,
                                          tmp_path: Path) -> None:
    """A samples file made from a seeded generator (test images plus noise) scores the same
    FD with two freshly loaded evaluators, and the FD recorded when the weights were made."""
    data = load_idx_dataset(dataset, str(data_root))
    test = data.to_float(data.test)
    noise = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.save((0.7 * test[:200] + 0.3 * noise).clamp(-1, 1), tmp_path / "samples.pt")
    reference = test[1000:2000]
    fds = []
    for _ in range(2):
        samples = torch.load(tmp_path / "samples.pt", weights_only=True)
        evaluator = get_evaluator(dataset, None)
        fds.append(sample_quality(evaluator, samples,
                                  reference_stats(evaluator, reference))["frechet"])
    assert fds[0] == fds[1]
    assert fds[0] == pytest.approx(SHIPPED[dataset][2], rel=1e-4)  # any machine, any run
