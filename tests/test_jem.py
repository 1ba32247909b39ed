"""JEM: the classifier's energies, calibration, learning, the divergence guard, conditional
sampling, composition of energies and the replay buffer scored by task=eval."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ebmrun.build import build_components, data_info_of, load_data
from ebmrun.checkpoint import load_checkpoint
from ebmrun.composition import Term, block_labels, composed_energy
from ebmrun.config import merge_overrides
from ebmrun.errors import UserError
from ebmrun.evaluation import eval_task, evaluate_model
from ebmrun.metrics.calibration import expected_calibration_error
from ebmrun.models.analytic import GaussianEnergy
from ebmrun.models.jem import ClassifierEnergy
from ebmrun.objectives.base import DataInfo
from ebmrun.objectives.jem import JEM
from ebmrun.objectives.no_training import NoTraining
from ebmrun.run import train
from ebmrun.samplers.langevin import Langevin
from ebmrun.samplers.mala import MALA
from ebmrun.sampling import sample

from conftest import compose_config

# A small JEM that trains in seconds: narrow CNN, short chains, a small buffer.
SMALL = ["model=jem", "device=cpu", "trainer.progress=false", "trainer.batch_size=32",
         "trainer.log_every=5", "trainer.image_every=1000", "trainer.ckpt_every=1000",
         "model.net.conv_channels=[16,32,32,32]", "model.net.conv_hidden=64",
         "model.objective.buffer_size=256", "model.objective.sample_steps=5",
         "sampler.steps=3", "optim.lr=2e-3", "optim.betas=[0.9,0.999]"]


def test_energies_are_the_logits() -> None:
    torch.manual_seed(0)
    model = ClassifierEnergy((1, 28, 28), conv_channels=(4, 8, 8, 8), conv_hidden=16)
    x, y = torch.randn(6, 1, 28, 28), torch.tensor([0, 1, 2, 3, 9, 9])
    logits = model.logits(x)
    assert logits.shape == (6, 10)
    torch.testing.assert_close(model.energy(x), -torch.logsumexp(logits, 1))
    torch.testing.assert_close(model.class_energy(x, y), -logits[torch.arange(6), y])
    # label -1: that row's E(x) (what compose.labels and conditional_negatives use)
    torch.testing.assert_close(model.class_energy(x, torch.tensor([0, -1, 2, -1, 9, 9])),
                               torch.where(torch.tensor([1, 0, 1, 0, 1, 1], dtype=torch.bool),
                                           -logits[torch.arange(6), y], model.energy(x)))
    # p(y|x) = exp(-E(x,y)) / exp(-E(x)): the classifier's softmax
    torch.testing.assert_close((model.energy(x) - model.class_energy(x, y)).exp(),
                               logits.softmax(1)[torch.arange(6), y])


def test_ece_on_a_hand_made_example() -> None:
    """4 predictions in 2 of 15 bins: confidences 0.95, 0.95 (one right) and 0.55, 0.55
    (both right). Bin (14/15, 1]: |0.5 - 0.95| = 0.45; bin (8/15, 9/15]: |1 - 0.55| = 0.45;
    ECE = 2/4 * 0.45 + 2/4 * 0.45 = 0.45."""
    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.45, 0.55], [0.55, 0.45]])
    labels = torch.tensor([0, 1, 1, 0])
    assert expected_calibration_error(probs, labels, bins=15) == pytest.approx(0.45)
    # perfectly calibrated: 3 of 4 right at confidence 0.75 -> 0
    probs = torch.tensor([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, torch.tensor([0, 0, 0, 1])) == pytest.approx(0.0)
    # one bin holds everything: ECE = |accuracy - mean confidence| = |0.25 - 0.6|
    probs = torch.tensor([[0.6, 0.4]] * 4)
    assert expected_calibration_error(probs, torch.tensor([0, 1, 1, 1]), bins=1) == \
        pytest.approx(0.35)


def test_jem_learns_to_classify(tmp_path: Path) -> None:
    """100 steps of CE + SGLD p(x) on MNIST: the cross-entropy falls and the test accuracy
    (1,000 digits) is well above chance; eval reports accuracy, ECE and class-aware AUROC."""
    cfg = compose_config([*SMALL, "trainer.max_steps=100", "eval.max_test=1000",
                          "eval.sample_quality=false", "eval.ood=[noise]"])
    train(cfg, tmp_path)
    data = load_data(cfg)
    parts = build_components(cfg, data_info_of(data))
    parts.model.load_state_dict(load_checkpoint(tmp_path)["model"])
    report = evaluate_model(cfg, parts.objective, data, parts.device).metrics
    assert report["classifier/test_accuracy"] > 0.3, report  # chance: 0.1
    assert 0.0 <= report["classifier/ece"] < 0.4, report
    assert 0.0 <= report["ood/auroc_noise_class_energy"] <= 1.0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path)); events.Reload()
    ce = [e.value for e in events.Scalars("train/loss/cross_entropy")]
    assert max(ce[-3:]) < 0.85 * ce[0], ce


def test_guard_stops_a_diverging_jem_without_nan_weights(tmp_path: Path) -> None:
    """A huge learning rate blows the energies up; the guard (rollback, then stop) ends the
    run, and the checkpoint it leaves holds finite weights."""
    cfg = compose_config([*SMALL, "trainer.max_steps=30", "optim.lr=50.0",
                          "trainer.ckpt_every=5", "trainer.on_divergence=rollback",
                          "trainer.divergence.max_rollbacks=1",
                          "trainer.divergence.max_abs_energy=1e4"])
    with pytest.raises(UserError, match=r"diverged at step \d+ after 1 rollback"):
        train(cfg, tmp_path)
    ckpt = load_checkpoint(tmp_path)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_conditional_negatives_deal_labels_out_by_slot() -> None:
    """conditional_negatives=q: slots in periods of K + U (U = round(K (1 - q) / q)),
    position j < K runs on E(x, j), the rest on E(x); q = 0: every slot on E(x). Same random
    stream whatever q (same slots drawn, same restarts), different chains."""
    torch.manual_seed(0)
    model = ClassifierEnergy((1, 28, 28), conv_channels=(4, 8, 8, 8), conv_hidden=16)
    info = DataInfo((1, 28, 28), (-1.0, 1.0), (-1.0, 1.0))
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    slots = torch.tensor([0, 11, 22, 37, 39, 45])
    on_e_x = model.energy(x)
    expected = {0.0: on_e_x,
                1.0: model.class_energy(x, slots % 10),
                # period 20: positions 0, 11, 2, 17, 19, 5 -> labels 0, -, 2, -, -, 5
                0.5: torch.where(torch.tensor([1, 0, 1, 0, 0, 1], dtype=torch.bool),
                                 model.class_energy(x, torch.tensor([0, 9, 2, 9, 9, 5])),
                                 on_e_x)}
    chains, streams = {}, {}
    for q, energies in expected.items():
        sampler = Langevin(steps=3, step_size=10.0, noise_std=0.005, grad_clip=0.03)
        jem = JEM(model, sampler, info, torch.Generator().manual_seed(1), buffer_size=40,
                  conditional_negatives=q)
        torch.testing.assert_close(jem.chain_energy(slots)(x), energies)
        chains[q] = jem.negatives(16).x
        streams[q] = jem.generator.get_state()
    assert torch.equal(streams[0.0], streams[1.0]) and torch.equal(streams[0.0], streams[0.5])
    assert not torch.allclose(chains[0.0], chains[1.0])
    assert not torch.allclose(chains[0.5], chains[1.0])
    with pytest.raises(ValueError, match="conditional_negatives"):
        JEM(model, sampler, info, torch.Generator(), conditional_negatives=1.5)


def test_pictures_sort_the_chains_from_noise_by_a_label_drawn_from_p_y_given_x() -> None:
    """images/samples_by_label: the chains on E(x) in rows by y ~ p(y | x), no chains on
    E(x, k). A classifier sure of label 3 everywhere fills row 3 and leaves the rest grey."""
    torch.manual_seed(0)
    model = ClassifierEnergy((1, 28, 28), conv_channels=(4, 8, 8, 8), conv_hidden=16)
    info = DataInfo((1, 28, 28), (-1.0, 1.0), (-1.0, 1.0))
    jem = JEM(model, Langevin(steps=2, step_size=1.0, noise_std=0.005, grad_clip=0.03), info,
              torch.Generator().manual_seed(1), buffer_size=40)
    sure_of_3 = torch.full((10,), 50.0).index_fill_(0, torch.tensor([3]), 0.0)
    jem.class_energies = lambda x: sure_of_3.expand(len(x), 10)
    pictures = jem.visuals(torch.Generator().manual_seed(2))
    rows = pictures["samples_by_label"].reshape(10, 8, -1)
    assert pictures["samples_from_noise"].shape == (64, 1, 28, 28)
    assert (rows[3] != 0.0).any(dim=1).all()  # 8 chains of label 3 (grey is 0 on [-1, 1])
    assert (rows[torch.arange(10) != 3] == 0.0).all()
    assert torch.equal(rows[3], pictures["samples_from_noise"][:8].reshape(8, -1))


def test_conditional_labels_split_chains_into_blocks() -> None:
    assert block_labels([3], 4).tolist() == [3, 3, 3, 3]
    assert block_labels([0, 1, 2], 7).tolist() == [0, 0, 0, 1, 1, 1, 2]


def _gaussian(mean, cov) -> NoTraining:
    box = (-6.0, 6.0)
    return NoTraining(GaussianEnergy((2,), mean, cov), MALA(step_size=0.3, box=None),
                      DataInfo((2,), box, box), torch.Generator())


def test_sum_of_energies_samples_the_product_density() -> None:
    """E1 + E2 of two 2-D Gaussians is the product density N(m, S), S = (P1 + P2)^-1,
    m = S (P1 m1 + P2 m2): MALA on the composed energy matches its moments. Negation:
    2 E1 - E2 is again Gaussian, with precision 2 P1 - P2."""
    g1 = _gaussian([1.0, 0.0], [[1.0, 0.5], [0.5, 1.0]])
    g2 = _gaussian([-1.0, 2.0], [[0.5, 0.0], [0.0, 2.0]])
    for weights in ((1.0, 1.0), (2.0, -0.5)):
        p = [w * g.model.precision.double() for w, g in zip(weights, (g1, g2))]
        cov = torch.linalg.inv(p[0] + p[1])
        mean = cov @ (p[0] @ g1.model.mean.double() + p[1] @ g2.model.mean.double())
        energy = composed_energy([Term(g1, weights[0], None), Term(g2, weights[1], None)])
        generator = torch.Generator().manual_seed(0)
        x0 = torch.randn(2000, 2, generator=generator)
        x = MALA(step_size=0.3, adapt_steps=100, steps=400).sample(energy, x0, steps=400,
                                                         generator=generator).x.double()
        assert torch.allclose(x.mean(0), mean, atol=0.05), (weights, x.mean(0), mean)
        assert torch.allclose(x.T.cov(), cov, atol=0.06), (weights, x.T.cov(), cov)


def test_sample_label_and_compose(tmp_path: Path) -> None:
    """task=sample on a JEM checkpoint: sample.label=[1,7] writes the conditional grid and
    the evaluator's per-label accuracy; compose.labels=[1,7] the shares of both labels;
    compose.ckpts adds a second checkpoint's E(x) (here negated: 2 E(x, 1) - E(x))."""
    import json

    train(compose_config([*SMALL, "trainer.max_steps=4"]), tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run")
    for name, overrides in (("label", ["sample.n=20", "sample.label=[1,7]"]),
                            ("chains", ["sample.n=20", "sample.label=[1,7]",
                                        "sample.label_method=chains"]),
                            ("compose", ["sample.n=8", "compose.labels=[1,7]",
                                         "compose.weights=[1,0.5]"]),
                            ("two", ["sample.n=4", f"compose.ckpts=[{tmp_path / 'run'}]",
                                     "compose.labels=[1,-1]", "compose.weights=[2,-1]"])):
        overrides = ["task=sample", f"ckpt={tmp_path / 'run'}", "sample.steps=3", *overrides]
        cfg = merge_overrides(ckpt["config"], compose_config(overrides), overrides)
        (tmp_path / name).mkdir()
        sample(cfg, tmp_path / name, ckpt)
    for name, method in (("label", "rejection"), ("chains", "chains")):
        metrics = metrics_of(tmp_path / name)
        assert metrics["labels"] == [1, 7] and metrics["label_method"] == method
        assert {"conditional/accuracy_1", "conditional/accuracy_7", "conditional/accuracy"} <= \
            set(metrics)
        assert (tmp_path / name / "conditional_grid.png").is_file()
        assert torch.load(tmp_path / name / "samples.pt", weights_only=True).shape[0] == 20
    # rejection ran whole batches of p(x) chains (sample.batch_size) until both labels had 10
    assert metrics_of(tmp_path / "label")["conditional/chains_run"] % 500 == 0
    assert metrics_of(tmp_path / "label")["label_refine_steps"] == 30
    assert "conditional/chains_run" not in metrics_of(tmp_path / "chains")
    metrics = json.loads((tmp_path / "compose" / "metrics.json").read_text())
    assert metrics["compose"] == [{"weight": 1.0, "label": 1}, {"weight": 0.5, "label": 7}]
    assert 0.0 <= metrics["compose/share_1"] + metrics["compose/share_7"] <= 1.0
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["compose"] == [{"weight": 2.0, "label": 1}, {"weight": -1.0, "label": None}]


def metrics_of(run_dir: Path) -> dict:
    import json

    return json.loads((run_dir / "metrics.json").read_text())


def test_eval_scores_the_checkpoints_replay_buffer(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """task=eval of a JEM checkpoint scores its replay buffer beside the fresh samples
    (``buffer/*``, as for the deep EBM): the buffer saved in the checkpoint, not a new one.
    Plain cross-entropy (px_weight 0) runs no chains, so it has no buffer to score."""
    train(compose_config([*SMALL, "trainer.max_steps=3"]), tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run")
    scored, replay_samples = [], JEM.replay_samples

    def spy(self, n, generator):
        scored.append(self.buffer.data.clone())
        return replay_samples(self, n, generator)

    monkeypatch.setattr(JEM, "replay_samples", spy)
    small = ["eval.n_samples=16", "eval.max_test=64", "eval.sample_steps=1", "eval.ood=[]"]
    overrides = ["task=eval", f"ckpt={tmp_path / 'run'}", *small]
    cfg = merge_overrides(ckpt["config"], compose_config(overrides), overrides)
    (tmp_path / "eval").mkdir()
    metrics = eval_task(cfg, tmp_path / "eval", ckpt)
    assert len(scored) == 1 and torch.equal(scored[0], ckpt["objective"]["buffer"]["data"])
    assert metrics["buffer/n_samples"] == metrics["samples/n_samples"] == 16
    for key in ("buffer/frechet", "buffer/frechet_real_floor", "buffer/classes_present",
                "buffer/mean_confidence"):
        assert math.isfinite(metrics[key]), key
    assert metrics["buffer/frechet_over_floor"] == pytest.approx(
        metrics["buffer/frechet"] / metrics["buffer/frechet_real_floor"])
    assert metrics["buffer/frechet"] != metrics["samples/frechet"]

    cfg = compose_config([*SMALL, "model.objective.px_weight=0", *small])
    data = load_data(cfg)
    parts = build_components(cfg, data_info_of(data))
    metrics = evaluate_model(cfg, parts.objective, data, parts.device).metrics
    assert "samples/frechet" in metrics
    assert not any(k.startswith("buffer/") for k in metrics), sorted(metrics)


def test_refusals(tmp_path: Path) -> None:
    """Labels for a family without E(x, y), a label out of range, weights that do not fit."""
    train(compose_config([*SMALL, "trainer.max_steps=2"]), tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run")
    for overrides, message in ((["sample.label=10"], "label 10 is not a class"),
                               (["compose.labels=[1,2]", "compose.weights=[1]"],
                                "compose.weights has 1 weights for 2 energies"),
                               (["sample.label=1", "compose.labels=[1,2]"],
                                "ask for different samples")):
        cfg = merge_overrides(ckpt["config"], compose_config(overrides), overrides)
        with pytest.raises(UserError, match=message):
            sample(cfg, tmp_path / "out", ckpt)


def test_resume_continues_bit_identically(tmp_path: Path) -> None:
    """6 steps straight == 3 steps, then resume to 6: weights, EMA and replay buffer (the
    labels follow the resumed data order)."""
    small = [*SMALL, "trainer.ckpt_every=3", "optim.ema=0.9"]
    train(compose_config([*small, "trainer.max_steps=6"]), tmp_path / "straight")
    train(compose_config([*small, "trainer.max_steps=3"]), tmp_path / "split")
    ckpt = load_checkpoint(tmp_path / "split")
    resumed = merge_overrides(ckpt["config"], compose_config(
        [*small, "trainer.max_steps=6", f"resume={tmp_path / 'split'}"]),
        ["trainer.max_steps=6"])
    train(resumed, tmp_path / "split", resume_ckpt=ckpt)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert b["step"] == 6
    for part in ("model", "ema"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)
    assert torch.equal(a["objective"]["buffer"]["data"], b["objective"]["buffer"]["data"])
