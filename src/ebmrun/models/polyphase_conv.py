"""A stride-2 convolution whose input gradient is computed by a polyphase convolution.

Langevin sampling needs dE/dx at every step. For the first layer of an image energy
(1–3 input channels, stride 2) oneDNN computes that input gradient — a transposed
convolution with very few output channels — several times slower than its FLOPs suggest
(~0.9–1.2 ms of a ~3.5 ms sampler step for the tutorial CNN at batch 128). The same
gradient equals an ordinary stride-1 convolution producing the four "phases" (even/odd
rows × even/odd columns) as 4·C_in channels, interleaved back by ``pixel_shuffle``: one
fast forward conv instead of one slow transposed conv (about 2× faster here). The
forward pass and the weight gradient use the standard kernels; the result is the same
convolution, so checkpoints are interchangeable with ``nn.Conv2d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def polyphase_weight(weight: Tensor) -> Tensor:
    """``(O, C, k, k)`` conv weight -> ``(4·C, O, T, T)`` phase kernels, T = ceil(k / 2).

    Output channel ``c·4 + r·2 + q`` holds the taps ``w[:, c, 2t + r, 2s + q]``, flipped so
    that a correlation over the output-gradient map gathers them (pixel_shuffle order).
    """
    out_ch, in_ch, k, _ = weight.shape
    taps = (k + 1) // 2
    w = F.pad(weight, (0, 2 * taps - k, 0, 2 * taps - k))
    w = w.reshape(out_ch, in_ch, taps, 2, taps, 2).permute(1, 3, 5, 0, 2, 4).flip(-1, -2)
    return w.reshape(in_ch * 4, out_ch, taps, taps)


def polyphase_input_grad(grad_out: Tensor, weight: Tensor, padding: int,
                         input_hw: tuple[int, int]) -> Tensor:
    """dL/dx ``(B, C, H, W)`` of ``conv2d(x, weight, stride=2, padding)`` from dL/dy."""
    taps = (weight.shape[-1] + 1) // 2
    phases = F.conv2d(grad_out.contiguous(), polyphase_weight(weight), padding=taps - 1)
    full = F.pixel_shuffle(phases, 2)  # gradient w.r.t. the zero-padded input
    return full[:, :, padding:padding + input_hw[0], padding:padding + input_hw[1]]


class _PolyphaseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, padding: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride=2, padding=padding)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = polyphase_input_grad(grad_out, weight.to(grad_out.dtype), ctx.padding,
                                          tuple(x.shape[-2:]))
        if need_w or need_b:  # only the training step needs these: standard kernel
            p = ctx.padding
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_out, x.to(grad_out.dtype), weight.to(grad_out.dtype),
                [weight.shape[0]] if ctx.has_bias else None, [2, 2], [p, p], [1, 1], False,
                [0, 0], 1, [False, need_w, need_b and ctx.has_bias])
        return grad_x, grad_w, grad_b, None


class PolyphaseConv2d(nn.Conv2d):
    """Drop-in ``nn.Conv2d`` for square stride-2 convs with a faster input gradient."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=2, padding=padding,
                         bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda:  # the detour speeds up oneDNN (CPU); on CUDA cuDNN's own gradient runs
            return super().forward(x)
        return _PolyphaseConv.apply(x, self.weight, self.bias, self.padding[0])
