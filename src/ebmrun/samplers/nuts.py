"""The No-U-Turn Sampler (Hoffman & Gelman 2014), batched over chains.

Each transition draws p ~ N(0, I) and grows a trajectory of leapfrog steps for
H(x, p) = E(x)/T + ½‖p‖² by doubling: each doubling picks a random direction and appends
a subtree as long as the trajectory so far, until the trajectory makes a U-turn (the
generalised criterion of Betancourt 2017: ρ·p⁻ ≤ 0 or ρ·p⁺ ≤ 0, ρ the sum of momenta),
a subtree diverges (H grows by > 1000), or ``max_tree_depth`` doublings. The next state
is drawn among the trajectory's states with weights exp(−H): multinomial within a subtree,
biased progressive sampling between the old tree and a new subtree (Betancourt 2017), which
keeps the chain exact for p(x) ∝ exp(−E(x)/T).

A subtree that contains a U-turn in any of its aligned sub-subtrees is discarded as in the
recursive algorithm (the checks run after the subtree is built: same result as stopping
early, but the batch always computes the whole subtree).

Batching: every chain grows its own tree in its own directions; all chains take each
leapfrog step together (one batched gradient), and a chain whose tree has stopped is masked
out: it computes but ignores the steps until the slowest chain of the batch stops. Stats
report both the leapfrog steps the batch ran and those the chains needed.

Step size: dual averaging (Hoffman & Gelman 2014, §3.2) toward the mean acceptance
statistic ``target_accept`` during the first ``adapt_steps`` transitions, one ε shared by
all chains, then frozen at the averaged iterate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ebmrun.samplers.base import (EnergyFn, Sampler, gaussian_like, per_chain_norm,
                                  per_chain_sum, per_chain_view)
from ebmrun.samplers.box import reflect_into_box

DIVERGENCE = 1000.0  # H above its start by this much: the integrator has blown up


class NUTS(Sampler):
    """NUTS with multinomial sampling, batched (one chain per row), any tensor shape.

    Args:
        step_size: initial leapfrog ε.
        max_tree_depth: at most 2^max_tree_depth − 1 leapfrog steps per transition.
        target_accept: dual-averaging target for the mean acceptance statistic (0.8).
        adapt: ``dual_averaging`` (during warm-up only) or ``none``.
        adapt_steps: warm-up transitions; must be < ``steps`` when adapting.
        steps, temperature, box, autocast: see :class:`Sampler`. ``box`` mirrors
            positions at the walls and flips the momentum (reversible, as in HMC).
    """

    def __init__(self, step_size: float = 0.1, max_tree_depth: int = 8,
                 target_accept: float = 0.8, adapt: str = "dual_averaging",
                 adapt_steps: int = 50, steps: int = 100, temperature: float = 1.0,
                 box: Sequence[float] | None = None, autocast: str | None = None) -> None:
        super().__init__(steps=steps, temperature=temperature, box=box, autocast=autocast)
        if step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {step_size}")
        if not 1 <= max_tree_depth <= 12:
            raise ValueError(f"max_tree_depth must be in 1..12, got {max_tree_depth}")
        if not 0.0 < target_accept < 1.0:
            raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
        if adapt not in ("dual_averaging", "none"):
            raise ValueError(f"adapt must be dual_averaging or none, got {adapt!r}")
        if adapt != "none" and adapt_steps >= steps > 0:
            raise ValueError(f"adapt_steps={adapt_steps} must be < steps={steps} with adapt="
                             f"{adapt}: the step size would adapt for the whole run (fix: "
                             f"raise steps, lower adapt_steps or set adapt=none)")
        self.step_size = float(step_size)
        self.max_tree_depth = int(max_tree_depth)
        self.target_accept = float(target_accept)
        self.adapt_steps = int(adapt_steps) if adapt != "none" else 0

    def warmup_for(self, steps: int) -> int:
        if self.adapt_steps == 0:
            return 0
        return self.adapt_steps if self.adapt_steps < steps else steps // 2

    def init_state(self, energy_fn: EnergyFn, x: Tensor, generator: torch.Generator | None
                   ) -> dict:
        energy, grad = self._energy_and_grad(energy_fn, x)
        log_eps = math.log(self.step_size)
        return {"energy": energy, "grad": grad, "log_eps": log_eps, "log_eps_bar": log_eps,
                "h_bar": 0.0, "mu": math.log(10 * self.step_size), "grad_evals": 0.0,
                "leapfrogs_needed": 0.0}

    def _leapfrog(self, energy_fn: EnergyFn, x: Tensor, p: Tensor, grad: Tensor,
                  eps: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One leapfrog step with per-chain signed step ``eps`` ``(B, 1, ..., 1)``."""
        inv_t = 1.0 / self.temperature
        p = p - (0.5 * inv_t) * eps * grad
        x = x + eps * p
        if self.box is not None:
            x, flip = reflect_into_box(x, *self.box)
            p = torch.where(flip, -p, p)
        energy, grad = self._energy_and_grad(energy_fn, x)
        p = p - (0.5 * inv_t) * eps * grad
        return x, p, energy, grad

    def _hamiltonian(self, energy: Tensor, p: Tensor) -> Tensor:
        h = energy.double() / self.temperature + 0.5 * per_chain_sum(p.double() ** 2)
        return torch.nan_to_num(h, nan=math.inf)

    def step(self, energy_fn: EnergyFn, x: Tensor, state: dict,
             generator: torch.Generator | None) -> tuple[Tensor, dict, dict[str, Tensor]]:
        batch, dev = x.shape[0], x.device
        view = lambda v: per_chain_view(v, x)  # noqa: E731
        eps = math.exp(state["log_eps"])
        p0 = gaussian_like(x, generator)
        h0 = self._hamiltonian(state["energy"], p0)
        # Tree: edges, sum of momenta ρ, total log weight, the current pick.
        left = right = (x, p0, state["grad"])
        rho = p0.double()
        log_w = torch.zeros(batch, dtype=torch.float64, device=dev)
        pick_x, pick_e, pick_g = x, state["energy"], state["grad"]
        active = torch.ones(batch, dtype=torch.bool, device=dev)
        accept_sum = torch.zeros(batch, dtype=torch.float64, device=dev)
        n_states = torch.zeros(batch, dtype=torch.float64, device=dev)
        depth = torch.zeros(batch, device=dev)
        ran = 0
        for j in range(self.max_tree_depth):
            if not active.any():
                break
            forward = torch.rand(batch, device=dev, generator=generator) < 0.5
            fv = view(forward)
            sx, sp, sg = (torch.where(fv, r, l) for r, l in zip(right, left))
            signed = view(torch.where(forward, eps, -eps)).to(x.dtype)
            # Build the subtree of 2^j steps; multinomial pick within it as we go.
            sub_log_w = torch.full((batch,), -math.inf, dtype=torch.float64, device=dev)
            sub_x, sub_e, sub_g = pick_x, pick_e, pick_g
            momenta, diverged = [], torch.zeros(batch, dtype=torch.bool, device=dev)
            for _ in range(2**j):
                sx, sp, se, sg = self._leapfrog(energy_fn, sx, sp, sg, signed)
                ran += 1
                lw = h0 - self._hamiltonian(se, sp)  # log weight relative to the start
                diverged |= lw < -DIVERGENCE
                accept_sum += torch.where(active, lw.clamp(max=0).exp(), 0.0)
                n_states += active.double()
                sub_log_w_new = torch.logaddexp(sub_log_w, lw)
                u = torch.rand(batch, device=dev, generator=generator).double()
                take = u < (lw - sub_log_w_new).exp()
                sub_x = torch.where(view(take), sx, sub_x)
                sub_e = torch.where(take, se, sub_e)
                sub_g = torch.where(view(take), sg, sub_g)
                sub_log_w = sub_log_w_new
                momenta.append(sp.double().flatten(1))
            valid = active & ~diverged & ~_subtree_turns(torch.stack(momenta))
            # Merge valid subtrees: biased progressive pick, new edge, ρ, weight.
            u = torch.rand(batch, device=dev, generator=generator).double()
            take = valid & (u < (sub_log_w - log_w).exp())
            pick_x = torch.where(view(take), sub_x, pick_x)
            pick_e = torch.where(take, sub_e, pick_e)
            pick_g = torch.where(view(take), sub_g, pick_g)
            edge = (sx, sp, sg)
            right = tuple(torch.where(view(valid & forward), e, r) for e, r in zip(edge, right))
            left = tuple(torch.where(view(valid & ~forward), e, l) for e, l in zip(edge, left))
            rho = torch.where(view(valid), rho + torch.stack(momenta).sum(0).view_as(rho), rho)
            log_w = torch.where(valid, torch.logaddexp(log_w, sub_log_w), log_w)
            depth += valid.float()
            turned = _turns(rho.flatten(1), left[1].double().flatten(1),
                            right[1].double().flatten(1))
            active = valid & ~turned
        mean_accept = accept_sum / n_states.clamp(min=1)
        self._adapt(state, float(mean_accept.mean()))
        state.update(energy=pick_e, grad=pick_g)
        state["grad_evals"] += ran
        state["leapfrogs_needed"] += float(n_states.mean())
        return pick_x, state, {
            "energy": pick_e.mean(), "grad_norm": per_chain_norm(pick_g).mean(),
            "acceptance": mean_accept.mean().float(), "tree_depth": depth.mean(),
            "step_size_trace": torch.tensor(math.exp(state["log_eps"]))}

    def _adapt(self, state: dict, accept: float) -> None:
        """Dual averaging of log ε (Hoffman & Gelman 2014, Algorithm 5) during warm-up;
        at its end ε is frozen at the averaged iterate ε̄."""
        t, warmup = state["t"], self.warmup_for(state["steps"])
        if t >= warmup:
            return
        m, t0, gamma, kappa = t + 1, 10.0, 0.05, 0.75
        state["h_bar"] += ((self.target_accept - accept) - state["h_bar"]) / (m + t0)
        state["log_eps"] = state["mu"] - math.sqrt(m) / gamma * state["h_bar"]
        weight = m ** -kappa
        state["log_eps_bar"] = weight * state["log_eps"] + (1 - weight) * state["log_eps_bar"]
        if t == warmup - 1:
            state["log_eps"] = state["log_eps_bar"]

    def final_stats(self, state: dict) -> dict[str, float]:
        steps = max(state["steps"], 1)
        return {"step_size": math.exp(state["log_eps"]),
                "leapfrog_per_step": state["grad_evals"] / steps,
                "leapfrog_per_step_needed": state["leapfrogs_needed"] / steps}


def _turns(rho: Tensor, p_left: Tensor, p_right: Tensor) -> Tensor:
    """Generalised U-turn ``(…, B)`` from flattened ρ and edge momenta ``(…, B, D)``."""
    return ((rho * p_left).sum(-1) <= 0) | ((rho * p_right).sum(-1) <= 0)


def _subtree_turns(momenta: Tensor) -> Tensor:
    """Whether any aligned binary sub-block (sizes 2, 4, …, n) of a subtree's momenta
    ``(n, B, D)`` (in build order) makes a U-turn: ``(B,)``."""
    n = momenta.shape[0]
    turned = torch.zeros(momenta.shape[1], dtype=torch.bool, device=momenta.device)
    size = 2
    while size <= n:
        blocks = momenta.reshape(n // size, size, *momenta.shape[1:])
        turned |= _turns(blocks.sum(1), blocks[:, 0], blocks[:, -1]).any(0)
        size *= 2
    return turned
