"""Score matching: train an energy E_θ(x) from data alone, without sampling the model.

With the score s(x) = −∇ₓE(x), Hyvärinen's (2005) objective is, up to a constant,

    exact:      J = E_data[ ½‖∇E(x)‖² − tr ∇²E(x) ]
    sliced:     J = E_data E_v[ ½(vᵀ∇E(x))² − vᵀ∇²E(x) v ]     v: E[vvᵀ] = I (Song et al. 2019)
    denoising:  J = E_data E_ε[ ½‖ε − σ_L ∇E(x + σε)‖² ]        (Vincent 2011, weighted by σ²)

Exact needs one backward pass per input dimension for the Hessian trace, so it is refused
above ``max_exact_dim``; sliced needs one Hessian-vector product per projection
(``variance_reduction`` replaces ½(vᵀ∇E)² by its expectation ½‖∇E‖²); denoising needs only
the first derivative and fits the data smoothed by N(0, σ²).

Several noise levels (``sigmas``, NCSN-style): σ is drawn per item and the model is the
noise-conditional energy E(x, σ) = E_θ(x) · σ_L/σ (σ_L the smallest level; NCSNv2 divides
the network's score by σ the same way), so E_θ itself is the model at σ_L and the annealed
Langevin sampler (``sampler=annealed_langevin`` with ``sampler.sigmas``) gets E(x, σ).
With σ = σ_L the denoising loss above is exactly the σ²-weighted one.

The energy needs a second derivative for exact and sliced score matching: use smooth
activations (the deep-EBM networks use SiLU).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ebmrun.logging import figures, plots2d
from ebmrun.objectives.base import DataInfo, Objective, OptimSettings, make_optimizer
from ebmrun.objectives.common import ChainsFromNoise
from ebmrun.samplers.base import Sampler

EnergyFn = Callable[[Tensor], Tensor]


def energy_and_input_grad(energy_fn: EnergyFn, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, E (B,), ∇ₓE (shape of x))`` with the graph kept, so losses built from the
    gradient can be differentiated again (for the Hessian and for the parameters)."""
    x = x.detach().requires_grad_(True)
    energy = energy_fn(x)
    (grad,) = torch.autograd.grad(energy.sum(), x, create_graph=True)
    return x, energy, grad


def exact_score_matching(energy_fn: EnergyFn, x: Tensor) -> Tensor:
    """Per-item ½‖∇E‖² − tr ∇²E ``(B,)`` of ``x`` ``(B, *item)``: one backward per dim."""
    x, _, grad = energy_and_input_grad(energy_fn, x)
    flat = grad.flatten(1)
    trace = torch.zeros(x.shape[0], device=x.device, dtype=grad.dtype)
    for i in range(flat.shape[1]):
        (second,) = torch.autograd.grad(flat[:, i].sum(), x, create_graph=True)
        trace = trace + second.flatten(1)[:, i]
    return 0.5 * flat.pow(2).sum(1) - trace


def sliced_score_matching(energy_fn: EnergyFn, x: Tensor, v: Tensor,
                          variance_reduction: bool = False) -> Tensor:
    """Per-item sliced objective ``(B,)``, averaged over projections ``v`` ``(M, B, *item)``:
    mean_m [½(v_mᵀ∇E)² − v_mᵀ∇²E v_m] (or ½‖∇E‖² − mean_m v_mᵀ∇²E v_m)."""
    x, _, grad = energy_and_input_grad(energy_fn, x)
    terms = []
    for v_m in v:
        grad_v = (grad * v_m).flatten(1).sum(1)
        (hvp,) = torch.autograd.grad(grad_v.sum(), x, create_graph=True)  # ∇²E v, per item
        vhv = (hvp * v_m).flatten(1).sum(1)
        first = 0.5 * grad.flatten(1).pow(2).sum(1) if variance_reduction else 0.5 * grad_v**2
        terms.append(first - vhv)
    return torch.stack(terms).mean(0)


def denoising_score_matching(energy_fn: EnergyFn, x_noisy: Tensor, eps: Tensor,
                             scale: float | Tensor) -> Tensor:
    """Per-item ½‖ε − scale·∇E(x̃)‖² ``(B,)`` at noisy points ``x̃ = x + σε``; ``scale`` is
    σ_L (the σ²-weighted loss of the conditional energy E_θ·σ_L/σ, see the module doc)."""
    _, _, grad = energy_and_input_grad(energy_fn, x_noisy)
    return 0.5 * (eps - scale * grad).flatten(1).pow(2).sum(1)


def rademacher(shape: Sequence[int], generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.randint(0, 2, tuple(shape), generator=generator, device=device).float() * 2 - 1


def gaussian(shape: Sequence[int], generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.randn(tuple(shape), generator=generator, device=device)


PROJECTIONS = {"rademacher": rademacher, "gaussian": gaussian}


class DirectEnergyObjective(ChainsFromNoise, Objective):
    """Shared plumbing of objectives that fit an energy without sampling it (score
    matching, NCE): Adam settings, fresh samples from the ``sampler`` group for pictures
    and ``task=sample``, the 2-D picture panel. Subclasses write ``training_step``.

    Args:
        sampler: draws samples from chains started uniformly in the data box.
        lr / betas: Adam settings for this model (null: ``optim.lr`` / ``optim.betas``).
        sample_steps: sampler steps for fresh samples (pictures, ``task=sample``).
    """

    RECENT_POINTS = 8192

    def __init__(self, model: nn.Module, sampler: Sampler, data: DataInfo,
                 generator: torch.Generator, lr: float | None = None,
                 betas: list[float] | None = None, sample_steps: int = 256) -> None:
        super().__init__(model, data, generator)
        if sample_steps < 0:
            raise ValueError(f"sample_steps must be >= 0, got {sample_steps}")
        self.sampler, self.lr, self.betas = sampler, lr, betas
        self.sample_steps = int(sample_steps)
        self.device = next(model.parameters()).device
        self._recent_data = torch.empty(0, *data.item_shape, device=self.device)
        self._last: dict[str, Tensor] = {}

    def configure_optimizers(self, settings: OptimSettings) -> list[torch.optim.Optimizer]:
        return [make_optimizer(self.model.parameters(), settings, self.lr, self.betas)]

    def remember(self, x: Tensor) -> None:
        """Keep recent real points (2-D data): the "data" panel of the pictures."""
        if not self.data.is_image:
            self._recent_data = torch.cat([x.detach(), self._recent_data])[: self.RECENT_POINTS]

    def visuals(self, generator: torch.Generator) -> dict[str, Tensor]:
        """Images: fresh samples. 2-D: data | exp(−E) | samples from noise."""
        if self.data.is_image:
            return {"samples_from_noise": self.generate(64, generator=generator).x}
        box = self.data.box
        panel = figures.panels_2d([
            figures.Panel("data", points=self._recent_data),
            figures.Panel("exp(−E)", values=plots2d.density_values(
                self.model.energy, box, item_shape=self.data.item_shape, device=self.device)),
            figures.Panel("samples from noise",
                          points=self.generate(2000, generator=generator).x)], box)
        return {"data_model_samples": plots2d.in_value_range(panel, self.data.value_range)}

    def histograms(self) -> dict[str, Tensor]:
        return dict(self._last)


class ScoreMatching(DirectEnergyObjective):
    """Score matching for any energy network (``model.net`` with ``energy(x) -> (B,)``).

    Args:
        method: ``exact`` | ``sliced`` | ``denoising``.
        sigmas: denoising noise level(s) σ, in data units (several: NCSN-style, σ drawn
            uniformly per item; the learned E_θ is the model at the smallest).
        projections: sliced: projection vectors per item.
        projection: sliced: ``rademacher`` | ``gaussian`` vectors.
        variance_reduction: sliced: use ½‖∇E‖² for the first term (SSM-VR).
        max_exact_dim: exact is refused for items with more values than this (its cost is
            one backward pass per dimension).
        lr, betas, sample_steps: see :class:`DirectEnergyObjective`.
    """

    train_metrics = ("loss", "energy_data")

    def __init__(self, model: nn.Module, sampler: Sampler, data: DataInfo,
                 generator: torch.Generator, method: str = "denoising",
                 sigmas: list[float] | None = None, projections: int = 1,
                 projection: str = "rademacher", variance_reduction: bool = False,
                 max_exact_dim: int = 16, lr: float | None = 1e-3,
                 betas: list[float] | None = None, sample_steps: int = 256) -> None:
        super().__init__(model, sampler, data, generator, lr, betas, sample_steps)
        losses = {"exact": self._exact_loss, "sliced": self._sliced_loss,
                  "denoising": self._denoising_loss}
        if method not in losses:
            raise ValueError(f"method={method!r} is invalid (choose from: {', '.join(losses)})")
        dim = math.prod(data.item_shape)
        if method == "exact" and dim > max_exact_dim:
            raise ValueError(f"method=exact needs one backward pass per dimension and items "
                             f"here have {dim} > max_exact_dim={max_exact_dim} (fix: "
                             f"model.objective.method=sliced or denoising, or raise "
                             f"model.objective.max_exact_dim)")
        sigmas = [0.1] if sigmas is None else [float(s) for s in sigmas]
        if not sigmas or min(sigmas) <= 0:
            raise ValueError(f"sigmas must be a non-empty list of numbers > 0, got {sigmas}")
        if projections < 1 or projection not in PROJECTIONS:
            raise ValueError(f"need projections >= 1 and projection in "
                             f"{', '.join(PROJECTIONS)}, got {projections}, {projection!r}")
        self.method, self.loss_fn = method, losses[method]
        self.sigmas = torch.tensor(sigmas, device=self.device)
        self.sigma_min = float(min(sigmas))
        self.projections, self.projection = int(projections), PROJECTIONS[projection]
        self.variance_reduction = bool(variance_reduction)

    def _exact_loss(self, x: Tensor) -> Tensor:
        return exact_score_matching(self.model.energy, x)

    def _sliced_loss(self, x: Tensor) -> Tensor:
        v = self.projection((self.projections, *x.shape), self.generator, x.device)
        return sliced_score_matching(self.model.energy, x, v, self.variance_reduction)

    def _denoising_loss(self, x: Tensor) -> Tensor:
        pick = torch.randint(0, len(self.sigmas), (x.shape[0],), device=x.device,
                             generator=self.generator)
        sigma = self.sigmas[pick].view(-1, *[1] * (x.dim() - 1))
        eps = torch.randn(x.shape, device=x.device, generator=self.generator)
        return denoising_score_matching(self.model.energy, x + sigma * eps, eps, self.sigma_min)

    def training_step(self, x: Tensor) -> dict[str, Tensor]:
        self.remember(x)
        per_item = self.loss_fn(x)
        with torch.no_grad():
            energy = self.model.energy(x)
        self._last = {"energy/data": energy, "score_matching/per_item": per_item.detach()}
        return {"loss": per_item.mean(), "energy_data": energy.mean()}

    def sampling_energy(self, x: Tensor, sigma: Tensor | None = None) -> Tensor:
        """E_θ(x), or E(x, σ) = E_θ(x)·σ_L/σ when the sampler passes noise levels σ ``(B,)``."""
        energy = self.model.energy(x)
        return energy if sigma is None else energy * (self.sigma_min / sigma)
