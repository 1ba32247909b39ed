"""Fast checks of the offline sample-quality metrics (no evaluator training here)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ebmrun.data.base import InMemoryData
from ebmrun.errors import UserError
from ebmrun.metrics import evaluator as evaluator_module
from ebmrun.metrics.evaluator import (Evaluator, evaluator_path, get_evaluator, load_evaluator,
                                      save_evaluator)
from ebmrun.metrics.evaluator_training import random_shift
from ebmrun.metrics.frechet import feature_stats, frechet_distance
from ebmrun.metrics.real_floor import FLOOR_DRAWS, floor_index_draws, real_floor
from ebmrun.metrics.sample_quality import (MAX_CLASS_KL, class_stats, reference_stats,
                                          sample_quality)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_frechet_self_is_zero() -> None:
    a = torch.randn(500, 16, generator=_gen()) @ torch.randn(16, 16, generator=_gen(1))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_rank_deficient_self_is_zero() -> None:
    # fewer samples than features, and a dead (all-zero) feature, as with ReLU features
    a = torch.randn(20, 64, generator=_gen()).relu()
    a[:, 0] = 0.0
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_rises_with_noise() -> None:
    a = torch.randn(800, 8, generator=_gen())
    base = torch.randn(800, 8, generator=_gen(1))
    noise = torch.randn(800, 8, generator=_gen(2))
    dists = [frechet_distance(a, base + s * noise) for s in (0.0, 0.5, 1.0, 2.0)]
    assert all(x < y for x, y in zip(dists, dists[1:])), dists


def test_frechet_matches_1d_gaussian_formula() -> None:
    a = 1.0 + 2.0 * torch.randn(4000, 1, generator=_gen())
    b = -0.5 + 0.5 * torch.randn(3000, 1, generator=_gen(1))
    mu_a, var_a = a.double().mean(), a.double().var()
    mu_b, var_b = b.double().mean(), b.double().var()
    expected = float((mu_a - mu_b) ** 2 + (var_a.sqrt() - var_b.sqrt()) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(1.5 ** 2 + 1.5 ** 2, rel=0.1)  # population values


def test_frechet_diagonal_gaussians_formula() -> None:
    mu_a, mu_b = torch.tensor([0.0, 1.0]), torch.tensor([2.0, 1.0])
    from ebmrun.metrics.frechet import frechet_from_stats
    d = frechet_from_stats(mu_a, torch.diag(torch.tensor([4.0, 1.0])),
                           mu_b, torch.diag(torch.tensor([1.0, 9.0])))
    assert d == pytest.approx(4.0 + (2 - 1) ** 2 + (1 - 3) ** 2)


def test_feature_stats_and_errors() -> None:
    x = torch.randn(50, 3, generator=_gen())
    mu, sigma = feature_stats(x)
    assert mu.dtype == torch.float64 and sigma.shape == (3, 3)
    assert torch.allclose(sigma, torch.cov(x.double().T))
    with pytest.raises(UserError):
        frechet_distance(x, torch.randn(50, 4))
    with pytest.raises(UserError):
        feature_stats(torch.randn(1, 3))


def test_evaluator_shapes() -> None:
    torch.manual_seed(0)
    ev = Evaluator(batch_size=7)  # batch smaller than N to exercise chunking
    x = torch.rand(10, 1, 28, 28) * 2 - 1
    assert ev.features(x).shape == (10, 128)
    assert ev.logits(x).shape == (10, 10)
    assert (ev.features(x) >= 0).all()  # taken after the ReLU
    assert not ev.logits(x).requires_grad
    assert ev(x).shape == (10, 10)
    with pytest.raises(UserError):
        ev.features(torch.zeros(4, 3, 32, 32))


def test_random_shift_keeps_shape_and_content() -> None:
    x = -torch.ones(6, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1.0
    y = random_shift(x, 2, _gen())
    assert y.shape == x.shape
    assert torch.equal((y > 0).sum(dim=(1, 2, 3)), (x > 0).sum(dim=(1, 2, 3)))
    assert torch.equal(random_shift(x, 0, _gen()), x)


def test_sample_quality_keys_and_ranges() -> None:
    torch.manual_seed(0)
    ev = Evaluator()
    samples = torch.rand(64, 1, 28, 28) * 2 - 1
    reference = torch.rand(80, 1, 28, 28) * 2 - 1
    q = sample_quality(ev, samples, reference_stats(ev, reference))
    assert set(q) == {"frechet", "classes_present", "class_kl_uniform", "mean_confidence",
                      "n_samples"}
    assert q["frechet"] >= 0.0 and math.isfinite(q["frechet"])
    assert 1 <= q["classes_present"] <= 10
    assert 0.0 <= q["class_kl_uniform"] <= MAX_CLASS_KL + 1e-9
    assert 0.1 - 1e-6 <= q["mean_confidence"] <= 1.0
    assert q["n_samples"] == 64
    stats = reference_stats(ev, reference[40:])
    sets = [reference[i:i + 10] for i in (0, 10, 20)]
    singles = [sample_quality(ev, one_set, stats)["frechet"] for one_set in sets]
    three = sample_quality(ev, torch.cat(sets), stats, draws=3)  # three draws of 10
    assert three["sample_draws"] == 3 and three["n_samples"] == 10
    assert three["frechet"] == pytest.approx(sorted(singles)[1], rel=1e-5)  # the median
    assert three["frechet_sd"] == pytest.approx(
        torch.tensor(singles, dtype=torch.float64).std().item(), rel=1e-5)
    with pytest.raises(UserError):
        sample_quality(ev, samples[:, :, :14], stats)
    with pytest.raises(UserError, match="do not split into 5 equal draws"):
        sample_quality(ev, samples, stats, draws=5)


def test_class_stats_extremes() -> None:
    one_class = torch.zeros(100, 10)
    one_class[:, 3] = 50.0
    s = class_stats(one_class)
    assert s["classes_present"] == 1
    assert s["class_kl_uniform"] == pytest.approx(math.log(10))
    assert s["mean_confidence"] == pytest.approx(1.0)
    balanced = torch.eye(10).repeat(10, 1) * 50.0
    s = class_stats(balanced)
    assert s["classes_present"] == 10 and s["class_kl_uniform"] == pytest.approx(0.0, abs=1e-12)


def test_evaluator_cache_roundtrip(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A retrained evaluator (no shipped weights for its dataset) is cached and reloaded."""
    monkeypatch.setattr(evaluator_module, "SHIPPED_DIR", tmp_path / "no_shipped_weights")
    torch.manual_seed(0)
    ev = Evaluator()
    ev.dataset, ev.test_accuracy = "mnist", 0.5
    path = evaluator_path("mnist", tmp_path)
    assert path == tmp_path / "evaluators" / "mnist-v2.pt"
    save_evaluator(ev, path, seed=0)
    assert [p.name for p in path.parent.iterdir()] == ["mnist-v2.pt"]  # no temp file left
    loaded = get_evaluator("mnist", root=None, cache_dir=str(tmp_path))  # from cache, no data
    assert loaded.test_accuracy == 0.5 and loaded.version == ev.version
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    assert torch.allclose(loaded.logits(x), ev.logits(x))
    with pytest.raises(UserError):
        load_evaluator(path, "fashion_mnist")
    with pytest.raises(UserError):
        get_evaluator("cifar10", root=None, cache_dir=str(tmp_path))


def test_retraining_is_announced(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture) -> None:
    """Without shipped weights the evaluator is trained: the message says what, how long and
    where it is cached (training itself is replaced by a stand-in here)."""
    monkeypatch.setattr(evaluator_module, "SHIPPED_DIR", tmp_path / "no_shipped_weights")

    def stand_in(dataset: str, root: str | None, seed: int = 0) -> Evaluator:
        ev = Evaluator()
        ev.dataset, ev.test_accuracy = dataset, 0.5
        return ev

    monkeypatch.setattr(evaluator_module, "train_evaluator", stand_in)
    get_evaluator("fashion_mnist", root=None, cache_dir=str(tmp_path))
    err = capsys.readouterr().err
    cached = evaluator_path("fashion_mnist", tmp_path)
    assert "training" in err and "min" in err and str(cached) in err and cached.is_file()


def test_floor_draws_are_fixed_disjoint_blocks_of_successive_permutations() -> None:
    """100 draws of 30 from 1,000 items: 33 disjoint blocks per permutation, then the next
    permutation's; the same sets on every call whatever torch's global seed."""
    torch.manual_seed(123)
    blocks = floor_index_draws(1000, 30)
    torch.manual_seed(456)
    again = floor_index_draws(1000, 30)
    assert len(blocks) == FLOOR_DRAWS == 100
    assert all(torch.equal(a, b) for a, b in zip(blocks, again))
    assert all(len(block) == 30 for block in blocks)
    first_permutation = torch.cat(blocks[:33])
    assert len(first_permutation.unique()) == 33 * 30  # disjoint within a permutation
    assert not torch.equal(blocks[0], blocks[33])  # the next permutation starts afresh
    assert len(floor_index_draws(20, 30)) == 1  # fewer items than n: one (short) set


def _small_data(n_train: int = 300) -> InMemoryData:
    gen = _gen(3)
    images = torch.randint(0, 256, (n_train + 50, 1, 28, 28), dtype=torch.uint8, generator=gen)
    return InMemoryData(name="mnist", train=images[:n_train], test=images[n_train:],
                        value_range=(-1.0, 1.0), box=(-1.0, 1.0))


def test_real_floor_is_the_median_of_its_draws_and_is_cached(tmp_path) -> None:
    """The floor equals the median / sd of the FDs of its draws' images; it is written once
    under <cache>/floors/ and read back from there (a doctored file is believed: the proof
    it is read), and another n or another reference is another file."""
    torch.manual_seed(0)
    ev, data = Evaluator(), _small_data()
    stats = reference_stats(ev, data.to_float(data.test))
    floor = real_floor(ev, data, 20, stats, cache_dir=tmp_path)
    draws = [data.to_float(data.train[block]) for block in floor_index_draws(300, 20)]
    direct = sample_quality(ev, torch.cat(draws), stats, draws=100)
    assert floor.draws == 100 and floor.median == pytest.approx(direct["frechet"], rel=1e-5)
    assert floor.sd == pytest.approx(direct["frechet_sd"], rel=1e-5)
    files = list((tmp_path / "floors").glob("mnist-n20-*.json"))
    assert len(files) == 1
    doctored = json.loads(files[0].read_text()) | {"median": 123.0}
    files[0].write_text(json.dumps(doctored))
    assert real_floor(ev, data, 20, stats, cache_dir=tmp_path).median == 123.0
    assert real_floor(ev, data, 10, stats, cache_dir=tmp_path).median != 123.0
    other_reference = reference_stats(ev, data.to_float(data.test[:25]))
    assert real_floor(ev, data, 20, other_reference, cache_dir=tmp_path).median != 123.0
    assert len(list((tmp_path / "floors").glob("*.json"))) == 3
    files[0].write_text("not json")  # a broken file is measured again, not an error
    assert real_floor(ev, data, 20, stats, cache_dir=tmp_path).median == pytest.approx(
        direct["frechet"], rel=1e-5)
