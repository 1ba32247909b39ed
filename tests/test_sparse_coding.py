"""Sparse coding and LISTA: soft-thresholding, power iteration, ISTA/FISTA energies and
optimality, unit-norm atoms, patches, LISTA = ISTA at initialisation, short trainings that
must learn, and the CLI end to end (train -> eval table -> sample; LISTA from the run)."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import pytest
import torch

from ebmrun.build import build_components, validate_config
from ebmrun.checkpoint import load_checkpoint, load_model_state
from ebmrun.config import EvalConfig
from ebmrun.errors import UserError
from ebmrun.models.lista import LISTA, LISTANet
from ebmrun.models.sparse_coding import SparseCoding, tile_starts
from ebmrun.models.sparse_inference import (fista, fista_iterates, ista, ista_iterates,
                                            power_iteration, soft_threshold, sparse_energy)
from ebmrun.objectives.base import DataInfo, OptimSettings
from ebmrun.objectives.lista import LISTAObjective
from ebmrun.objectives.sparse_coding import SparseCodingObjective
from ebmrun.optimization import Schedule, Updater, group_settings
from ebmrun.run import train
from ebmrun.samplers.langevin import Langevin

from conftest import compose_config, run_ok


def _settings(**changes):
    """A parameter group's settings: the config defaults with ``changes``."""
    defaults = group_settings(compose_config(["trainer.grad_clip=null"]), "loss")
    return dataclasses.replace(defaults, **changes)


UNIT = DataInfo((1, 28, 28), (0.0, 1.0), (0.0, 1.0))
ADAM = OptimSettings(name="adam", lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, fused=True)
TINY = ["dataset.value_range=[0,1]", "device=cpu", "device.threads=1", "trainer.max_steps=4",
        "trainer.batch_size=16", "trainer.log_every=2", "trainer.image_every=2",
        "trainer.ckpt_every=2", "trainer.progress=false", "model.net.n_atoms=32",
        "model.net.n_examples=20"]
TINY_SC = ["model=sparse_coding", *TINY, "model.objective.iters=10"]
TINY_LISTA = ["model=lista", *TINY, "model.net.depths=[1,2]", "model.objective.target_iters=20",
              "model.net.lam=0.9"]  # ignored: a loaded dictionary brings its own λ
TINY_EVAL = ["eval.max_test=64", "eval.ood=[noise]", "model.objective.eval_iters=20",
             "model.objective.optimal_iters=200"]
# task=eval with ckpt=: the pre-flight composes the default model, so keys of this family's
# objective are added with `+` (the checkpoint's own config then gets the values).
TINY_EVAL_CLI = [("+" + o if o.startswith("model.") else o) for o in TINY_EVAL]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small matrices: one thread is faster, and immune to a busy machine's contention
    (multi-threaded tiny matmuls slow down by orders of magnitude under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_problem(n: int = 30, m: int = 60, batch: int = 8, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Signals ``(batch, n)``, unit-norm dictionary ``(n, m)`` and its L, in float64."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, m, generator=g, dtype=torch.float64)
    weight = weight / weight.norm(dim=0)
    y = torch.randn(batch, n, generator=g, dtype=torch.float64)
    return y, weight, float(torch.linalg.eigvalsh(weight.T @ weight)[-1])


@functools.lru_cache(maxsize=1)
def _mnist(root: str):
    from ebmrun.data.idx import load_idx_dataset
    return load_idx_dataset(name="mnist", root=root, download=False, value_range=(0.0, 1.0))


def mnist_batch(data_root: Path, n: int, offset: int = 0, test: bool = False) -> torch.Tensor:
    """MNIST items ``offset … offset + n`` in [0, 1] (the files are parsed once)."""
    data = _mnist(str(data_root))
    return data.to_float((data.test if test else data.train)[offset:offset + n])


# ---- inference ---------------------------------------------------------------------------

def test_soft_threshold_values_and_prox_property() -> None:
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    assert soft_threshold(x, 1.0).tolist() == [-2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]
    # a threshold per column broadcasts over rows
    per_atom = soft_threshold(torch.tensor([[2.0, -2.0]]), torch.tensor([0.5, 3.0]))
    assert per_atom.tolist() == [[1.5, 0.0]]
    # soft(x, θ) = argmin_u ½(u − x)² + θ|u|, checked on a fine grid
    u = torch.linspace(-5, 5, 100001, dtype=torch.float64)
    for value in (-2.3, -0.4, 0.0, 0.7, 4.1):
        best = u[torch.argmin(0.5 * (u - value) ** 2 + 0.8 * u.abs())]
        assert soft_threshold(torch.tensor(value, dtype=torch.float64), 0.8).item() == \
            pytest.approx(float(best), abs=2e-4)


def test_power_iteration_matches_eigvalsh() -> None:
    _, weight, _ = random_problem(n=40, m=90)
    gram = weight.T @ weight
    exact = float(torch.linalg.eigvalsh(gram)[-1])
    value, vector = power_iteration(gram, tol=1e-12)
    assert value == pytest.approx(exact, rel=1e-6)
    torch.testing.assert_close(gram @ vector, value * vector, atol=1e-4, rtol=0)
    # warm start from the eigenvector: already converged after a couple of iterations
    assert power_iteration(gram, vector, max_iters=2)[0] == pytest.approx(exact, rel=1e-6)
    coder = SparseCoding([1, 6, 6], n_atoms=50)
    exact32 = float(torch.linalg.eigvalsh(coder.weight.detach().T @ coder.weight.detach())[-1])
    assert coder.lipschitz() == pytest.approx(exact32, rel=1e-4)


def test_ista_energy_never_increases() -> None:
    y, weight, lipschitz = random_problem()
    energies = torch.stack([sparse_energy(y, z, weight, 0.1) for z, _ in
                            zip(ista_iterates(y, weight, 0.1, lipschitz), range(300))])
    steps = energies[1:] - energies[:-1]  # (iterations − 1, batch)
    assert (steps <= 1e-12).all()
    assert (energies[-1] < energies[0] - 0.1).all()  # and it really descends


def test_fista_reaches_lower_energy_than_ista_at_equal_iterations() -> None:
    y, weight, lipschitz = random_problem(seed=1)
    for iters in (10, 30, 100):
        e_ista = sparse_energy(y, ista(y, weight, 0.1, lipschitz, iters), weight, 0.1).mean()
        e_fista = sparse_energy(y, fista(y, weight, 0.1, lipschitz, iters), weight, 0.1).mean()
        assert e_fista < e_ista - 1e-3, iters


def test_fista_converges_to_the_lasso_optimum() -> None:
    # KKT conditions: Wᵢᵀr = λ·sign(zᵢ) on the support, |Wᵢᵀr| ≤ λ off it (r = y − Wz).
    y, weight, lipschitz = random_problem(seed=2)
    lam = 0.3
    z = fista(y, weight, lam, lipschitz, 3000)
    correlation = (y - z @ weight.T) @ weight
    active = z != 0
    assert active.any() and (~active).any()
    torch.testing.assert_close(correlation[active], lam * torch.sign(z[active]), atol=1e-6,
                               rtol=0)
    assert (correlation[~active].abs() <= lam + 1e-6).all()
    # the first iterate is soft(Wᵀy / L, λ / L) for both solvers (they start at z₀ = 0)
    first = soft_threshold(y @ weight / lipschitz, lam / lipschitz)
    torch.testing.assert_close(next(ista_iterates(y, weight, lam, lipschitz)), first)
    torch.testing.assert_close(next(fista_iterates(y, weight, lam, lipschitz)), first)


# ---- model: patches, examples ------------------------------------------------------------

def test_patches_tile_the_image_and_round_trip() -> None:
    assert tile_starts(28, 8) == [0, 8, 16, 20] and tile_starts(16, 8) == [0, 8]
    coder = SparseCoding([1, 28, 28], n_atoms=10, patch_size=8)
    x = torch.rand(3, 1, 28, 28)
    rows = coder.signals(x)
    assert rows.shape == (3 * 16, 64) and coder.patches_per_item() == 16
    torch.testing.assert_close(rows[16 + 5].reshape(8, 8), x[1, 0, 8:16, 8:16])
    torch.testing.assert_close(coder.items(rows), x)  # overlaps average identical values
    patches = coder.random_patches(x, 5, torch.Generator().manual_seed(0))
    assert patches.shape == (15, 64)
    crops = x.unfold(2, 8, 1).unfold(3, 8, 1).reshape(3, 21 * 21, 64)
    # every random patch is one of its own image's 8×8 crops
    for i in range(15):
        assert (crops[i // 5] - patches[i]).abs().sum(1).min() < 1e-6
    with pytest.raises(ValueError, match="patch_size=40"):
        SparseCoding([1, 28, 28], patch_size=40)


# ---- dictionary learning -----------------------------------------------------------------

def _stepper(objective, cosine_steps: int | None = None):
    """The runner's update of ``objective`` (objectives only compute losses): Adam, no
    clipping; ``cosine_steps``: LISTA's warm-up + cosine over that many run steps."""
    optimizers = objective.configure_optimizers(ADAM)
    schedules = None if cosine_steps is None else [
        Schedule(o, _settings(schedule="warmup_cosine" if g == "lista" else "constant"),
                 cosine_steps) for g, o in zip(objective.groups, optimizers, strict=True)]
    updater = Updater(objective, optimizers, [None] * len(optimizers), schedules)
    steps = iter(range(1, 10**9))
    return lambda x: updater(x, next(steps))


def _objective(n_atoms: int = 64, lam: float = 0.5, **kwargs):
    torch.manual_seed(0)
    model = SparseCoding([1, 28, 28], n_atoms=n_atoms, lam=lam, n_examples=16)
    objective = SparseCodingObjective(model, Langevin(), UNIT, torch.Generator().manual_seed(0),
                                      **kwargs)
    return objective, _stepper(objective)


def test_atoms_keep_unit_norm_and_dictionary_learning_lowers_energy(data_root: Path) -> None:
    objective, train_step = _objective(iters=30, lr=3e-3)
    held_out = mnist_batch(data_root, 128, test=True)
    model = objective.model
    train_step(mnist_batch(data_root, 64))  # initialises atoms from data
    before = objective.energy(held_out).mean()
    for step in range(1, 40):
        out = train_step(mnist_batch(data_root, 64, offset=64 * step))
        torch.testing.assert_close(model.weight.norm(dim=0), torch.ones(64))
    after = objective.energy(held_out).mean()
    assert after < 0.9 * before, (before, after)
    assert 0 < out["nonzeros"] < 64 and 0 < out["atoms_used"] <= 1
    assert int(model.n_stored) == 16  # the first items were kept as examples


def test_generate_reconstructs_examples_and_visuals(data_root: Path) -> None:
    objective, train_step = _objective(iters=20)
    x = mnist_batch(data_root, 32)
    train_step(x)
    result = objective.generate(20, steps=8, generator=torch.Generator(), snapshot_every=4)
    assert result.x.shape == (20, 1, 28, 28) and 0 <= result.x.min() and result.x.max() <= 1
    torch.testing.assert_close(result.chain[0][:16], x[:16])  # input first, then recon
    assert len(result.chain) == 3
    # cycles through the 16 stored examples; reconstructions resemble their inputs
    torch.testing.assert_close(result.x[16:], result.x[:4])
    assert (result.x[:16] - x[:16]).pow(2).mean() < x[:16].pow(2).mean()
    pictures = objective.visuals(torch.Generator())
    assert pictures["dictionary_atoms"].shape == (64, 1, 28, 28)
    assert pictures["reconstructions"].shape == (32, 1, 28, 28)
    assert objective.generates_new_samples is False


def test_patch_dictionary_trains_reconstructs_and_evaluates(data_root: Path) -> None:
    torch.manual_seed(0)
    model = SparseCoding([1, 28, 28], n_atoms=32, lam=0.2, patch_size=8, n_examples=8)
    objective = SparseCodingObjective(model, Langevin(), UNIT, torch.Generator().manual_seed(0),
                                      iters=20, patches_per_image=4, eval_iters=10,
                                      optimal_iters=100)
    out = _stepper(objective)(mnist_batch(data_root, 16))
    assert model.weight.shape == (64, 32) and out["nonzeros"] > 0
    x = mnist_batch(data_root, 4, test=True)
    assert objective.energy(x).shape == (4,)
    recon = objective.generate(8, generator=torch.Generator()).x
    assert recon.shape == (8, 1, 28, 28)
    report = objective.evaluate(x, EvalConfig(), torch.Generator())
    assert report.metrics["sparse/nonzeros"] > 0 and len(report.tables["code_error"]) == 20
    assert objective.visuals(torch.Generator())["dictionary_atoms"].shape == (32, 1, 8, 8)


# ---- LISTA -------------------------------------------------------------------------------

@pytest.mark.parametrize("tied", [True, False])
def test_lista_initialised_from_dictionary_is_ista(tied: bool) -> None:
    y, weight, lipschitz = random_problem()
    y, weight = y.float(), weight.float()
    net = LISTANet(30, 60, depth=4, tied=tied)
    net.init_from_dictionary(weight, lipschitz, 0.2)
    for k, z in enumerate(net.layers(y), start=1):
        torch.testing.assert_close(z, ista(y, weight, 0.2, lipschitz, k), atol=1e-5, rtol=1e-4)
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == (60 * 30 + 60 * 60 + 60 if tied else 4 * 60 * 30 + 3 * 60 * 60 + 4 * 60)


def test_lista_training_beats_ista_with_as_many_iterations(data_root: Path) -> None:
    torch.manual_seed(0)
    model = LISTA([1, 28, 28], n_atoms=48, depths=[1, 3], lam=0.5, n_examples=8)
    objective = LISTAObjective(model, Langevin(), UNIT, torch.Generator().manual_seed(0),
                               dictionary_steps=25, dictionary_iters=30, target_iters=150,
                               shift=1, eval_iters=30, optimal_iters=300)
    train_step = _stepper(objective, cosine_steps=85)
    for step in range(85):
        out = train_step(mnist_batch(data_root, 64, offset=64 * step))
        if step == 24:
            assert "dictionary/energy" in out and not bool(model.initialised)
    assert bool(model.initialised) and "code_error_T3" in out
    report = objective.evaluate(mnist_batch(data_root, 200, test=True), EvalConfig(),
                                torch.Generator())
    m = report.metrics
    for t in (1, 3):  # 60 steps already beat both solvers at equal cost
        assert m[f"lista/code_error_T{t}"] < 0.5 * m[f"fista/code_error_{t}"], t
    assert m["lista/code_error_T3"] < m["lista/code_error_T1"]
    assert m["sparse/optimal_check"] < 0.1 * m["lista/code_error_T3"]  # z* is accurate enough
    rows = report.tables["lista_vs_fista"]
    assert [r["layers"] for r in rows] == [1, 3] and rows[1]["fista_iters_to_match"] >= 3
    assert report.figures["code_error"].shape[0] == 3


@pytest.mark.parametrize("model", ["sparse_coding", "lista"])
@pytest.mark.parametrize("item_shape", [(1, 28, 28), (2,)])
def test_default_configs_build_with_an_energy(model: str, item_shape: tuple) -> None:
    cfg = compose_config([f"model={model}", "device=cpu", "model.net.n_atoms=16"])
    validate_config(cfg)
    parts = build_components(cfg, DataInfo(item_shape, (-1.0, 1.0), (-1.0, 1.0)))
    x = torch.rand(3, *item_shape) * 2 - 1
    assert parts.model.energy(x).shape == (3,) and parts.objective.energy(x).shape == (3,)
    assert (parts.objective.energy(x) >= 0).all()
    with pytest.raises(UserError, match="unknown inference 'cd'.*fista"):
        build_components(compose_config([f"model={model}", "device=cpu",
                                         "model.objective.inference=cd"]), UNIT)


# ---- end to end through the CLI ----------------------------------------------------------

def test_cli_train_eval_sample_then_lista(tmp_path: Path, data_root: Path) -> None:
    run = tmp_path / "sc"
    run_ok([*TINY_SC, f"hydra.run.dir={run}"], tmp_path)
    ckpt = load_checkpoint(run)
    assert ckpt["model"]["weight"].shape == (784, 32)
    torch.testing.assert_close(ckpt["model"]["weight"].norm(dim=0), torch.ones(32))

    run_ok(["task=eval", f"ckpt={run}", *TINY_EVAL_CLI,
           f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    table = metrics["tables"]["code_error"]
    assert len(table) == 2 * 20 and {r["method"] for r in table} == {"ista", "fista"}
    fista_rows = [r["code_error"] for r in table if r["method"] == "fista"]
    assert fista_rows[-1] < fista_rows[0] and metrics["fista/code_error_20"] == fista_rows[-1]
    assert (tmp_path / "eval" / "eval_code_error.png").is_file()
    assert 0.5 < metrics["ood/auroc_noise"] <= 1.0

    run_ok(["task=sample", f"ckpt={run}", "sample.n=12",
           f"hydra.run.dir={tmp_path / 'sample'}"], tmp_path)
    samples = torch.load(tmp_path / "sample" / "samples.pt", weights_only=True)
    assert samples.shape == (12, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1

    # LISTA from that run (in-process: the same train() the CLI calls, one start-up less)
    lista = tmp_path / "lista"
    cfg = compose_config([*TINY_LISTA, f"model.objective.dictionary={run}"])
    validate_config(cfg)
    metrics = train(cfg, lista)
    assert {"code_error_T1", "code_error_T2"} <= set(metrics)
    lista_ckpt = load_checkpoint(lista)
    # the dictionary and λ came from the sparse-coding run, and stayed frozen
    torch.testing.assert_close(lista_ckpt["model"]["coder.weight"], ckpt["model"]["weight"])
    assert float(lista_ckpt["model"]["coder.lam"]) == 0.5
    cfg = compose_config([*TINY_LISTA, *TINY_EVAL,
                          f"model.objective.dictionary={tmp_path / 'gone'}"])
    parts = build_components(cfg, UNIT)  # eval needs no dictionary file: it is in the model
    load_model_state(parts.model, lista_ckpt)
    report = parts.objective.evaluate(mnist_batch(data_root, 32, test=True), EvalConfig(),
                                      torch.Generator())
    assert {"lista/code_error_T1", "lista/code_error_T2"} <= set(report.metrics)


def test_lista_refuses_a_mismatched_dictionary(tmp_path: Path, data_root: Path) -> None:
    coder = SparseCoding([1, 28, 28], n_atoms=16)
    from ebmrun.checkpoint import save_checkpoint
    save_checkpoint({"model": coder.state_dict(), "config": {},
                     "data_info": {"item_shape": [1, 28, 28]}}, tmp_path)
    model = LISTA([1, 28, 28], n_atoms=32, depths=[1])
    objective = LISTAObjective(model, Langevin(), UNIT, torch.Generator(),
                               dictionary=str(tmp_path))
    with pytest.raises(UserError, match="does not fit this LISTA"):
        objective.configure_optimizers(ADAM)
    objective.dictionary = str(tmp_path / "missing")
    with pytest.raises(UserError, match="checkpoint not found"):
        objective.configure_optimizers(ADAM)
