"""How samplers evaluate an energy: values, input gradients, autocast.

Every sampler step goes through :func:`energy_and_grad` (or :func:`energy_only` for
gradient-free moves): gradients with respect to ``x`` alone, optionally under autocast
(``sampler.autocast``, see :func:`autocast_dtype_for`), or from the energy module's own
fused, compiled pass where it offers one (``fused_energy_and_grad``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor

from ebmrun.samplers.graphed import energy_module

EnergyFn = Callable[[Tensor], Tensor]


def energy_and_grad(energy_fn: EnergyFn, x: Tensor, autocast_dtype: torch.dtype | None = None
                    ) -> tuple[Tensor, Tensor]:
    """Energies ``(B,)`` and input gradients ``dE/dx`` (shape of ``x``) in one pass.

    Uses ``torch.autograd.grad`` with ``x`` as the only input, so autograd skips every
    parameter-gradient computation and leaves ``param.grad`` untouched; the caller's
    ``requires_grad`` flags and train/eval mode are never changed. An energy module that
    offers ``fused_energy_and_grad(energy_fn, x)`` (a compiled pass computing both, e.g.
    :class:`ebmrun.models.deep_ebm.DeepEnergy` with ``compile``) supplies them instead.
    """
    module = energy_module(energy_fn)
    fused = getattr(module, "fused_energy_and_grad", None) if autocast_dtype is None else None
    fused = fused(energy_fn, x) if fused is not None else None
    if fused is not None:  # the energy's own compiled pass (e.g. DeepEnergy with compile)
        energy, grad = fused(x)
        return energy.float(), grad
    autocast = autocast_context(x, autocast_dtype)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        with autocast:
            energy = energy_fn(x)
        (grad,) = torch.autograd.grad(energy.sum(), x)
    return energy.detach().float(), grad


def energy_only(energy_fn: EnergyFn, x: Tensor, autocast_dtype: torch.dtype | None = None
                ) -> Tensor:
    """Energies ``(B,)`` without building a graph (gradient-free moves, diagnostics)."""
    with torch.no_grad(), autocast_context(x, autocast_dtype):
        return energy_fn(x).detach().float()


def autocast_context(x: Tensor, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``x``'s device, or a no-op for ``None``."""
    return torch.autocast(x.device.type, dtype=dtype) if dtype is not None else nullcontext()


AUTOCAST_DTYPES: dict[str | None, torch.dtype | None] = {
    None: None, "none": None, "bf16": torch.bfloat16, "fp16": torch.float16, "auto": None}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 dot products natively (AVX-512 BF16 or AMX).

    Without them bf16 is emulated and autocast makes the energy ~10x *slower* (measured on
    an AVX2-only EPYC), so ``autocast: auto`` stays in float32 there.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype_for(name: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``name`` on ``device``; ``auto`` = bf16 only on CPUs with
    native bf16, float32 elsewhere. On CUDA the shipped energies are small enough to be
    kernel-launch bound, so autocast's extra cast kernels cost more than bf16 saves (deep
    EBM on an H200: 1,101 images/s in float32 vs 932 with bf16)."""
    if name != "auto":
        return AUTOCAST_DTYPES[name]
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return None
