"""Deep energy networks trained by contrastive divergence.

For images: the UvA DL tutorial-8 CNN (four strided convs, Swish, two linear layers); for
vectors (2-D toy densities): an MLP with Swish. :class:`DeepEnergy` picks the body from the
shape of one data item, so ``model=deep_ebm`` works with any dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ebmrun.models.polyphase_conv import PolyphaseConv2d


def _maybe_sn(layer: nn.Module, spectral_norm: bool) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(layer) if spectral_norm else layer


def conv_energy_body(in_channels: int, image_hw: tuple[int, int], channels: Sequence[int],
                     hidden: int, spectral_norm: bool, polyphase_first_conv: bool = True,
                     out_features: int = 1) -> nn.Sequential:
    """The tutorial CNN: Conv(k5,s2,p4) then Conv(k3,s2,p1) layers, Flatten, Linear, Linear.

    Maps ``(B, C, H, W) -> (B, out_features)`` (1: an energy; K: a classifier's logits).
    The first conv's large padding keeps border strokes.
    ``polyphase_first_conv`` computes that layer's input gradient the fast way (same math,
    same parameters; see :mod:`ebmrun.models.polyphase_conv`).
    """
    layers: list[nn.Module] = []
    c_in = in_channels
    for i, c_out in enumerate(channels):
        if i == 0:
            first = PolyphaseConv2d if polyphase_first_conv else _strided_conv
            conv = first(c_in, c_out, 5, padding=4)
        else:
            conv = _strided_conv(c_in, c_out, 3, padding=1)
        layers += [_maybe_sn(conv, spectral_norm), nn.SiLU()]
        c_in = c_out
    with torch.no_grad():  # flattened size depends on the image size: measure it once
        flat = nn.Sequential(*layers)(torch.zeros(1, in_channels, *image_hw)).numel()
    layers += [nn.Flatten(),
               _maybe_sn(nn.Linear(flat, hidden), spectral_norm), nn.SiLU(),
               _maybe_sn(nn.Linear(hidden, out_features), spectral_norm)]
    return nn.Sequential(*layers)


def _strided_conv(c_in: int, c_out: int, kernel: int, padding: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=2, padding=padding)


def mlp_energy_body(in_features: int, hidden: Sequence[int], spectral_norm: bool
                    ) -> nn.Sequential:
    """MLP with Swish: ``(B, D) -> (B, 1)``."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [_maybe_sn(nn.Linear(width, h), spectral_norm), nn.SiLU()]
        width = h
    layers.append(_maybe_sn(nn.Linear(width, 1), spectral_norm))
    return nn.Sequential(*layers)


def resolve_polyphase(value: bool | str) -> bool:
    """``polyphase_first_conv``: ``"auto"`` is on for CPUs with AVX-512 (see DeepEnergy)."""
    if value == "auto":
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    if not isinstance(value, bool):
        raise ValueError(f"polyphase_first_conv must be true, false or auto, got {value!r}")
    return value


COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune")
# Modes that put torch.compile's own CUDA graphs inside: a sampler's graph cannot hold them.
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


class DeepEnergy(nn.Module):
    """Energy network E_θ(x) (low = likely) for images or vectors.

    Args:
        item_shape: shape of one data item, ``(C, H, W)`` or ``(D,)`` (filled at build time).
        conv_channels / conv_hidden: CNN widths for images.
        mlp_hidden: MLP widths for vectors.
        spectral_norm: wrap every layer in spectral normalisation (IGEBM-style stability).
        channels_last: keep conv activations in NHWC, which oneDNN runs faster on CPU.
        polyphase_first_conv: compute the first conv's input gradient as a polyphase
            convolution (identical result). ``"auto"``: on for CPUs with AVX-512, where it
            measured ~2x faster for that gradient; off elsewhere (on an AVX2-only EPYC it
            made the whole sampler step ~12% slower).
        compile: a ``torch.compile`` mode used on CUDA; ``None`` = eager. ``default``
            fuses the net's pointwise work (bias, Swish and their gradients) into Triton
            kernels, and samplers get the energy and its input gradient from one compiled
            function (:meth:`fused_energy_and_grad`) that their CUDA graph records;
            ``reduce-overhead`` = torch.compile's own CUDA graphs around the net alone (the
            sampler's graph is then off). Ignored on CPU, where it was not measured to help
            and needs a C++ toolchain.
    """

    def __init__(self, item_shape: Sequence[int], conv_channels: Sequence[int] = (16, 32, 64, 64),
                 conv_hidden: int = 64, mlp_hidden: Sequence[int] = (128, 128, 128),
                 spectral_norm: bool = False, channels_last: bool = False,
                 polyphase_first_conv: bool | str = "auto", compile: str | None = None) -> None:
        super().__init__()
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(map(str, COMPILE_MODES))}, "
                             f"got {compile!r}")
        self.compile_mode = compile
        self._compiled_energy = None  # built on the first CUDA call
        self._compiled_energy_and_grad = None  # likewise, for samplers
        polyphase_first_conv = resolve_polyphase(polyphase_first_conv)
        self.item_shape = tuple(int(s) for s in item_shape)
        self.is_image = len(self.item_shape) == 3
        if self.is_image:
            c, h, w = self.item_shape
            self.body = conv_energy_body(c, (h, w), conv_channels, conv_hidden, spectral_norm,
                                         polyphase_first_conv)
        elif len(self.item_shape) == 1:
            self.body = mlp_energy_body(self.item_shape[0], mlp_hidden, spectral_norm)
        else:
            raise ValueError(f"deep_ebm needs (C, H, W) images or (D,) vectors, got {item_shape}")
        self.channels_last = bool(channels_last and self.is_image)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def graph_capturable(self) -> bool:
        """Samplers may record this energy in their CUDA graph (not when ``compile`` puts
        torch.compile's own CUDA graphs inside; see :mod:`ebmrun.samplers.graphed`)."""
        return self.compile_mode not in CUDA_GRAPH_MODES

    def fused_energy_and_grad(self, energy_fn: Callable[[Tensor], Tensor], x: Tensor
                              ) -> Callable[[Tensor], tuple[Tensor, Tensor]] | None:
        """A compiled ``x -> (energies (B,), dE/dx)`` for samplers, or ``None`` (eager).

        Only for this net's own :meth:`energy` on CUDA with ``compile`` set: one
        ``torch.func.grad_and_value`` over ``x`` alone, compiled and run without autograd,
        so the fused kernels compute no parameter gradients (the compiled ``energy``'s
        backward, made for the loss, would compute them all)."""
        if (self.compile_mode is None or not x.is_cuda
                or getattr(energy_fn, "__func__", None) is not DeepEnergy.energy
                or energy_fn.__self__ is not self):
            return None
        if self._compiled_energy_and_grad is None:
            def total(v: Tensor) -> tuple[Tensor, Tensor]:
                energies = self._energy(v)
                return energies.sum(), energies

            self._compiled_energy_and_grad = torch.compile(
                torch.func.grad_and_value(total, has_aux=True), mode=self.compile_mode,
                dynamic=False)
        compiled = self._compiled_energy_and_grad

        def energy_and_grad(v: Tensor) -> tuple[Tensor, Tensor]:
            with torch.no_grad():
                grad, (_, energies) = compiled(v.detach())
            return energies, grad

        return energy_and_grad

    def energy(self, x: Tensor) -> Tensor:
        """Energies ``(B,)`` of ``x`` ``(B, *item_shape)``."""
        if self.compile_mode is not None and x.is_cuda:
            if self._compiled_energy is None:
                self._compiled_energy = torch.compile(self._energy, mode=self.compile_mode,
                                                      dynamic=False)
            # A copy: CUDA-graph outputs are overwritten by the next replay, and callers keep
            # energies across calls (loss terms, histograms).
            return self._compiled_energy(x).clone()
        return self._energy(x)

    def _energy(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.body(x).squeeze(-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.energy(x)
