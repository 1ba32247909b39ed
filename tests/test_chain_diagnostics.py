"""Chain diagnostics (src/ebmrun/metrics/chains.py) against ArviZ and against first principles.

The expected R̂ / ESS values were computed once with ArviZ 0.23.4 (``az.rhat(a,
method="rank")``, ``az.ess(a, method="bulk"|"tail")``) on exactly these chains; ArviZ is
not a dependency.
"""

from __future__ import annotations

import math

import pytest
import torch

from ebmrun.metrics.chains import chain_diagnostics, ess_bulk, ess_tail, ksd_imq, rhat


def fixed_chains() -> dict[str, torch.Tensor]:
    """4 chains × 300 draws of AR(1) (ρ = 0.8) and three variants."""
    g = torch.Generator().manual_seed(17)
    noise = torch.randn(4, 300, generator=g, dtype=torch.float64)
    x = torch.zeros(4, 300, dtype=torch.float64)
    for t in range(1, 300):
        x[:, t] = 0.8 * x[:, t - 1] + noise[:, t]
    stuck = x.clone()
    stuck[3] += 2.0  # one chain elsewhere: not converged
    return {"ar1": x, "lognormal": x.exp(), "shifted": stuck, "rounded": torch.round(x)}


ARVIZ = {  # name: (rhat, ess_bulk, ess_tail)
    "ar1": (1.0348665574032685, 174.28230121638742, 395.7940980152517),
    "lognormal": (1.0348665574032685, 174.28230121638742, 395.7940980152517),
    "shifted": (1.1767193700986123, 18.757879068488876, 78.47861187507152),
    "rounded": (1.0341128297617406, 179.01928161592247, 239.0853631285467),
}


@pytest.mark.parametrize("name", list(ARVIZ))
def test_rhat_and_ess_match_arviz(name: str) -> None:
    draws = fixed_chains()[name]
    expected = ARVIZ[name]
    got = (rhat(draws), ess_bulk(draws), ess_tail(draws))
    assert got == pytest.approx(expected, rel=1e-9), (name, got)


def test_diagnostics_summary_flags_the_stuck_chain() -> None:
    chains = fixed_chains()
    out = chain_diagnostics({"good": chains["ar1"], "bad": chains["shifted"]})
    assert out["rhat_max"] == pytest.approx(ARVIZ["shifted"][0])
    assert out["ess_bulk_min"] == pytest.approx(ARVIZ["shifted"][1])
    assert out["good/rhat"] < out["bad/rhat"] and out["rhat_max"] > 1.01
    assert math.isnan(rhat(chains["ar1"][:1]))  # one chain: no R̂


def stein_kernel_by_autograd(x: torch.Tensor, y: torch.Tensor, sx, sy) -> torch.Tensor:
    """u(x, y) = s(x)ᵀs(y)k + s(x)ᵀ∇_y k + s(y)ᵀ∇_x k + tr ∇_x∇_y k, by autograd."""
    x = x.clone().requires_grad_(True)
    y = y.clone().requires_grad_(True)
    k = (1.0 + ((x - y) ** 2).sum()) ** -0.5
    gx, gy = torch.autograd.grad(k, (x, y), create_graph=True)
    trace = sum(torch.autograd.grad(gx[i], y, retain_graph=True)[0][i] for i in range(len(x)))
    return (sx @ sy) * k + sx @ gy + sy @ gx + trace


def test_ksd_closed_form_matches_autograd_and_detects_a_wrong_sample() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    score = -x  # N(0, I)
    by_hand = torch.stack([torch.stack([stein_kernel_by_autograd(x[i], x[j], score[i], score[j])
                                        for j in range(5)]) for i in range(5)])
    assert ksd_imq(x, score) == pytest.approx(math.sqrt(float(by_hand.detach().mean())), rel=1e-10)
    exact = torch.randn(500, 2, generator=g, dtype=torch.float64)
    narrow = exact * 0.7  # too narrow: what a biased sampler returns
    assert ksd_imq(exact, -exact) < 0.6 * ksd_imq(narrow, -narrow)


def test_sampler_records_chain_traces_for_the_diagnostics() -> None:
    from ebmrun.metrics.chains import convergence_metrics
    from ebmrun.samplers import MALA

    sampler = MALA(step_size=0.5, adapt_steps=20, steps=120)
    sampler.record_chains = True
    energy = lambda x: 0.5 * (x**2).sum(1)  # noqa: E731
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    results = [sampler.sample(energy, x0, generator=torch.Generator().manual_seed(s))
               for s in (1, 2)]
    assert results[0].chain_traces["energy"].shape == (32, 120)
    assert torch.allclose(results[0].chain_traces["x[1]"][:, -1], results[0].x[:, 1])
    assert torch.allclose(results[0].score, -results[0].x)
    out = convergence_metrics(results)
    assert out["diagnostics/draws_per_chain"] == 100  # the 20 warm-up steps dropped
    assert out["diagnostics/rhat_max"] < 1.05 and out["diagnostics/ess_bulk_min"] > 400
    assert 0 < out["diagnostics/ksd"] < 0.3
