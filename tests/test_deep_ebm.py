"""Deep EBM: energy contract, the CD objective learns, resume is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ebmrun.build import build_components, load_data, validate_config
from ebmrun.checkpoint import load_checkpoint
from ebmrun.config import merge_overrides
from ebmrun.models.deep_ebm import DeepEnergy
from ebmrun.objectives.base import DataInfo
from ebmrun.run import train

from conftest import TINY, compose_config


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (2,)])
def test_energy_shape_and_finite(shape: tuple) -> None:
    model = DeepEnergy(shape)
    energy = model.energy(torch.randn(5, *shape))
    assert energy.shape == (5,) and torch.isfinite(energy).all()


def test_channels_last_and_spectral_norm_give_same_interface() -> None:
    torch.manual_seed(0)
    plain = DeepEnergy((1, 28, 28))
    fast = DeepEnergy((1, 28, 28), channels_last=True)
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(plain.energy(x), fast.energy(x), rtol=1e-4, atol=1e-5)
    assert DeepEnergy((1, 28, 28), spectral_norm=True).energy(x).shape == (4,)


def test_sampling_never_touches_parameter_state() -> None:
    cfg = compose_config(["device=cpu", "sampler.steps=5"])
    box = (-1.0, 1.0)
    parts = build_components(cfg, DataInfo((1, 28, 28), box, box))
    parts.model.train()
    flags = [p.requires_grad for p in parts.model.parameters()]
    result = parts.objective.generate(4, steps=5, generator=torch.Generator().manual_seed(0))
    assert all(p.grad is None for p in parts.model.parameters())
    assert [p.requires_grad for p in parts.model.parameters()] == flags
    assert parts.model.training
    assert result.x.shape == (4, 1, 28, 28) and result.x.abs().max() <= 1.0


def test_cd_training_separates_data_from_noise(tmp_path: Path, data_root: Path) -> None:
    """After 60 short CD steps on MNIST, real test digits get clearly lower energy than
    uniform noise (an untrained network does not separate them)."""
    cfg = compose_config(["device=cpu", "trainer.max_steps=60", "trainer.batch_size=64",
                          "trainer.progress=false", "trainer.image_every=1000",
                          "trainer.ckpt_every=1000", "sampler.steps=10",
                          "model.objective.buffer_size=512", "optim.lr=1e-3"])
    validate_config(cfg)
    data = load_data(cfg)
    metrics = train(cfg, tmp_path)
    parts = build_components(cfg, DataInfo(data.item_shape, data.value_range, data.box))
    parts.model.load_state_dict(load_checkpoint(tmp_path)["model"])
    test_x = data.to_float(data.test[:256])
    noise = torch.rand_like(test_x) * 2 - 1
    with torch.no_grad():
        gap = parts.model.energy(noise).mean() - parts.model.energy(test_x).mean()
    assert metrics["steps"] == 60
    assert gap > 0.5, f"energy(noise) - energy(data) = {gap:.3f}"


def _params(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir)["model"]


def test_resume_continues_bit_identically(tmp_path: Path, data_root: Path) -> None:
    """6 steps straight == 3 steps, then resume to 6 (params, buffer, step), with the
    default sampler (autocast: auto)."""
    overrides = [o for o in TINY if not o.startswith("trainer.max_steps")]
    straight = compose_config([*overrides, "trainer.max_steps=6"])
    train(straight, tmp_path / "straight")

    first = compose_config([*overrides, "trainer.max_steps=3"])
    train(first, tmp_path / "split")
    ckpt = load_checkpoint(tmp_path / "split")
    assert ckpt["step"] == 3
    resumed = merge_overrides(ckpt["config"], compose_config(
        [*overrides, "trainer.max_steps=6", f"resume={tmp_path / 'split'}"]),
        ["trainer.max_steps=6"])
    metrics = train(resumed, tmp_path / "split", resume_ckpt=ckpt)
    assert metrics["steps"] == 6
    a, b = _params(tmp_path / "straight"), _params(tmp_path / "split")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    buf_a = load_checkpoint(tmp_path / "straight")["objective"]["buffer"]["data"]
    buf_b = load_checkpoint(tmp_path / "split")["objective"]["buffer"]["data"]
    assert torch.equal(buf_a, buf_b)


@pytest.mark.parametrize(("kernel", "padding", "channels", "size"),
                         [(5, 4, 1, 28), (5, 4, 3, 32), (3, 1, 16, 16), (4, 1, 2, 9)])
def test_polyphase_conv_matches_conv2d(kernel: int, padding: int, channels: int, size: int
                                       ) -> None:
    from ebmrun.models.polyphase_conv import PolyphaseConv2d

    torch.manual_seed(0)
    ref = torch.nn.Conv2d(channels, 8, kernel, stride=2, padding=padding)
    fast = PolyphaseConv2d(channels, 8, kernel, padding=padding)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(5, channels, size, size, requires_grad=True)
    out_ref, out_fast = ref(x), fast(x)
    torch.testing.assert_close(out_fast, out_ref)
    grad_out = torch.randn_like(out_ref)
    grads_ref = torch.autograd.grad(out_ref, [x, ref.weight, ref.bias], grad_out)
    grads_fast = torch.autograd.grad(out_fast, [x, fast.weight, fast.bias], grad_out)
    for a, b in zip(grads_fast, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fast_switches_keep_energy_and_gradients() -> None:
    torch.manual_seed(0)
    plain = DeepEnergy((1, 28, 28), polyphase_first_conv=False)
    fast = DeepEnergy((1, 28, 28), polyphase_first_conv=True, channels_last=True)
    fast.load_state_dict(plain.state_dict())
    x = (torch.rand(8, 1, 28, 28) * 2 - 1).requires_grad_(True)
    (g_plain,) = torch.autograd.grad(plain.energy(x).sum(), x)
    (g_fast,) = torch.autograd.grad(fast.energy(x).sum(), x)
    torch.testing.assert_close(g_fast, g_plain, rtol=1e-4, atol=1e-6)


def test_compile_is_validated_and_only_used_on_cuda() -> None:
    with pytest.raises(ValueError, match="compile must be one of"):
        DeepEnergy((1, 28, 28), compile="fastest")
    torch.manual_seed(0)
    eager = DeepEnergy((1, 28, 28), polyphase_first_conv=False)
    compiled = DeepEnergy((1, 28, 28), polyphase_first_conv=False, compile="reduce-overhead")
    compiled.load_state_dict(eager.state_dict())
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(compiled.energy(x), eager.energy(x))
    assert compiled._compiled_energy is None  # CPU: eager, nothing compiled


def test_shortrun_experiment_samples_with_its_training_chain() -> None:
    """experiment=deep_ebm_shortrun_mnist: no buffer, every chain from noise, and the
    sampling chain is the training chain's sampler from noise, run longer (measured best)."""
    cfg = compose_config(["experiment=deep_ebm_shortrun_mnist", "device=cpu", "sampler.steps=3"])
    assert cfg.model.objective.buffer_size == 0 and cfg.model.objective.sample_steps == 100
    assert cfg.model.objective.data_noise_std == 0.03  # measured better than 0.005 (README)
    # Trained on the live weights, sampled from their EMA 0.99 (measured steadier, README).
    assert cfg.optim.ema == 0.99 and cfg.optim.betas[0] == 0.0
    box = (-1.0, 1.0)
    parts = build_components(cfg, DataInfo((1, 28, 28), box, box))
    objective = parts.objective
    assert not objective.persistent and objective.reinit_fraction == 1.0
    before = objective.buffer.data.clone()
    out = objective.training_step(torch.rand(8, 1, 28, 28) * 2 - 1)
    assert torch.isfinite(out["loss"]) and torch.equal(objective.buffer.data, before)
    pictures = objective.visuals(torch.Generator().manual_seed(0))
    assert "buffer" not in pictures and pictures["samples_from_noise"].shape == (64, 1, 28, 28)


def test_drawn_chain_length_stays_in_range_and_repeats_with_the_seed() -> None:
    """model.objective.chain_steps_max: each batch's chains run a length drawn from
    K..K_max (logged as sampler/chain_steps), the same lengths for the same seed, and the
    step is no longer captured (the length is read on the host)."""
    def lengths(seed: int) -> list[float]:
        cfg = compose_config(["experiment=deep_ebm_shortrun_mnist", "device=cpu",
                              "sampler.steps=2", "model.objective.chain_steps_max=6",
                              f"seed={seed}"])
        box = (-1.0, 1.0)
        objective = build_components(cfg, DataInfo((1, 28, 28), box, box)).objective
        assert not objective.capturable_step
        x = torch.rand(4, 1, 28, 28) * 2 - 1
        return [objective.training_step(x)["sampler/chain_steps"] for _ in range(12)]

    first = lengths(0)
    assert all(2 <= k <= 6 for k in first) and len(set(first)) > 1
    assert lengths(0) == first
    fixed = compose_config(["experiment=deep_ebm_shortrun_mnist", "device=cpu", "sampler.steps=2"])
    box = (-1.0, 1.0)
    objective = build_components(fixed, DataInfo((1, 28, 28), box, box)).objective
    assert objective.capturable_step
    assert "sampler/chain_steps" not in objective.training_step(torch.rand(4, 1, 28, 28))
