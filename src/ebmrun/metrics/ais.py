"""Annealed importance sampling (AIS) of an RBM's log partition function.

Salakhutdinov & Murray (2008), "On the quantitative analysis of deep belief networks".
Intermediate distributions between a base-rate model A (visible biases b_A, no weights)
and the RBM B, at inverse temperatures 0 = β_0 < β_1 < … < β_K = 1:

    p*_β(v) = exp((1 − β) b_Aᵀv + β b_Bᵀv) · Π_j (1 + exp(β (c_j + (vᵀW)_j)))

At β = 0 this is the base rate times 2^H, with Z_0 = 2^H Π_i (1 + exp(b_A,i)) known in
closed form and exact samples v ~ Bernoulli(σ(b_A)). Each chain draws v_0 from the base,
then alternates a weight update and a Gibbs transition that leaves p_{β_k} invariant:

    log w += log p*_{β_k}(v) − log p*_{β_{k−1}}(v),   then   h ~ p_{β_k}(h | v), v ~ p_{β_k}(v | h)

and Ẑ_B = Z_0 · mean(w). The estimate of Z is unbiased, so log Ẑ is biased low (Jensen):
log-likelihoods computed with it are, if anything, slightly optimistic. Any base rate
gives an unbiased Ẑ; one close to the data's pixel means keeps the variance small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ebmrun.models.rbm import RBM


@dataclass
class AISResult:
    """log Ẑ, the effective sample size of the importance weights (in chains; far below the
    number of chains means a few chains dominate and log Ẑ is unreliable, most likely too
    low), and the per-chain log weights ``(chains,)``."""

    log_z: float
    ess: float
    log_weights: Tensor


def beta_schedule(steps: int) -> Tensor:
    """``steps + 1`` inverse temperatures from 0 to 1, float64, denser near 1.

    Salakhutdinov & Murray's schedule spends 500 steps on [0, 0.5], 4,000 on [0.5, 0.9] and
    10,000 on [0.9, 1]; the same shares are used for any ``steps``.
    """
    if steps < 1:
        raise ValueError(f"AIS needs at least 1 step, got {steps}")
    shares = torch.tensor([500.0, 4000.0, 10000.0])
    counts = (shares / shares.sum() * steps).floor().long()
    counts[-1] += steps - int(counts.sum())  # the remainder goes to the last segment
    edges = [0.0, 0.5, 0.9, 1.0]
    parts = [torch.zeros(1, dtype=torch.float64)]
    for (lo, hi), n in zip(zip(edges[:-1], edges[1:]), counts.tolist()):
        if n > 0:
            parts.append(torch.linspace(lo, hi, n + 1, dtype=torch.float64)[1:])
    betas = torch.cat(parts)
    betas[-1] = 1.0
    return betas


def base_rate_bias(v: Tensor, smoothing: float = 1.0) -> Tensor:
    """Visible biases ``(V,)`` of the base-rate model: the log-odds of each unit's mean in
    ``v`` ``(N, V)`` (values in [0, 1]), with ``smoothing`` pseudo-counts per outcome."""
    n = v.shape[0]
    p = (v.flatten(1).double().sum(0) + smoothing) / (n + 2 * smoothing)
    return torch.log(p) - torch.log1p(-p)


@torch.no_grad()
def ais_log_partition(model: RBM, chains: int, steps: int, generator: torch.Generator,
                      base_bias: Tensor | None = None) -> AISResult:
    """Estimate log Z of ``model`` with ``chains`` AIS runs of ``steps`` temperatures.

    Args:
        model: the RBM (any device; the chains run on its device in float32, the weights
            are accumulated in float64).
        chains: independent AIS runs (the usual setting is 100).
        steps: number of intermediate temperatures K (the usual setting is 14,500).
        generator: random stream on the model's device.
        base_bias: visible biases of the base-rate model ``(V,)`` (default: the RBM's own
            visible biases, i.e. the RBM with its weights switched off).
    """
    device = model.weight.device
    w, b_b, c = model.weight.float(), model.visible_bias.float(), model.hidden_bias.float()
    b_a = (b_b if base_bias is None else base_bias).to(device=device, dtype=torch.float32)
    betas = beta_schedule(steps).to(device)
    log_z0 = model.hidden * math.log(2.0) + float(F.softplus(b_a.double()).sum())

    v = torch.bernoulli(torch.sigmoid(b_a).expand(chains, -1).contiguous(), generator=generator)
    log_w = torch.zeros(chains, dtype=torch.float64, device=device)
    bias_gap = (b_b - b_a).double()
    for k in range(1, len(betas)):
        beta_prev, beta = betas[k - 1], betas[k]
        act = torch.addmm(c, v, w).double()  # c + vᵀW: reused by the transition below
        # log p*_β(v) − log p*_β'(v): the visible-bias and hidden-unit terms.
        log_w += (beta - beta_prev) * (v.double() @ bias_gap)
        log_w += (F.softplus(beta * act) - F.softplus(beta_prev * act)).sum(1)
        beta32 = float(beta)
        h = torch.bernoulli(torch.sigmoid(beta32 * act.float()), generator=generator)
        v_logits = (1.0 - beta32) * b_a + beta32 * torch.addmm(b_b, h, w.t())
        v = torch.bernoulli(torch.sigmoid(v_logits), generator=generator)

    log_mean_w = float(torch.logsumexp(log_w, 0)) - math.log(chains)
    ess = float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)))
    return AISResult(log_z=log_z0 + log_mean_w, ess=ess, log_weights=log_w.cpu())


@torch.no_grad()
def exact_log_partition(model: RBM, max_units: int = 24, chunk: int = 4096) -> float:
    """log Z by enumerating the smaller layer (2^min(V, H) states; at most ``max_units``).

    Summing over h:  log Z = logsumexp_h [cᵀh + Σ_i softplus(b_i + (Wh)_i)]
    (and symmetrically over v), in float64.
    """
    w = model.weight.double()
    b, c = model.visible_bias.double(), model.hidden_bias.double()
    if model.hidden <= model.visible:
        n, own_bias, other_bias, weight = model.hidden, c, b, w  # enumerate h
    else:
        n, own_bias, other_bias, weight = model.visible, b, c, w.t()  # enumerate v
    if n > max_units:
        raise ValueError(f"exact log Z enumerates 2^{n} states; the limit is 2^{max_units}")
    terms = []
    for start in range(0, 2**n, chunk):
        codes = torch.arange(start, min(start + chunk, 2**n), device=w.device)
        states = ((codes[:, None] >> torch.arange(n, device=w.device)) & 1).double()
        terms.append(states @ own_bias + F.softplus(states @ weight.t() + other_bias).sum(1))
    return float(torch.logsumexp(torch.cat(terms), 0))
