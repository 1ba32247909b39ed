"""MCMC convergence diagnostics over a batch of chains.

* Rank-normalised split-R̂ and bulk / tail effective sample size (Vehtari, Gelman, Simpson,
  Carpenter & Bürkner 2021, "Rank-normalization, folding, and localization"), computed as
  ArviZ does (``arviz.rhat``, ``arviz.ess(method="bulk"|"tail")``), from per-step traces
  ``(chains, draws)`` of a scalar quantity (e.g. each chain's energy).
* Kernel Stein discrepancy with the inverse multiquadric kernel (Liu, Lee & Jordan 2016;
  Gorham & Mackey 2017): a distance between samples and a target known only through its
  score ``∇log p = −∇E/T``, so it works for unnormalised energies.

What "converged" means (Vehtari et al. 2021): R̂ < 1.01 (the chains agree; above it they
have not mixed, or warm-up was too short), and bulk and tail ESS > 400 over all chains (about
100 per chain with 4 chains), so that means and quantiles have usable Monte Carlo error.
KSD has no universal threshold: compare it with the KSD of exact samples of the same size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ebmrun.samplers.base import SampleResult


def split_chains(draws: Tensor) -> Tensor:
    """``(C, N) -> (2C, N // 2)``: each chain's first and last halves as separate chains
    (a trend within a chain then shows as between-chain disagreement)."""
    half = draws.shape[1] // 2
    return torch.cat([draws[:, :half], draws[:, draws.shape[1] - half:]])


def average_ranks(values: Tensor) -> Tensor:
    """Ranks 1..S of the flattened ``values`` (ties get their average rank), shaped as input."""
    flat = values.flatten()
    order = torch.argsort(flat, stable=True)
    sorted_vals = flat[order]
    # Tie groups: start of each run of equal values, and the mean rank of the run.
    new_group = torch.ones_like(sorted_vals, dtype=torch.bool)
    new_group[1:] = sorted_vals[1:] != sorted_vals[:-1]
    group = torch.cumsum(new_group, 0) - 1
    positions = torch.arange(1, len(flat) + 1, dtype=torch.float64)
    sums = torch.zeros(int(group[-1]) + 1, dtype=torch.float64).index_add_(0, group, positions)
    counts = torch.bincount(group).double()
    ranks = torch.empty_like(positions)
    ranks[order] = (sums / counts)[group]
    return ranks.reshape(values.shape)


def z_scale(values: Tensor) -> Tensor:
    """Rank-normalise: ranks → Φ⁻¹((r − 3/8) / (S + 1/4)) (Blom 1958), shape kept."""
    ranks = average_ranks(values)
    return torch.special.ndtri((ranks - 0.375) / (values.numel() + 0.25))


def _rhat(draws: Tensor) -> float:
    """Classic R̂ of ``(C, N)`` draws (between- vs within-chain variance)."""
    n = draws.shape[1]
    between = n * draws.mean(1).var()
    within = draws.var(1).mean()
    return math.sqrt(float((between / within + n - 1) / n))


def rhat(draws: Tensor) -> float:
    """Rank-normalised split-R̂ of ``(chains, draws)``: the max of the bulk R̂ and the R̂ of
    the folded draws |x − median| (which catches chains with equal means but different
    spreads). NaN with fewer than 2 chains or 4 draws."""
    draws = draws.double()
    if draws.shape[0] < 2 or draws.shape[1] < 4 or not torch.isfinite(draws).all():
        return math.nan
    split = split_chains(draws)
    folded = (split - split.flatten().quantile(0.5)).abs()
    return max(_rhat(z_scale(split)), _rhat(z_scale(folded)))


def _autocov(draws: Tensor) -> Tensor:
    """Autocovariance ``(C, N)`` of each chain at lags 0..N−1 (biased, 1/N), by FFT."""
    n = draws.shape[1]
    centred = draws - draws.mean(1, keepdim=True)
    m = 1 << (2 * n - 1).bit_length()  # ≥ 2N−1: linear, not circular, correlation
    spectrum = torch.fft.rfft(centred, n=m, dim=1)
    return torch.fft.irfft(spectrum * spectrum.conj(), n=m, dim=1)[:, :n] / n


def ess(draws: Tensor) -> float:
    """Effective sample size of ``(C, N)`` draws: C·N / τ with τ from the multi-chain
    autocorrelation, truncated by Geyer's initial positive and monotone sequences."""
    draws = draws.double()
    n_chain, n = draws.shape
    if float(draws.max() - draws.min()) < 1e-15:
        return float(draws.numel())
    acov = _autocov(draws)
    mean_var = acov[:, 0].mean() * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if n_chain > 1:
        var_plus = var_plus + draws.mean(1).var()
    rho = (1.0 - (mean_var - acov.mean(0)) / var_plus).tolist()  # ρ̂_t for every lag
    kept = [0.0] * n
    kept[0], kept[1] = 1.0, rho[1]
    even, odd, t = 1.0, rho[1], 1
    while t < n - 3 and even + odd > 0.0:  # initial positive sequence (pairs of lags)
        even, odd = rho[t + 1], rho[t + 2]
        if even + odd >= 0:
            kept[t + 1], kept[t + 2] = even, odd
        t += 2
    max_t = t - 2
    if even > 0:
        kept[max_t + 1] = even
    t = 1
    while t <= max_t - 2:  # initial monotone sequence
        if kept[t + 1] + kept[t + 2] > kept[t - 1] + kept[t]:
            kept[t + 1] = kept[t + 2] = (kept[t - 1] + kept[t]) / 2.0
        t += 2
    tau = -1.0 + 2.0 * sum(kept[: max_t + 1]) + sum(kept[max_t + 1: max_t + 2])
    total = n_chain * n
    return total / max(tau, 1.0 / math.log10(total))


def ess_bulk(draws: Tensor) -> float:
    """Bulk ESS: ESS of the rank-normalised split chains (centre of the distribution)."""
    draws = draws.double()
    if draws.shape[1] < 4 or not torch.isfinite(draws).all():
        return math.nan
    return ess(z_scale(split_chains(draws)))


def ess_tail(draws: Tensor) -> float:
    """Tail ESS: the smaller ESS of the indicators x ≤ q5% and x ≤ q95% (split chains)."""
    draws = draws.double()
    if draws.shape[1] < 4 or not torch.isfinite(draws).all():
        return math.nan
    quantiles = draws.flatten().quantile(torch.tensor([0.05, 0.95], dtype=torch.float64))
    return min(ess(split_chains((draws <= q).double())) for q in quantiles)


def chain_diagnostics(traces: dict[str, Tensor]) -> dict[str, float]:
    """R̂ and bulk/tail ESS of every ``(chains, draws)`` trace, plus the worst of each.

    Keys: ``<name>/rhat``, ``<name>/ess_bulk``, ``<name>/ess_tail`` and ``rhat_max``,
    ``ess_bulk_min``, ``ess_tail_min`` over the traces (NaNs ignored).
    """
    out: dict[str, float] = {}
    for name, draws in traces.items():
        out[f"{name}/rhat"] = rhat(draws)
        out[f"{name}/ess_bulk"] = ess_bulk(draws)
        out[f"{name}/ess_tail"] = ess_tail(draws)
    for stat, pick in (("rhat", max), ("ess_bulk", min), ("ess_tail", min)):
        values = [v for k, v in out.items() if k.endswith(f"/{stat}") and not math.isnan(v)]
        out[f"{stat}_{'max' if pick is max else 'min'}"] = pick(values) if values else math.nan
    return out


def ksd_imq(x: Tensor, score: Tensor, c: float = 1.0, beta: float = -0.5) -> float:
    """Kernel Stein discrepancy (V-statistic, ≥ 0) of samples ``x`` ``(n, d)`` for the
    target whose score ``∇log p`` at them is ``score`` ``(n, d)``, with the IMQ kernel
    k(x, y) = (c² + ‖x − y‖²)^β (β ∈ (−1, 0); it detects non-convergence, Gorham & Mackey
    2017). Zero in the limit iff the samples come from p. Cost O(n² d)."""
    x, s = x.flatten(1).double(), score.flatten(1).double()
    d = x.shape[1]
    diff = x[:, None, :] - x[None, :, :]  # r = x_i − x_j: (n, n, d)
    r2 = (diff**2).sum(-1)
    q = c**2 + r2
    k = q**beta
    dk = 2 * beta * q ** (beta - 1)  # ∇_x k = dk · r, ∇_y k = −dk · r
    term_ss = (s @ s.T) * k
    term_sx = (s[None, :, :] * diff).sum(-1) * dk  # s(y)ᵀ ∇_x k
    term_xs = -(s[:, None, :] * diff).sum(-1) * dk  # s(x)ᵀ ∇_y k
    trace = -2 * beta * d * q ** (beta - 1) - 4 * beta * (beta - 1) * q ** (beta - 2) * r2
    stein = term_ss + term_sx + term_xs + trace
    return math.sqrt(max(float(stein.mean()), 0.0))


KSD_MAX_SAMPLES = 2000  # O(n²) memory and time: 2000² pairs take well under a second


def convergence_metrics(results: Sequence[SampleResult]) -> dict[str, float]:
    """``diagnostics/*`` metrics of a ``task=sample`` run from its batches' results.

    R̂ and bulk/tail ESS over all chains of all batches, from the per-chain traces after
    warm-up: the adapting steps of MH samplers (``warmup_steps``), else the first half of
    the run (chains start from noise; Gelman et al. discard half). KSD (IMQ kernel) of the
    final samples when the sampler gave the target's score (small items, plain energies).
    """
    if not results or not results[0].chain_traces:
        return {}
    steps = results[0].chain_traces["energy"].shape[1]
    warmup = int(results[0].stats.get("warmup_steps", 0)) or steps // 2
    traces = {name: torch.cat([r.chain_traces[name] for r in results])[:, warmup:]
              for name in results[0].chain_traces}
    out = {f"diagnostics/{k}": v for k, v in chain_diagnostics(traces).items()}
    out["diagnostics/draws_per_chain"] = float(steps - warmup)
    if all(r.score is not None for r in results):
        x = torch.cat([r.x.flatten(1).cpu() for r in results])[:KSD_MAX_SAMPLES]
        score = torch.cat([r.score.flatten(1).cpu() for r in results])[:KSD_MAX_SAMPLES]
        out["diagnostics/ksd"] = ksd_imq(x, score)
    return out
