"""The runner's optimisation: per-group clipping (EBGAN included), schedules from config,
the EMA of the weights for sampling, and one home for every default (YAML = schema)."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ebmrun.build import build_components, build_trained, optim_settings, validate_config
from ebmrun.checkpoint import load_checkpoint
from ebmrun.cli import CONFIG_DIR
from ebmrun.config import Config, merge_overrides
from ebmrun.errors import UserError
from ebmrun.objectives.base import DataInfo
from ebmrun.optimization import Schedule, Updater, group_settings
from ebmrun.run import train

from conftest import compose_config, run_ok


def _settings(**changes):
    """A parameter group's settings: the config defaults with ``changes``."""
    defaults = group_settings(compose_config(["trainer.grad_clip=null"]), "loss")
    return dataclasses.replace(defaults, **changes)

MNIST = DataInfo((1, 28, 28), (-1.0, 1.0), (-1.0, 1.0))
EBGAN = ["model=ebgan", "device=cpu", "model.net.arch=mlp", "model.net.mlp_gen_hidden=[32]",
         "model.net.mlp_enc_hidden=[16]", "model.net.mlp_dec_hidden=[16]", "optim.name=sgd",
         "model.objective.lr_d=1.0", "model.objective.lr_g=1.0"]


def _ebgan_grad_norms(overrides: list[str]) -> list[float]:
    """One runner step of a small EBGAN (SGD, lr 1); the gradient norm each group stepped."""
    cfg = compose_config(overrides)
    parts = build_components(cfg, MNIST)
    objective = parts.objective
    optimizers = objective.configure_optimizers(optim_settings(cfg))
    clips = [group_settings(cfg, group).grad_clip for group in objective.groups]
    before = [p.detach().clone() for p in parts.model.parameters()]
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    Updater(objective, optimizers, clips)(x, step=1)
    moved = [p.detach() - b for p, b in zip(parts.model.parameters(), before)]
    names = [n for n, _ in parts.model.named_parameters()]
    return [math.sqrt(sum(float(m.pow(2).sum()) for n, m in zip(names, moved)
                          if n.startswith(prefix)))
            for prefix in ("discriminator.", "generator.")]


def test_trainer_grad_clip_acts_on_both_ebgan_groups() -> None:
    # The family's default is no clipping (as before the runner owned EBGAN's steps) ...
    assert group_settings(compose_config(EBGAN), "d").grad_clip is None
    free = _ebgan_grad_norms(EBGAN)
    assert min(free) > 0.03, free
    # ... and trainer.grad_clip bounds the update of both networks (SGD, lr 1: the step is
    # the clipped gradient).
    clipped = _ebgan_grad_norms([*EBGAN, "trainer.grad_clip=0.01"])
    assert all(0.009 < norm <= 0.01 * (1 + 1e-4) for norm in clipped), clipped


def test_the_family_sets_the_default_budget_and_the_command_line_wins() -> None:
    """trainer.max_steps / batch_size default to the family's model.max_steps / batch_size
    (EBGAN's tuned 5,000 steps of 64; 2,000 of 128 for families that set none), so a typed
    `model=ebgan dataset=mnist` trains its recipe; trainer.* on the command line still wins."""
    ebgan, deep = compose_config(["model=ebgan"]), compose_config(["model=deep_ebm"])
    assert (ebgan.trainer.max_steps, ebgan.trainer.batch_size) == (5000, 64)
    assert (deep.trainer.max_steps, deep.trainer.batch_size) == (2000, 128)
    typed = compose_config(["model=ebgan", "trainer.max_steps=7", "trainer.batch_size=9"])
    assert (typed.trainer.max_steps, typed.trainer.batch_size) == (7, 9)
    assert compose_config(["model=ebgan", "model.max_steps=11"]).trainer.max_steps == 11
    timed = compose_config(["model=ebgan", "trainer.max_steps=null", "trainer.max_minutes=1"])
    assert timed.trainer.max_steps is None


def test_per_group_settings_and_their_errors() -> None:
    cfg = compose_config(["model=ebgan", "+model.optim.g.schedule=constant"])
    assert group_settings(cfg, "g").schedule == "constant"
    assert group_settings(cfg, "d").schedule == "warmup_cosine"  # EBGAN's family default
    assert group_settings(compose_config(["model=deep_ebm"]), "loss").schedule == "exponential"
    typed = compose_config(["model=ebgan", "optim.schedule=constant", "optim.ema=null"])
    assert group_settings(typed, "d").schedule == "constant" and typed.optim.ema is None
    bad = compose_config(["model=ebgan", "+model.optim.g.lr_dacay=0.5"])
    with pytest.raises(UserError, match="unknown key model.optim.g.lr_dacay"):
        group_settings(bad, "g")
    with pytest.raises(UserError, match=r"model.optim.lista.warmup=2 is invalid: it must be in"):
        group_settings(compose_config(["model=lista", "+model.optim.lista.warmup=2"]), "lista")
    with pytest.raises(UserError, match="this model has no parameter group 'x'"):
        validate_config(compose_config(["model=ebgan", "+model.optim.x.schedule=constant"]))
    with pytest.raises(UserError, match="warmup_cosine needs a budget"):
        Schedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
                 _settings(schedule="warmup_cosine"), math.inf)


def test_warmup_cosine_schedule_counts_from_the_groups_first_update() -> None:
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=1.0)
    schedule = Schedule(optimizer, _settings(schedule="warmup_cosine"), total_steps=140)
    lrs = []
    for step in range(41, 141):  # the group starts after 40 steps of something else
        schedule.before_update(step)
        lrs.append(optimizer.param_groups[0]["lr"])
    warmup = 5  # 5 % of the group's 100 updates
    assert lrs[0] == pytest.approx(0.04 + 0.96 / warmup)
    assert lrs[warmup - 1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[warmup - 1:], lrs[warmup:]))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    state = schedule.state_dict()
    again = Schedule(optimizer, _settings(schedule="warmup_cosine"), total_steps=140)
    again.load_state_dict(state)
    assert again.state_dict() == state


def test_warmup_cosine_over_a_wall_clock_budget_follows_the_time_spent() -> None:
    """A max_minutes-only run has no last step: the share of the time spent drives the lr."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    clock = {"used": 0.0}
    schedule = Schedule(optimizer, _settings(schedule="warmup_cosine", warmup=0.1), math.inf,
                        budget_used=lambda: clock["used"])
    lrs = {}
    for step, used in enumerate([0.05, 0.1, 0.55, 1.0, 1.3], start=1):
        clock["used"] = used
        schedule.before_update(step)
        lrs[used] = optimizer.param_groups[0]["lr"]
    assert lrs[0.05] == pytest.approx(2.0 * (0.04 + 0.96 * 0.5))  # half-way up the warm-up
    assert lrs[0.1] == pytest.approx(2.0)
    assert lrs[0.55] == pytest.approx(1.0)  # half-way down the cosine
    assert lrs[1.0] == pytest.approx(0.0, abs=1e-12) and lrs[1.3] == lrs[1.0]


def test_a_time_budget_run_anneals_to_zero_by_its_end(tmp_path) -> None:
    metrics = train(compose_config([*EBGAN, "trainer.max_steps=null", "trainer.max_minutes=0.05",
                                    "optim.schedule=warmup_cosine"]), tmp_path)
    assert metrics["steps"] >= 1
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    # Base lr 1.0 (EBGAN above); the last update ran at the time share just under 1
    # (< 0.1 holds while a step takes under 20 % of the 3 s budget).
    assert all(g["lr"] < 0.1 for opt in ckpt["optimizers"] for g in opt["param_groups"])


@pytest.mark.parametrize("model", ["deep_ebm", "vae"])
def test_warmup_cosine_is_a_config_choice_for_any_family(model: str) -> None:
    cfg = compose_config([f"model={model}", "optim.schedule=warmup_cosine"])
    assert all(group_settings(cfg, g).schedule == "warmup_cosine" for g in ("loss",))


def test_an_ema_run_samples_from_the_ema_weights(tmp_path: Path) -> None:
    cfg = compose_config(["model=vae", "device=cpu", "device.threads=1", "trainer.max_steps=6",
                          "trainer.batch_size=16", "trainer.log_every=3",
                          "trainer.image_every=3", "trainer.ckpt_every=3",
                          "trainer.progress=false", "model.net.hidden=[32]", "model.net.z_dim=4",
                          "optim.ema=0.5"])
    train(cfg, tmp_path)
    ckpt = load_checkpoint(tmp_path)
    raw, ema = ckpt["model"], ckpt["ema"]
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)  # the average lags the weights
    parts, info = build_trained(cfg, ckpt)  # task=sample / eval load the EMA weights
    for key, value in parts.model.state_dict().items():
        torch.testing.assert_close(value, ema[key])
    # The run's final samples were drawn with the EMA weights too.
    generator = torch.Generator().manual_seed(cfg.seed)
    again = parts.objective.generate(100, generator=generator, snapshot_every=32).x
    torch.testing.assert_close(torch.load(tmp_path / "samples.pt").float(), again.float())


def test_ema_decays_script_keeps_the_plain_runs_ema_bit_for_bit(tmp_path: Path) -> None:
    """scripts/ema_decays.py trains exactly the plain run and its kept average of decay d is
    ``optim.ema=d``'s, so the README's EMA table compares decays on one trajectory."""
    small = ["model=vae", "device=cpu", "device.threads=1", "trainer.max_steps=6",
             "trainer.batch_size=16", "trainer.progress=false", "model.net.hidden=[32]",
             "model.net.z_dim=4"]
    script = Path(__file__).resolve().parents[1] / "scripts" / "ema_decays.py"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kept = subprocess.run([sys.executable, str(script), "--decays", "0.5", "0.9", "--at", "6",
                           "--", *small, f"hydra.run.dir={tmp_path / 'kept'}"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert kept.returncode == 0, kept.stderr[-2000:]
    run_ok([*small, "optim.ema=0.5", f"hydra.run.dir={tmp_path / 'plain'}"],
           cwd=tmp_path)
    plain = load_checkpoint(tmp_path / "plain")
    half = load_checkpoint(tmp_path / "kept" / "ema_0.5_step6.pt")
    live = load_checkpoint(tmp_path / "kept" / "live_step6.pt")
    for key in plain["model"]:
        assert torch.equal(half["model"][key], plain["model"][key])
        assert torch.equal(live["model"][key], plain["model"][key])
        assert torch.equal(half["ema"][key], plain["ema"][key])
    assert half["config"]["optim"]["ema"] == 0.5 and "ema" not in live
    other = load_checkpoint(tmp_path / "kept" / "ema_0.9_step6.pt")["ema"]
    assert any(not torch.equal(other[k], half["ema"][k]) for k in other)


@pytest.mark.parametrize("fused", [True, False])
def test_optim_fused_reaches_every_adam(fused: bool) -> None:
    for overrides in (["model=deep_ebm"], EBGAN[:-3], ["model=vae"]):
        cfg = compose_config([*overrides, "device=cpu", f"optim.fused={fused}"])
        parts = build_components(cfg, MNIST)
        optimizers = parts.objective.configure_optimizers(optim_settings(cfg))
        assert [bool(o.defaults["fused"]) for o in optimizers] == [fused] * len(optimizers)


def test_a_vae_checkpoint_that_saved_objective_fused_still_loads() -> None:
    """VAE runs saved ``model.objective.fused`` before it became ``optim.fused``."""
    saved = OmegaConf.to_container(compose_config(["model=vae", "device=cpu"]), resolve=True)
    saved["model"]["objective"]["fused"] = False
    del saved["optim"]["fused"]
    cfg = merge_overrides(saved, compose_config(["task=sample"]), ["task=sample"])
    assert "fused" not in cfg.model.objective and cfg.optim.fused is False
    assert "fused" in saved["model"]["objective"]  # the checkpoint's own dict is left alone
    build_components(cfg, MNIST)  # the VAE objective no longer takes `fused`


def test_schema_defaults_and_the_yaml_agree() -> None:
    """One home per default: every value conf/config.yaml sets for a schema group equals
    the dataclass default, and every dataclass field is in the YAML."""
    yaml = OmegaConf.load(Path(CONFIG_DIR) / "config.yaml")
    schema = Config()
    for group in ("trainer", "optim", "sample", "eval", "sweep"):
        defaults = dataclasses.asdict(getattr(schema, group))
        written = OmegaConf.to_container(yaml[group], resolve=False)
        assert set(written) == set(defaults), group
        for key, value in written.items():
            assert value == defaults[key], f"{group}.{key}: yaml {value!r} vs schema {defaults[key]!r}"
