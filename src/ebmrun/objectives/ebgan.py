"""EBGAN training: margin loss for the auto-encoder discriminator, energy + pulling-away
term for the generator (Zhao, Mathieu & LeCun 2016).

    L_D = D(x) + [m − D(G(z))]₊          L_G = D(G(z)) + λ_PT · PT(S)

D(·) is the per-sample mean squared reconstruction error (``EBGAN.energy``), so m ≈ 1 fits
[-1, 1] images (the paper's m = 10 assumed summed errors: with it every fake sits inside
the margin forever and D only learns to push energies up). S are the discriminator's codes
of the generated batch. The losses are yielded per network (groups ``d`` then ``g``); the
runner steps them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebmrun.objectives.base import DataInfo, Objective, OptimSettings, make_optimizer
from ebmrun.objectives.common import eval_mode, interleave_rows, with_box
from ebmrun.samplers.base import SampleResult, Sampler


def pulling_away_term(codes: Tensor) -> Tensor:
    """PT = 1/(N(N−1)) Σ_{i≠j} cos²(S_i, S_j) for codes ``S`` ``(N, K)`` → scalar in [0, 1].

    Mean squared cosine similarity between distinct rows: 0 for mutually orthogonal codes,
    1 when all codes are parallel (mode collapse). Two wrong versions are popular:
    - forgetting the square: raw cosines of opposite sign cancel, so a collapsed batch
      split into two antipodal clusters scores ~0 and the term stops pulling codes apart;
    - normalising by the L1 norm of the whole batch (``S / S.abs().sum()``) instead of
      each row's L2 norm: the result is no cosine, depends on batch size and code
      magnitude, and is ~0 for any batch, so λ_PT has almost no effect.
    """
    n = codes.shape[0]
    if n < 2:
        return codes.new_zeros(())
    unit = F.normalize(codes.float(), dim=1, eps=1e-8)
    cos2 = (unit @ unit.T).pow(2)
    # Every diagonal entry is cos²(S_i, S_i) = 1 (0 for an all-zero code): drop it exactly.
    return (cos2.sum() - cos2.diagonal().sum()) / (n * (n - 1))


def margin_loss(e_real: Tensor, e_fake: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    """Discriminator loss ``mean D(x) + mean [m − D(G(z))]₊`` and the ``(B,)`` bool mask of
    fakes inside the margin (only those push D; fakes with energy ≥ m add zero)."""
    active = e_fake < margin
    return e_real.mean() + F.relu(margin - e_fake).mean(), active


# A collapsed generator, as measured (README "Model zoo"): every G(z) is one image (the
# codes are parallel, PT -> 1) and no fake lies inside the margin, so D only pushes data
# energies down. No such run recovered (seeds 7 and 8 of ebgan_mnist: flagged by step
# 200 / 700, run on to 3,000). No window of ~25 healthy 5,000-step runs met both bounds.
COLLAPSED_PT = 0.98
COLLAPSED_HINGE_ACTIVE = 0.01


@dataclass(frozen=True)
class LatentPrior:
    """p(z): how to draw it, its energy −log p(z) + const ``(B,)``, and its support box."""

    draw: Callable[[int, int, torch.device, torch.Generator], Tensor]
    energy: Callable[[Tensor], Tensor]
    box: tuple[float, float] | None


PRIORS: dict[str, LatentPrior] = {
    "normal": LatentPrior(
        draw=lambda n, d, dev, g: torch.randn(n, d, device=dev, generator=g),
        energy=lambda z: 0.5 * z.pow(2).sum(1), box=None),
    "uniform": LatentPrior(
        draw=lambda n, d, dev, g: torch.rand(n, d, device=dev, generator=g) * 2 - 1,
        energy=lambda z: z.new_zeros(z.shape[0]), box=(-1.0, 1.0)),
}


class EBGANObjective(Objective):
    """Margin loss + pulling-away term, two Adam optimizers, fixed-z sample film.

    Args:
        model: an :class:`ebmrun.models.ebgan.EBGAN`.
        sampler: used only by ``generate`` when ``latent_refine`` is on.
        margin: m; fakes with D(G(z)) ≥ m no longer push the discriminator.
        pt_weight: λ_PT.
        prior: ``normal`` | ``uniform`` (on [-1, 1]) latent prior, see :data:`PRIORS`.
        lr_g / lr_d: learning rates (``null`` = ``optim.lr``); betas likewise.
        d_steps / g_steps: discriminator and generator updates per batch (the ratio).
        fresh_z: the generator step draws new latents instead of reusing the fakes the
            discriminator just saw (one more generator forward pass per step).
        latent_refine: ``generate`` (``task=sample``) refines z by the sampler on the latent
            energy ``refine_weight · D(G(z)) + E_prior(z)`` (½‖z‖² for ``normal``) before
            decoding. The configured sampler's box is sized for data, not latents, so a
            copy with the prior's box (none for ``normal``, [-1, 1] for ``uniform``) runs.
        refine_weight: scale of D(G(z)) in the latent energy (D is a per-pixel mean, tiny
            next to ½‖z‖²; ~100 lets the discriminator steer z without collapsing it).
        n_fixed: how many fixed latents the sample film shows.
    """

    # No host reads in the step. (Its first GPU check, 2026-11-30, compared the replay with
    # default Adam's eager step; against the same step with capturable Adam it passes.)
    capturable_step = True

    train_metrics = ("loss", "loss_d", "loss_g", "energy_real", "energy_fake", "hinge_active",
                     "pt")

    groups = ("d", "g")  # D's update first: G's loss sees the updated D

    def __init__(self, model: nn.Module, sampler: Sampler, data: DataInfo,
                 generator: torch.Generator, margin: float = 1.0, pt_weight: float = 0.1,
                 prior: str = "normal", lr_g: float | None = None, lr_d: float | None = None,
                 betas_g: list[float] | None = None, betas_d: list[float] | None = None,
                 d_steps: int = 1, g_steps: int = 1, fresh_z: bool = False,
                 latent_refine: bool = False,
                 refine_weight: float = 100.0, n_fixed: int = 64) -> None:
        super().__init__(model, data, generator)
        if prior not in PRIORS:
            raise ValueError(f"unknown prior {prior!r} (choose from: {', '.join(PRIORS)})")
        if margin <= 0 or pt_weight < 0 or d_steps < 1 or g_steps < 1 or n_fixed < 1:
            raise ValueError("need margin > 0, pt_weight >= 0, d_steps >= 1, g_steps >= 1, "
                             "n_fixed >= 1")
        low, high = data.value_range
        m_low, m_high = model.value_range
        if low < m_low or high > m_high:
            raise ValueError(f"the data lie in [{low}, {high}] but the EBGAN outputs only "
                             f"[{m_low}, {m_high}] (fix: model.net.value_range=[{low},{high}])")
        self.sampler = sampler
        self.margin, self.pt_weight = float(margin), float(pt_weight)
        self.prior = PRIORS[prior]
        self.lr = {"g": lr_g, "d": lr_d}
        self.betas = {"g": betas_g, "d": betas_d}
        self.d_steps, self.g_steps = int(d_steps), int(g_steps)
        self.fresh_z = bool(fresh_z)
        self.latent_refine, self.refine_weight = bool(latent_refine), float(refine_weight)
        self.uses_sampler = self.latent_refine  # the sampler refines z in generate only
        self.device = next(model.parameters()).device
        # A fixed latent batch: the same z every picture, so the grids play as a film. It
        # is drawn from its own seeded stream and saved with the objective's state.
        self.fixed_z = self.draw_z(n_fixed, torch.Generator(device=self.device).manual_seed(0))
        self._last: dict[str, Tensor] = {}
        self._last_real: Tensor | None = None  # for the reconstruction pictures
        self._last_fake: Tensor | None = None

    def draw_z(self, n: int, generator: torch.Generator) -> Tensor:
        """Latents ``(n, z_dim)`` from the prior."""
        return self.prior.draw(n, self.model.z_dim, self.device, generator)

    def configure_optimizers(self, settings: OptimSettings) -> list[torch.optim.Optimizer]:
        """``[discriminator optimizer, generator optimizer]`` (``groups`` order; per-network
        lr/betas)."""
        return [make_optimizer(self.model.discriminator.parameters(), settings,
                               self.lr["d"], self.betas["d"]),
                make_optimizer(self.model.generator.parameters(), settings,
                               self.lr["g"], self.betas["g"])]

    def training_step(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        """``d_steps`` discriminator losses then ``g_steps`` generator losses on ``x``,
        yielded in update order: the runner steps D before G's loss is computed, so G
        trains against the D of this step."""
        batch = x.shape[0]
        for i in range(self.d_steps):
            # The last fake batch keeps its graph: the first G loss reuses it, saving a
            # generator forward pass per step.
            with torch.set_grad_enabled(i == self.d_steps - 1 and not self.fresh_z):
                fake = self.model.generate(self.draw_z(batch, self.generator))
            loss_d, d_out = self._d_loss(x, fake.detach())
            yield "d", loss_d
        for j in range(self.g_steps):
            if j > 0 or self.fresh_z:
                fake = self.model.generate(self.draw_z(batch, self.generator))
            loss_g, g_out = self._g_loss(fake)
            yield "g", loss_g
        self._last_real, self._last_fake = x.detach()[:32], fake.detach()[:32]
        out = {**d_out, **g_out}
        # "loss" (what metrics.json / sweeps report): the sum of both players' losses.
        out["loss"] = out["loss_d"] + out["loss_g"]
        return out

    def _d_loss(self, x: Tensor, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if getattr(self.model, "batch_dependent_energy", False):
            # BatchNorm in D: real and fake batches get their own statistics (as in the
            # short script); a joint pass would mix them.
            e_real, _ = self.model.energy_and_code(x)
            e_fake, _ = self.model.energy_and_code(fake)
        else:  # no BatchNorm in D: one joint pass gives the same energies, faster
            energies, _ = self.model.energy_and_code(torch.cat([x, fake]))
            e_real, e_fake = energies[: x.shape[0]], energies[x.shape[0]:]
        loss_d, active = margin_loss(e_real, e_fake, self.margin)
        self._last = {"energy/real": e_real.detach(), "energy/fake": e_fake.detach()}
        return loss_d, {"loss_d": loss_d.detach(), "energy_real": e_real.mean().detach(),
                        "energy_fake": e_fake.mean().detach(),
                        "hinge_active": active.float().mean()}

    def _g_loss(self, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        e_fake, codes = self.model.energy_and_code(fake)
        pt = pulling_away_term(codes)
        loss_g = e_fake.mean() + self.pt_weight * pt
        return loss_g, {"loss_g": loss_g.detach(), "pt": pt.detach()}

    def latent_energy(self, z: Tensor) -> Tensor:
        """``refine_weight · D(G(z)) + E_prior(z)`` ``(B,)`` for latents ``(B, z_dim)``."""
        return self.refine_weight * self.model.energy(self.model.generate(z)) \
            + self.prior.energy(z)

    def generate(self, n: int, *, steps: int | None = None, generator: torch.Generator,
                 snapshot_every: int = 0) -> SampleResult:
        """``n`` samples G(z) ``(n, *item)``; with ``latent_refine``, z first runs ``steps``
        (default: the sampler's) sampler steps on :meth:`latent_energy`, and the chain's
        latent snapshots are decoded to images."""
        z = self.draw_z(n, generator)
        if not self.latent_refine:
            with torch.no_grad():
                return SampleResult(x=self.model.generate(z))
        # The data box would clamp latents wrongly: use the prior's support instead.
        sampler = with_box(self.sampler, self.prior.box)
        result = sampler.sample(self.latent_energy, z, steps=steps, generator=generator,
                                snapshot_every=snapshot_every)
        with torch.no_grad():
            chain = [self.model.generate(snap) for snap in result.chain]
            return SampleResult(x=self.model.generate(result.x), stats=result.stats, chain=chain)

    @torch.no_grad()
    def energy(self, x: Tensor) -> Tensor:
        """The discriminator's reconstruction error D(x) ``(B,)``."""
        return self.model.energy(x)

    def visuals(self, generator: torch.Generator) -> dict[str, Tensor]:
        """Fixed-z samples (a film over steps), and D's reconstructions: rows alternate
        input / reconstruction for real and generated images."""
        if not self.data.is_image:
            return {}
        with eval_mode(self.model):
            out = {"samples_fixed_z": self.model.generate(self.fixed_z)}
            for name, images in (("real", self._last_real), ("fake", self._last_fake)):
                if images is not None:
                    recon, _ = self.model.reconstruct(images[:32])
                    out[f"reconstruction_{name}"] = interleave_rows(images[:32], recon)
        return out

    def health_warning(self, window: dict[str, float]) -> str | None:
        """Mode collapse: the window's mean PT >= :data:`COLLAPSED_PT` and at most
        :data:`COLLAPSED_HINGE_ACTIVE` of the fakes inside the margin."""
        pt, active = window.get("pt"), window.get("hinge_active")
        if pt is None or active is None or pt < COLLAPSED_PT or active > COLLAPSED_HINGE_ACTIVE:
            return None
        return (f"the generator has collapsed to one image (pulling-away term {pt:.3f}, "
                f"{active:.1%} of fakes inside the margin {self.margin:g}); collapsed EBGAN "
                f"runs do not recover (fix: train again with another seed=; "
                f"trainer.health_restarts=N does that by itself)")

    def reference_lines(self) -> dict[str, float]:
        return {"energy/margin": self.margin}  # D(fake) >= m: the fake no longer pushes D

    def histograms(self) -> dict[str, Tensor]:
        return dict(self._last)

    def state_dict(self) -> dict:
        # The tensor itself (it never changes in place): a recorded training step compares
        # the addresses of the objective's state to notice a load (ebmrun.captured_step).
        return {"fixed_z": self.fixed_z}

    def load_state_dict(self, state: dict) -> None:
        self.fixed_z = state["fixed_z"].to(self.device)
