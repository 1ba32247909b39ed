"""Noise-level-conditioned energy network for diffusion recovery likelihood (Gao et al. 2021).

The model is a sequence of EBMs, one per noise level t = 0 … T−1, sharing one network
f_θ(y, t) (a *score*: higher = more likely; the energy at level t is −f_θ(y, t)). It also
owns the diffusion that defines the levels (:class:`DiffusionSchedule`), so a checkpoint
holds everything needed to generate. The recovery-likelihood objective and the per-level
chain are in :mod:`ebmrun.objectives.recovery_likelihood`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ebmrun.models.polyphase_conv import PolyphaseConv2d


def paper_schedule(levels: int, beta_start: float = 1e-4, beta_end: float = 0.02
                   ) -> tuple[Tensor, Tensor]:
    """The paper's T-level schedule, cut from a 1,000-step linear β diffusion.

    Level boundaries are the β-steps 0, k, 2k, …, (T−1)k with k = 1000 // (2(T−1)), plus 999:
    small, evenly spaced steps near the data and one long last step to (almost) pure noise.
    Returns ``(a, sigma)``, both ``(T+1,)``: x_{i+1} = a[i+1]·x_i + sigma[i+1]·ε, and
    x_0 = a[0]·data + sigma[0]·ε (a tiny smoothing of the data).
    """
    if levels < 2:
        raise ValueError(f"drl needs levels >= 2, got {levels}")
    if not 0.0 < beta_start < beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
    betas = torch.linspace(beta_start, beta_end, 1000, dtype=torch.float64)
    log_keep = 0.5 * torch.log1p(-betas)  # log sqrt(1 - β) per β-step
    k = 1000 // (2 * (levels - 1))
    bounds = [i * k for i in range(levels)] + [999]
    logs = [log_keep[: bounds[0] + 1].sum()]
    logs += [log_keep[bounds[i - 1] + 1: bounds[i] + 1].sum() for i in range(1, len(bounds))]
    a = torch.stack(logs).exp()
    return a.float(), (1.0 - a * a).sqrt().float()


class DiffusionSchedule(nn.Module):
    """The noise levels as buffers (saved in checkpoints, moved with ``.to``).

    ``a``, ``sigma``: ``(T+1,)`` one-step coefficients (see :func:`paper_schedule`);
    ``sigma_cum``: ``(T+1,)`` std of x_i given the data (x_i = ā_i·data + sigma_cum[i]·ε);
    ``y_scale``: ``(T+1,)`` the scale of the network's input y = y_scale[t+1]·x_t: a[t+1],
    except 1 at the last level, whose "conditional" is the marginal of x_{T-1} itself
    (x_T is pure noise; scaling by a[T] ≈ 0.02 would ask the chain for a spread far below
    its own noise).
    """

    def __init__(self, levels: int, beta_start: float, beta_end: float) -> None:
        super().__init__()
        a, sigma = paper_schedule(levels, beta_start, beta_end)
        self.levels = levels
        self.register_buffer("a", a)
        self.register_buffer("sigma", sigma)
        a_cum = torch.cumprod(a.double(), 0)
        self.register_buffer("a_cum", a_cum.float())
        self.register_buffer("sigma_cum", (1.0 - a_cum * a_cum).sqrt().float())
        y_scale = a.clone()
        y_scale[-1] = 1.0
        self.register_buffer("y_scale", y_scale)


class LevelConditionedEnergy(nn.Module):
    """f_θ(y, t): a small Swish network with the level t fed in as a learned per-unit bias
    after every layer and a per-level output head.

    Images ``(B, C, H, W)``: the tutorial-style strided CNN (first conv k5 stride 2 pad 4,
    then k3 stride 2 pad 1) and one linear layer; vectors ``(B, D)``: an MLP. A bias per
    level is enough conditioning here because each level's conditional p(y_t | y_{t+1}) is
    nearly unimodal (the paper's point), and it costs no extra FLOPs in the chains.

    Args:
        item_shape: ``(C, H, W)`` or ``(D,)`` of one item (filled at build time).
        levels: number of noise levels T.
        beta_start / beta_end: the linear β range the levels are cut from.
        channels / hidden: conv widths and the linear width after them (images).
        mlp_hidden: MLP widths (vectors).
        polyphase_first_conv: faster input gradient of the first conv (same math); ``auto``:
            on for AVX-512 CPUs (see :mod:`ebmrun.models.polyphase_conv`).
    """

    def __init__(self, item_shape: Sequence[int], levels: int = 6, beta_start: float = 1e-4,
                 beta_end: float = 0.02, channels: Sequence[int] = (32, 64, 64, 64),
                 hidden: int = 128, mlp_hidden: Sequence[int] = (128, 128, 128),
                 polyphase_first_conv: bool | str = "auto") -> None:
        super().__init__()
        self.item_shape = tuple(int(s) for s in item_shape)
        if len(self.item_shape) not in (1, 3):
            raise ValueError(f"drl needs (C, H, W) images or (D,) vectors, got {item_shape}")
        if polyphase_first_conv == "auto":
            polyphase_first_conv = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
        self.schedule = DiffusionSchedule(levels, beta_start, beta_end)
        layers: list[nn.Module] = []
        if len(self.item_shape) == 3:
            c_in = self.item_shape[0]
            for i, c_out in enumerate(channels):
                first = PolyphaseConv2d if (i == 0 and polyphase_first_conv) else _strided
                layers.append(first(c_in, c_out, 5, padding=4) if i == 0
                              else first(c_in, c_out, 3, padding=1))
                c_in = c_out
            with torch.no_grad():  # flattened size depends on the image size: measure it once
                flat = nn.Sequential(*layers)(torch.zeros(1, *self.item_shape)).numel()
            layers += [nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden))]
            widths = [*channels, hidden]
        else:
            width = self.item_shape[0]
            for h in mlp_hidden:
                layers.append(nn.Linear(width, h))
                width = h
            widths = list(mlp_hidden)
        self.layers = nn.ModuleList(layers)
        self.level_bias = nn.ModuleList(nn.Embedding(levels, w) for w in widths)
        for emb in self.level_bias:
            nn.init.zeros_(emb.weight)  # start as one unconditioned net; levels part by training
        self.head = nn.Linear(widths[-1], levels)  # one output per level; pick column t
        self.act = nn.SiLU()

    @property
    def levels(self) -> int:
        return self.schedule.levels

    def score(self, y: Tensor, t: Tensor) -> Tensor:
        """f_θ(y, t) ``(B,)`` for scaled items ``y`` ``(B, *item_shape)`` (y = y_scale[t+1]·x_t,
        see :mod:`ebmrun.objectives.recovery_likelihood`) and levels ``t`` ``(B,)`` (long)."""
        h = y
        for layer, bias in zip(self.layers, self.level_bias):
            h = layer(h)
            b = bias(t)  # (B, width): broadcast over the pixels of conv maps
            h = self.act(h + b.view(*b.shape, *([1] * (h.dim() - 2))))
        return self.head(h).gather(1, t[:, None]).squeeze(1)

    def energy(self, x: Tensor, t: int = 0) -> Tensor:
        """Energy ``(B,)`` of items ``x`` ``(B, *item_shape)`` at level ``t`` (default 0:
        the data level): −f_θ(y_scale[t+1]·x, t)."""
        levels = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        return -self.score(x * self.schedule.y_scale[t + 1], levels)

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        return self.score(y, t)


def _strided(c_in: int, c_out: int, kernel: int, padding: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=2, padding=padding)
