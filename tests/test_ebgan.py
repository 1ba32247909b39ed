"""EBGAN: the pulling-away term, the margin hinge, the energy contract, a tiny end-to-end
run, sampling with and without latent refinement, and the objective's saved state."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ebmrun.build import build_components, optim_settings, validate_config
from ebmrun.checkpoint import load_checkpoint
from ebmrun.models.ebgan import EBGAN, ToRange
from ebmrun.objectives.base import DataInfo
from ebmrun.objectives.ebgan import (EBGANObjective, margin_loss, pulling_away_term,
                                     with_box)
from ebmrun.run import train, training_step
from ebmrun.samplers.langevin import Langevin

from conftest import SMALL_EBGAN_NETS, compose_config, run_ok

MNIST = DataInfo((1, 28, 28), (-1.0, 1.0), (-1.0, 1.0))
TINY_EBGAN = ["model=ebgan", "device=cpu", "trainer.max_steps=4", "trainer.batch_size=16",
              "trainer.log_every=2", "trainer.image_every=2", "trainer.ckpt_every=2",
              "trainer.progress=false", "sampler.steps=3"]


# ---- pulling-away term -------------------------------------------------------------------

def test_pulling_away_term_matches_hand_computation() -> None:
    # cos(s1, s2) = 1/√2, cos(s1, s3) = 0, cos(s2, s3) = 2/(√2·2) = 1/√2; squared: ½, 0, ½.
    # Each unordered pair counts twice among the N(N−1) = 6 ordered pairs i ≠ j.
    codes = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    expected = 2 * (0.5 + 0.0 + 0.5) / 6
    assert pulling_away_term(codes).item() == pytest.approx(expected, abs=1e-6)


def test_pulling_away_term_extremes() -> None:
    assert pulling_away_term(torch.eye(5) * 3.0).item() == pytest.approx(0.0, abs=1e-7)
    same = torch.tensor([0.3, -1.2, 2.0]).repeat(4, 1)
    assert pulling_away_term(same).item() == pytest.approx(1.0, abs=1e-6)
    # Antipodal codes are as collapsed as identical ones: the square keeps them from
    # cancelling (the unsquared version scores this batch −1/3).
    antipodal = torch.tensor([[1.0, 2.0], [-1.0, -2.0], [2.0, 4.0]])
    assert pulling_away_term(antipodal).item() == pytest.approx(1.0, abs=1e-6)


def test_pulling_away_term_ignores_code_scale_and_batch_norms() -> None:
    torch.manual_seed(0)
    codes = torch.randn(16, 8)
    scaled = codes * torch.rand(16, 1).add(0.1) * 100  # per-row scale: cosines unchanged
    torch.testing.assert_close(pulling_away_term(scaled), pulling_away_term(codes))
    assert 0.0 <= pulling_away_term(codes).item() <= 1.0


# ---- margin hinge ------------------------------------------------------------------------

def test_margin_hinge_only_fakes_inside_the_margin_count() -> None:
    e_real = torch.tensor([0.1, 0.3], requires_grad=True)
    e_fake = torch.tensor([1.5, 0.4, 1.0, 0.9], requires_grad=True)
    loss, active = margin_loss(e_real, e_fake, margin=1.0)
    # mean D(x) = 0.2; hinge terms [0, 0.6, 0, 0.1] -> mean 0.175
    assert loss.item() == pytest.approx(0.2 + 0.175, abs=1e-6)
    assert active.tolist() == [False, True, False, True]
    loss.backward()
    # fakes at or above m add no loss and no gradient; inside, d/dE (m − E)/B = −1/B
    assert e_fake.grad.tolist() == pytest.approx([0.0, -0.25, 0.0, -0.25])
    assert e_real.grad.tolist() == pytest.approx([0.5, 0.5])


def test_margin_hinge_all_fakes_outside_is_zero() -> None:
    loss, active = margin_loss(torch.zeros(3), torch.full((3,), 2.0), margin=1.0)
    assert loss.item() == 0.0 and not active.any()


# ---- model -------------------------------------------------------------------------------

@pytest.mark.parametrize(("arch", "shape"), [("conv", (1, 28, 28)), ("conv", (3, 32, 32)),
                                             ("mlp", (1, 28, 28)), ("mlp", (2,))])
def test_energy_shape_and_output_ranges(arch: str, shape: tuple) -> None:
    torch.manual_seed(0)
    model = EBGAN(shape, arch=arch, z_dim=8, code_dim=6, mlp_gen_hidden=[32],
                  mlp_enc_hidden=[32], mlp_dec_hidden=[32])
    x = torch.rand(5, *shape) * 2 - 1
    energy = model.energy(x)
    assert energy.shape == (5,) and torch.isfinite(energy).all() and (energy >= 0).all()
    recon, code = model.reconstruct(x)
    assert recon.shape == x.shape and code.shape == (5, 6)
    assert model.encode(x).shape == (5, 6)
    fake = model.generate(torch.randn(5, 8) * 10)  # large z: outputs saturate, stay in range
    assert fake.shape == (5, *shape)
    for out in (recon, fake):
        assert out.min() >= -1.0 and out.max() <= 1.0
    # the energy is the per-sample MEAN squared reconstruction error
    torch.testing.assert_close(energy, (recon - x).pow(2).flatten(1).mean(1))


def test_custom_value_range_is_reachable() -> None:
    ends = ToRange(0.0, 3.0)(torch.tensor([-50.0, 0.0, 50.0]))
    torch.testing.assert_close(ends, torch.tensor([0.0, 1.5, 3.0]))  # both ends reachable
    model = EBGAN((2,), arch="mlp", z_dim=4, value_range=[0.0, 3.0], mlp_gen_hidden=[16])
    x = torch.rand(64, 2) * 3
    for out in (model.generate(torch.randn(64, 4)), model.reconstruct(x)[0]):
        assert out.min() >= 0.0 and out.max() <= 3.0


def test_conv_needs_images_and_unknown_arch_is_refused() -> None:
    with pytest.raises(ValueError, match="arch=conv needs .*images.*arch=mlp"):
        EBGAN((2,))
    with pytest.raises(ValueError, match="unknown ebgan arch 'resnet'"):
        EBGAN((1, 28, 28), arch="resnet")


def test_decoder_range_must_cover_data_range() -> None:
    model = EBGAN((1, 28, 28), value_range=[0.0, 1.0])
    with pytest.raises(ValueError, match=r"model.net.value_range=\[-1.0,1.0\]"):
        EBGANObjective(model, Langevin(), MNIST, torch.Generator())


# ---- training, sampling, state -----------------------------------------------------------

def test_tiny_training_run_logs_everything(tmp_path: Path, data_root: Path) -> None:
    cfg = compose_config(TINY_EBGAN)
    validate_config(cfg)
    metrics = train(cfg, tmp_path)
    assert metrics["steps"] == 4
    for key in ("loss", "loss_d", "loss_g", "energy_real", "energy_fake", "hinge_active", "pt"):
        assert math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["hinge_active"] <= 1.0
    ckpt = load_checkpoint(tmp_path)
    assert len(ckpt["optimizers"]) == 2 and ckpt["objective"]["fixed_z"].shape == (
        64, ckpt["config"]["model"]["net"]["z_dim"])
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload()
    images = set(events.Tags()["images"])
    assert {"images/samples_fixed_z", "images/reconstruction_real",
            "images/reconstruction_fake"} <= images
    assert {"train/energy/data", "train/energy/samples", "train/energy/hinge_active",
            "train/loss/pulling_away"} <= set(events.Tags()["scalars"])


def _objective(refine: bool, prior: str = "normal") -> EBGANObjective:
    cfg = compose_config(["model=ebgan", "device=cpu", f"model.objective.prior={prior}",
                          f"model.objective.latent_refine={str(refine).lower()}"])
    return build_components(cfg, MNIST).objective


@pytest.mark.parametrize(("refine", "prior"), [(False, "normal"), (True, "normal"),
                                               (True, "uniform")])
def test_generate_shape_and_range(refine: bool, prior: str) -> None:
    objective = _objective(refine, prior)
    model = objective.model
    model.train()
    result = objective.generate(6, steps=4, generator=torch.Generator().manual_seed(0),
                                snapshot_every=2)
    assert result.x.shape == (6, 1, 28, 28)
    assert result.x.min() >= -1.0 and result.x.max() <= 1.0
    assert all(p.grad is None for p in model.parameters()) and model.training
    if refine:  # the latent chain comes back decoded: images, one snapshot per 2 steps
        assert [snap.shape for snap in result.chain] == [(6, 1, 28, 28)] * 3
        assert result.stats["energy"].shape == (4,)


def test_latent_refinement_moves_towards_lower_latent_energy() -> None:
    objective = _objective(True)
    objective.sampler = Langevin(step_size=0.05, noise_std=0.0, grad_clip=None, steps=20,
                                 box=[-1.0, 1.0])
    z = objective.draw_z(8, torch.Generator().manual_seed(1)) * 3  # far out: high prior energy
    refined = with_box(objective.sampler, None).sample(objective.latent_energy, z).x
    with torch.no_grad():
        assert objective.latent_energy(refined).mean() < objective.latent_energy(z).mean()
    assert refined.abs().max() > 1.0  # the data box [-1, 1] did not clamp the latents


def test_family_default_refines_latents_with_plain_langevin() -> None:
    """model=ebgan samples through latent refinement by default, and its sampler is the
    latent one (exact noise sqrt(2 eps), no gradient clamp), not the deep EBM's pixel
    Langevin, whose clamped steps of 10 would throw z far outside the prior."""
    objective = build_components(compose_config(["model=ebgan", "device=cpu"]), MNIST).objective
    sampler = objective.sampler
    assert objective.latent_refine and isinstance(sampler, Langevin)
    assert sampler.step_size == pytest.approx(1e-3) and sampler.grad_clip is None
    assert sampler.steps == 30
    assert sampler.noise_std == pytest.approx(math.sqrt(2e-3))
    assert sampler.autocast is None  # float32: the same refinement on every CPU
    plain = build_components(compose_config(["model=ebgan", "device=cpu",
                                             "model.objective.latent_refine=false"]),
                             MNIST).objective
    generator = torch.Generator().manual_seed(0)
    refined = objective.generate(4, steps=3, generator=generator)
    assert refined.stats["energy"].shape == (3,)  # the latent chain ran its 3 steps
    assert not plain.generate(4, generator=torch.Generator().manual_seed(0)).stats  # G(z) only


def test_with_box_leaves_the_configured_sampler_alone() -> None:
    sampler = Langevin(box=[-1.0, 1.0])
    assert with_box(sampler, None).box is None and sampler.box == (-1.0, 1.0)


def test_objective_state_round_trips_fixed_z() -> None:
    first, second = _objective(False), _objective(False)
    first.fixed_z = torch.randn(first.fixed_z.shape, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(first.fixed_z, second.fixed_z)
    second.load_state_dict(first.state_dict())
    assert torch.equal(first.fixed_z, second.fixed_z)
    pictures = second.visuals(torch.Generator())
    assert pictures["samples_fixed_z"].shape == (64, 1, 28, 28)


def test_family_keys_apply_to_a_saved_run_without_plus(tmp_path: Path) -> None:
    """ckpt=/resume= compose with the checkpoint's own model, so EBGAN-only keys need no
    `+` (the old `+key` spelling keeps working)."""
    run = tmp_path / "run"
    run_ok([*TINY_EBGAN, *SMALL_EBGAN_NETS, f"hydra.run.dir={run}"], tmp_path)
    for i, refine in enumerate(["model.objective.latent_refine=true",
                                "+model.objective.latent_refine=true"]):
        out = tmp_path / f"sample{i}"
        run_ok(["task=sample", f"ckpt={run}", refine, "sample.n=4", "sampler.steps=2",
                "sample.snapshot_every=1", f"hydra.run.dir={out}"], tmp_path)
        assert torch.load(out / "samples.pt", weights_only=True).shape == (4, 1, 28, 28)
        assert (out / "chain.png").is_file()  # only latent refinement makes a chain
    run_ok([f"resume={run}", "model.objective.margin=0.5", "trainer.max_steps=6"], tmp_path)
    ckpt = load_checkpoint(run)
    assert ckpt["step"] == 6 and ckpt["config"]["model"]["objective"]["margin"] == 0.5


# ---- recipe options (issue 14: the short-script recipe and its ablations) ----------------

INFOGAN = dict(z_dim=62, gen_fc=[1024], gen_channels=[128, 64], disc_channels=[64],
               disc_norm=True, disc_act="relu", decoder_out="linear")


def test_infogan_shaped_nets() -> None:
    model = EBGAN((1, 28, 28), **INFOGAN)
    layers = [type(m).__name__ for m in model.generator]
    assert layers[:6] == ["Linear", "BatchNorm1d", "ReLU"] * 2
    assert model.generator[0].out_features == 1024 and model.generator[3].out_features == 6272
    assert model.batch_dependent_energy and not EBGAN((1, 28, 28)).batch_dependent_energy
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    recon, code = model.reconstruct(x)
    assert recon.shape == x.shape and code.shape == (4, 32)
    assert model.generate(torch.randn(4, 62)).shape == x.shape
    with pytest.raises(ValueError, match="unknown ebgan init 'xavier'"):
        EBGAN((1, 28, 28), init="xavier")


def test_dcgan_init_draws_small_weights_and_zero_biases() -> None:
    torch.manual_seed(0)
    model = EBGAN((1, 28, 28), init="dcgan", **INFOGAN)
    big = model.generator[3]  # Linear 1024 -> 6272: enough weights for a tight std
    assert big.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert model.discriminator.encoder[0].bias.abs().max().item() == 0.0
    default = EBGAN((1, 28, 28), **INFOGAN).generator[3].weight.std().item()
    assert default == pytest.approx(1 / math.sqrt(3 * 1024), rel=0.05)  # kaiming-uniform(√5)


def test_target_grad_false_detaches_only_the_target() -> None:
    torch.manual_seed(0)
    exact, detached = EBGAN((1, 28, 28)), EBGAN((1, 28, 28), target_grad=False)
    detached.load_state_dict(exact.state_dict())
    x = (torch.rand(3, 1, 28, 28) * 2 - 1).requires_grad_()
    e_exact, e_det = exact.energy(x), detached.energy(x)
    torch.testing.assert_close(e_exact, e_det)  # the same energy values
    g_exact, = torch.autograd.grad(e_exact.sum(), x)
    g_det, = torch.autograd.grad(e_det.sum(), x)
    recon, _ = exact.reconstruct(x)
    # the exact gradient adds ∂/∂x of the target term: −2 (recon − x) / D per pixel
    torch.testing.assert_close(g_exact - g_det, -2 * (recon - x).detach() / x[0].numel())


def _step_counting_generator_calls(fresh_z: bool, disc_norm: bool) -> tuple[int, dict]:
    cfg = compose_config(["model=ebgan", "device=cpu", f"model.objective.fresh_z={fresh_z}",
                          f"model.net.disc_norm={disc_norm}"])
    objective = build_components(cfg, MNIST).objective
    optimizers = objective.configure_optimizers(optim_settings(cfg))
    calls = []
    objective.model.generator.register_forward_hook(lambda *_: calls.append(1))
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    before = objective.model.energy(x).mean() if disc_norm else None
    out = training_step(objective, optimizers, x, None)
    return len(calls), {"out": out, "before": before}


@pytest.mark.parametrize("fresh_z", [False, True])
def test_fresh_z_draws_new_latents_for_the_generator_step(fresh_z: bool) -> None:
    calls, _ = _step_counting_generator_calls(fresh_z, disc_norm=False)
    assert calls == (2 if fresh_z else 1)


def test_batchnorm_discriminator_sees_real_and_fake_batches_apart() -> None:
    torch.manual_seed(0)
    _, got = _step_counting_generator_calls(False, disc_norm=True)
    # energy_real is D's energy of the real batch alone (its own BatchNorm statistics),
    # not of the real half of a real+fake batch.
    assert got["out"]["energy_real"].item() == pytest.approx(got["before"].item(), rel=1e-5)


# ---- the collapse warning ------------------------------------------------------------------

def test_health_warning_names_a_collapsed_generator_only() -> None:
    objective = _objective(refine=False)
    message = objective.health_warning({"pt": 0.995, "hinge_active": 0.0, "loss": 1.0})
    assert message is not None and "collapsed" in message and "seed=" in message
    # Windows of healthy measured runs: codes nearly parallel but fakes still inside the
    # margin, or no fake inside but varied codes; and a window without the two metrics.
    for window in ({"pt": 0.999, "hinge_active": 0.2}, {"pt": 0.91, "hinge_active": 0.0},
                   {"loss": 1.0}):
        assert objective.health_warning(window) is None, window


def test_the_runner_prints_a_health_warning_once(tmp_path: Path, data_root: Path,
                                                 capsys, monkeypatch) -> None:
    monkeypatch.setattr(EBGANObjective, "health_warning",
                        lambda self, window: f"test collapse, pt={window['pt']:.2f}")
    metrics = train(compose_config([*TINY_EBGAN, "trainer.health_restarts=0"]), tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert len(saved["warnings"]) == 1 and saved["warnings"] == metrics["warnings"]
    assert saved["warnings"][0].startswith("step 2: test collapse, pt=")
    err = capsys.readouterr().err
    assert err.count("ebmrun: warning:") == 1 and "ebmrun: warning: step 2: test collapse" in err
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0}).Reload()
    assert "warnings/text_summary" in events.Tags()["tensors"]
    # Resumed, the run keeps its warning and does not print it again.
    resumed = train(compose_config([*TINY_EBGAN, "trainer.max_steps=6",
                                    "trainer.health_restarts=0"]),
                    tmp_path, resume_ckpt=load_checkpoint(tmp_path))
    assert resumed["steps"] == 6 and resumed["warnings"] == metrics["warnings"]
    assert "ebmrun: warning:" not in capsys.readouterr().err


def _warn_first_calls(monkeypatch, calls: int) -> None:
    """EBGAN's health watch names a collapse at its first ``calls`` checks, then none."""
    seen = []

    def warning(self, window):
        seen.append(1)
        return "test collapse" if len(seen) <= calls else None

    monkeypatch.setattr(EBGANObjective, "health_warning", warning)


def test_a_flagged_run_restarts_as_the_next_seed(tmp_path: Path, data_root: Path, capsys,
                                                 monkeypatch) -> None:
    """The family default (health_restarts: 2): the attempt flagged at step 2 is set aside,
    the run trains again from step 0 as seed 1,000,000 and ends exactly as that seed alone."""
    _warn_first_calls(monkeypatch, 1)
    metrics = train(compose_config(TINY_EBGAN), tmp_path / "run")
    run = tmp_path / "run"
    assert metrics["steps"] == 4 and metrics["restarts"] == 1
    (line,) = metrics["warnings"]
    assert line.startswith("step 2: test collapse; restarting from a fresh initialisation as "
                           "seed=1000000 (restart 1 of 2;")
    assert capsys.readouterr().err.count("ebmrun: warning:") == 1
    aside = run / "restarted" / "seed_0"
    assert "seed: 0" in (aside / "config.yaml").read_text()
    assert load_checkpoint(aside)["step"] == 2 and list(aside.glob("events.out.tfevents*"))
    assert "seed: 1000000" in (run / "config.yaml").read_text()
    ckpt = load_checkpoint(run)
    assert ckpt["restarts"] == 1 and ckpt["warnings"] == [line]
    assert json.loads((run / "metrics.json").read_text())["restarts"] == 1
    # The Text tab of the attempt that finished says why it exists.
    events = EventAccumulator(str(run), size_guidance={"tensors": 0}).Reload()
    assert "warnings/text_summary" in events.Tags()["tensors"]
    # seed=1000000 alone trains the same weights, bit for bit.
    _warn_first_calls(monkeypatch, 0)
    alone = tmp_path / "alone"
    train(compose_config([*TINY_EBGAN, "seed=1000000"]), alone)
    for key, value in load_checkpoint(alone)["model"].items():
        assert torch.equal(value, ckpt["model"][key]), key
    # A sweep resumes a job with its own config (seed 0): the attempt keeps its seed.
    resumed = train(compose_config([*TINY_EBGAN, "trainer.max_steps=6"]), run,
                    resume_ckpt=ckpt)
    assert resumed["steps"] == 6 and resumed["restarts"] == 1 and resumed["warnings"] == [line]
    assert "seed: 1000000" in (run / "config.yaml").read_text()


def test_a_run_out_of_restarts_warns_and_goes_on(tmp_path: Path, data_root: Path,
                                                 monkeypatch) -> None:
    _warn_first_calls(monkeypatch, 99)
    metrics = train(compose_config([*TINY_EBGAN, "trainer.health_restarts=1"]), tmp_path)
    assert metrics["steps"] == 4 and metrics["restarts"] == 1
    first, last = metrics["warnings"]
    assert "seed=1000000 (restart 1 of 1;" in first
    assert last == "step 2: test collapse"  # no restart left: the run goes on
    assert "seed: 1000000" in (tmp_path / "config.yaml").read_text()
    assert sorted(p.name for p in (tmp_path / "restarted").iterdir()) == ["seed_0"]
