"""Block Gibbs sampling for bipartite binary models (restricted Boltzmann machines).

One step updates every unit of one layer at once, which is exact because the layers are
conditionally independent given each other:

    h ~ Bernoulli(σ(hidden_logits(v) / T)),     v ← Bernoulli(σ(visible_logits(h) / T))

Unlike the other samplers this one cannot work from an energy alone: it needs the model's
block conditionals. The ``energy_fn`` argument of :meth:`Sampler.sample` must therefore be
an object with the :class:`BlockConditionals` methods (an :class:`ebmrun.models.rbm.RBM`
is one). The sampler still knows nothing of optimizers or training; the RBM objective
passes its model and chain states (PCD chains, or the data for CD-k), and ``steps`` is the
k of CD-k / PCD-k. Select it with ``sampler=gibbs`` (``model=rbm`` picks it by default).

Stats: ``energy`` is the mean free energy F(v) of the state each step starts from (free:
the hidden pre-activations are computed anyway); ``acceptance`` is 1 (Gibbs moves are never
rejected); ``grad_norm`` is NaN (no gradients are involved).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ebmrun.errors import UserError
from ebmrun.samplers.base import EnergyFn, Sampler


@runtime_checkable
class BlockConditionals(Protocol):
    """What block Gibbs needs from a bipartite binary model (V visible, H hidden units)."""

    def hidden_logits(self, v: Tensor) -> Tensor:
        """``(B, V) -> (B, H)``: log-odds of ``h_j = 1`` given ``v``."""

    def visible_logits(self, h: Tensor) -> Tensor:
        """``(B, H) -> (B, V)``: log-odds of ``v_i = 1`` given ``h``."""

    def free_energy(self, v: Tensor, hidden_logits: Tensor | None = None) -> Tensor:
        """``(B, V) -> (B,)``: F(v), reusing ``hidden_logits`` of ``v`` when given."""


def bernoulli_logits(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """One Bernoulli draw per entry with probability σ(logits) (same shape, 0/1 floats)."""
    return torch.bernoulli(torch.sigmoid(logits), generator=generator)


class BlockGibbs(Sampler):
    """Alternating block Gibbs v → h → v on a :class:`BlockConditionals` model.

    Args:
        steps: full v → h → v sweeps per ``sample`` call (k of CD-k / PCD-k).
        temperature: T in p ∝ exp(−E(v, h)/T): the conditionals use logits / T.
        autocast: accepted for a uniform sampler interface; block Gibbs runs in float32.

    ``sample(model, v0)`` takes states ``v0`` of shape ``(B, V)`` or ``(B, *item_shape)``
    (values in [0, 1]; the first sweep reads grey values as they are) and returns binary
    states of the same shape.
    """

    capturable = True  # fixed-size tensor ops only: the loop replays as a CUDA graph
    always_accepts = True  # every sweep is taken

    def __init__(self, steps: int = 1, temperature: float = 1.0,
                 autocast: str | None = None) -> None:
        super().__init__(steps=steps, temperature=temperature, box=None, autocast=autocast)

    def init_state(self, energy_fn: EnergyFn, x: Tensor, generator: torch.Generator | None
                   ) -> dict:
        if not isinstance(energy_fn, BlockConditionals):
            raise UserError(
                f"sampler=gibbs needs a model with block conditionals (model=rbm), got "
                f"{getattr(energy_fn, '__qualname__', type(energy_fn).__name__)} (fix: pick "
                f"a gradient sampler for this model, e.g. sampler=langevin or sampler=mala)")
        return {}

    @torch.no_grad()
    def chain_energy(self, energy_fn: EnergyFn, x: Tensor, state: dict) -> Tensor:
        return energy_fn.free_energy(x.flatten(1)).float()  # F(v): the visible marginal

    def target_score(self, energy_fn: EnergyFn, x: Tensor) -> Tensor | None:
        return None  # binary states: no score

    @torch.no_grad()
    def step(self, energy_fn: EnergyFn, x: Tensor, state: dict,
             generator: torch.Generator | None) -> tuple[Tensor, dict, dict[str, Tensor]]:
        model: BlockConditionals = energy_fn  # checked in init_state
        flat = x.flatten(1)
        h_logits = model.hidden_logits(flat)
        energy = model.free_energy(flat, hidden_logits=h_logits).mean()
        h = bernoulli_logits(h_logits / self.temperature, generator)
        v = bernoulli_logits(model.visible_logits(h) / self.temperature, generator)
        x = v.view_as(x).to(x.dtype)
        # On the chains' device: a host tensor here would be a copy per step (and a graph
        # cannot record a copy from pageable host memory).
        return x, state, {"energy": energy, "grad_norm": energy.new_full((), float("nan")),
                          "acceptance": energy.new_ones(())}
