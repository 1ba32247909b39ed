"""Contrastive embedding: InfoNCE by hand, augmentations, the kNN energy bank, the linear
probe, a short real training whose InfoNCE loss falls, and task=eval's probe accuracy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ebmrun.build import build_components, validate_config
from ebmrun.models.contrastive import ContrastiveEncoder
from ebmrun.objectives.base import DataInfo
from ebmrun.objectives.contrastive import Augment, info_nce, linear_probe, scatter_image
from ebmrun.run import train

from conftest import compose_config, run_ok

MNIST = DataInfo((1, 28, 28), (-1.0, 1.0), (-1.0, 1.0))
TINY_CONTRASTIVE = ["model=contrastive", "device=cpu", "trainer.batch_size=32",
                    "trainer.log_every=2", "trainer.image_every=2", "trainer.ckpt_every=2",
                    "trainer.progress=false", "trainer.max_steps=4",
                    "model.net.conv_widths=[8,16,16]", "model.net.feature_dim=32",
                    "model.net.proj_dim=16", "model.net.bank_size=256"]


def test_info_nce_matches_hand_computation() -> None:
    # Two items, two views: z1 = (a, b), z2 = (a', b'). Cosines written out by hand.
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    tau = 0.5
    sims = {("a", "b"): 0.0, ("a", "a'"): 0.6, ("a", "b'"): 0.8, ("b", "a'"): 0.8,
            ("b", "b'"): 0.6, ("a'", "b'"): 0.96}
    sim = lambda p, q: sims.get((p, q), sims.get((q, p)))  # noqa: E731
    views, positive = ["a", "b", "a'", "b'"], {"a": "a'", "b": "b'", "a'": "a", "b'": "b"}
    expected = 0.0
    for i in views:
        denominator = sum(math.exp(sim(i, k) / tau) for k in views if k != i)
        expected -= math.log(math.exp(sim(i, positive[i]) / tau) / denominator) / 4
    loss, pos, neg, top1 = info_nce(z1, z2, tau)
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert pos.tolist() == pytest.approx([0.6, 0.6, 0.6, 0.6])
    # negatives of a, b, a', b': {b, b'}, {a, a'}, {b, b'}, {a, a'}
    assert neg.shape == (4, 2) and float(neg.mean()) == pytest.approx((2 * 0.0 + 4 * 0.8
                                                                      + 2 * 0.96) / 8)
    assert float(top1) == 0.0  # every view is closer to a negative than to its positive


def test_info_nce_is_low_when_views_agree_and_items_differ() -> None:
    z = torch.eye(8)
    loss, pos, _, top1 = info_nce(z, z, 0.1)
    assert float(top1) == 1.0 and pos.min() == pytest.approx(1.0)
    # 16 views: the positive logit 1/τ against 14 negatives at 0: −log(e^10 / (e^10 + 14))
    assert float(loss) == pytest.approx(-math.log(math.exp(10) / (math.exp(10) + 14)), rel=1e-4)


def test_augment_is_seeded_shaped_and_keeps_the_background() -> None:
    augment = Augment(MNIST, (0.5, 1.0), 10.0, 0.0)
    x = -torch.ones(4, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1.0
    a = augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, augment(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(a, augment(x, torch.Generator().manual_seed(1)))
    assert a.min() >= -1.0 - 1e-6 and a.max() <= 1.0 + 1e-6
    assert float(a[:, :, 0, 0].max()) == pytest.approx(-1.0)  # border stays background
    same = Augment(MNIST, (1.0, 1.0), 0.0, 0.0)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)  # full crop, no rotation: identity
    with pytest.raises(ValueError, match="crop_area"):
        Augment(MNIST, (0.0, 1.0), 0.0, 0.0)


def test_knn_energy_uses_the_bank() -> None:
    model = ContrastiveEncoder((2,), mlp_hidden=[8], feature_dim=8, proj_dim=4, bank_size=3)
    x = torch.randn(5, 2)
    assert torch.equal(model.energy(x), torch.zeros(5))  # empty bank
    model.remember(model.embed(x))  # 5 items into 3 slots: the last 3 stay
    assert int(model.bank_count) == 3
    torch.testing.assert_close(model.energy(x[2:]), -torch.ones(3))  # each is in the bank
    assert (model.energy(x) >= -1 - 1e-6).all()


def test_linear_probe_separates_separable_features() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (600,), generator=g)
    centres = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    h = centres[labels] + 0.3 * torch.randn(600, 4, generator=g)
    train_acc, test_acc = linear_probe(h[:400], labels[:400], h[400:], labels[400:])
    assert train_acc == 1.0 and test_acc == 1.0
    _, chance = linear_probe(h[:400], labels[:400], torch.randn(200, 4, generator=g),
                             labels[400:])
    assert chance < 0.6


def test_scatter_image_draws_the_points() -> None:
    image = scatter_image(torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.tensor([0, 3]), res=32)
    assert image.shape == (3, 32, 32) and (image < 1).any() and image.min() >= 0


def test_short_training_lowers_the_loss(tmp_path: Path, data_root: Path) -> None:
    cfg = compose_config([*TINY_CONTRASTIVE, "trainer.max_steps=40", "trainer.log_every=5",
                          "trainer.image_every=40", "trainer.ckpt_every=40"])
    validate_config(cfg)
    metrics = train(cfg, tmp_path)
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0,
                                                             "images": 0}).Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert metrics["loss"] < losses[0] - 0.5  # ln(63) = 4.14 at chance
    assert metrics["positive_similarity"] > metrics["negative_similarity"]
    assert {"similarity/positive", "similarity/negative"} <= set(events.Tags()["histograms"])
    assert {"images/views", "images/embedding_pca"} <= set(events.Tags()["images"])


def test_cli_eval_reports_the_linear_probe(tmp_path: Path, data_root: Path) -> None:
    run = tmp_path / "run"
    run_ok([*TINY_CONTRASTIVE, f"hydra.run.dir={run}"], tmp_path)
    run_ok(["task=eval", f"ckpt={run}", "device=cpu", "eval.max_test=500",
           "+model.objective.probe_train_items=2000", "eval.ood=[noise]",
           f"hydra.run.dir={tmp_path / 'eval'}"], tmp_path)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["contrastive/probe_train_items"] == 2000
    assert 0.5 < metrics["contrastive/linear_probe_acc"] <= 1.0  # chance is 0.1
    assert not any(k.startswith("samples/") for k in metrics)  # views are not samples
    assert (tmp_path / "eval" / "eval_embedding_pca.png").is_file()


def test_builds_for_vectors_and_refuses_other_shapes() -> None:
    cfg = compose_config(["model=contrastive", "device=cpu"])
    parts = build_components(cfg, DataInfo((2,), (-4.5, 4.5), (-4.5, 4.5)))
    out = parts.objective.training_step(torch.randn(16, 2))
    assert math.isfinite(float(out["loss"].detach()))
    with pytest.raises(ValueError, match=r"contrastive needs \(C, H, W\) images or \(D,\)"):
        ContrastiveEncoder((4, 4))
