"""VAE training by the (β-weighted) ELBO, ancestral sampling, and likelihood bounds.

    loss = mean_B [ −log p(x|z) + β · KL(q(z|x) ‖ p(z)) ],   z = μ + σ·ε (one draw per item)

Binarised MNIST (``dataset.binarize=dynamic``): every training batch is a fresh Bernoulli
draw of the grey images, made here with the checkpointed generator (so a resumed run sees
the same draws); the test split is binarised once, with a fixed seed, for evaluation.

Evaluation (``task=eval``): the test negative ELBO (one z per item, closed-form KL) and the
importance-sampled NLL (Burda et al. 2016, the IWAE bound)

    −log p(x) ≈ −log (1/k) Σ_k p(x|z_k) p(z_k) / q(z_k|x),   z_k ~ q(z|x)

with ``eval.iw_samples`` = k draws per item, ``eval.iw_batch`` items at a time, in nats.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ebmrun.logging.run_logger import image_grid
from ebmrun.objectives.base import DataInfo, EvalReport, Objective, OptimSettings, make_optimizer
from ebmrun.objectives.common import (BINARIZE_TEST_SEED, binarize, eval_mode, interleave_rows,
                                      with_box)
from ebmrun.samplers.base import SampleResult, Sampler

IW_ROWS = 20_000  # decoder rows per importance-sampling chunk (items x samples): bounds memory


class VAEObjective(Objective):
    """β-ELBO training of a :class:`ebmrun.models.vae.VAE`.

    Args:
        model: the VAE.
        sampler: used only by ``generate`` with ``latent_refine``.
        beta: weight of the KL term (1 = the ELBO; the metrics always use β = 1).
        binarize: ``dynamic`` to binarise every batch (the config follows
            ``dataset.binarize``); needs data in [0, 1].
        lr / betas: Adam settings for this model (null: ``optim.lr`` / ``optim.betas``,
            whose defaults suit deep EBMs, not auto-encoders).
        energy_samples: z draws per item in :meth:`energy` (−ELBO estimate with a fixed seed).
        latent_refine: ``generate`` runs the sampler on the latent energy
            ``½‖z‖² + refine_weight · F(mean(z))`` (F = −ELBO of the decoded mean at z = μ)
            before decoding, with the sampler's box removed (latents are unbounded).
        refine_weight: weight of F in that energy.
    """

    capturable_step = True

    train_metrics = ("loss", "kl", "neg_elbo", "recon")
    eval_metrics = ("vae/*",)

    def __init__(self, model: nn.Module, sampler: Sampler, data: DataInfo,
                 generator: torch.Generator, beta: float = 1.0, binarize: str | None = None,
                 lr: float | None = 1e-3, betas: list[float] | None = None,
                 energy_samples: int = 1, latent_refine: bool = False,
                 refine_weight: float = 1.0) -> None:
        super().__init__(model, data, generator)
        if beta < 0 or energy_samples < 1 or refine_weight < 0:
            raise ValueError("need beta >= 0, energy_samples >= 1, refine_weight >= 0")
        if binarize not in (None, "dynamic"):
            raise ValueError(f"binarize={binarize} is invalid (choose from: null, dynamic)")
        if (binarize or model.likelihood_name == "bernoulli") and data.value_range != (0.0, 1.0):
            what = "binarize" if binarize else "the bernoulli likelihood"
            raise ValueError(f"{what} needs data in [0, 1], got value_range "
                             f"{list(data.value_range)} (fix: dataset.value_range=[0,1])")
        self.sampler = sampler
        self.beta, self.binarize = float(beta), binarize
        self.lr, self.betas = lr, betas
        self.energy_samples = int(energy_samples)
        self.latent_refine, self.refine_weight = bool(latent_refine), float(refine_weight)
        self.uses_sampler = self.latent_refine  # the sampler refines z in generate only
        self.device = next(model.parameters()).device
        self.fixed_z = torch.randn(64, model.z_dim, device=self.device,
                                   generator=torch.Generator(device=self.device).manual_seed(0))
        self._last_x: Tensor | None = None  # the last training batch, for reconstructions

    def configure_optimizers(self, settings: OptimSettings) -> list[torch.optim.Optimizer]:
        return [make_optimizer(self.model.parameters(), settings, self.lr, self.betas)]

    def training_step(self, x: Tensor) -> dict[str, Tensor]:
        """β-ELBO of one batch (after a fresh binarisation when ``binarize``)."""
        if self.binarize:
            x = binarize(x, self.generator)
        eps = torch.randn(x.shape[0], self.model.z_dim, device=x.device,
                          generator=self.generator)
        recon, kl = self.model.batch_terms(x, eps)
        self._last_x = x[:32]
        return {"loss": recon + self.beta * kl, "recon": recon.detach(), "kl": kl.detach(),
                "neg_elbo": (recon + kl).detach()}

    # ---- sampling -------------------------------------------------------------------------

    def latent_energy(self, z: Tensor) -> Tensor:
        """``½‖z‖² + refine_weight · F(mean(z))`` ``(B,)`` for latents ``(B, z_dim)``."""
        x = self.model.decode_mean(z)
        recon, kl = self.model.elbo_terms(x, torch.zeros_like(z))
        return 0.5 * z.pow(2).sum(1) + self.refine_weight * (recon + kl)

    def generate(self, n: int, *, steps: int | None = None, generator: torch.Generator,
                 snapshot_every: int = 0) -> SampleResult:
        """Ancestral samples: z ~ N(0, I), x = E[x|z] (probabilities / means, clamped to the
        data range) ``(n, *item)``; with ``latent_refine`` z first runs the sampler."""
        z = torch.randn(n, self.model.z_dim, device=self.device, generator=generator)
        with eval_mode(self.model):
            if not self.latent_refine:
                with torch.no_grad():
                    return SampleResult(x=self._decode(z))
            result = with_box(self.sampler, None).sample(
                self.latent_energy, z, steps=steps, generator=generator,
                snapshot_every=snapshot_every)
            with torch.no_grad():
                return SampleResult(x=self._decode(result.x), stats=result.stats,
                                    chain=[self._decode(s) for s in result.chain])

    def _decode(self, z: Tensor) -> Tensor:
        return self.model.decode_mean(z).clamp(*self.data.value_range)

    @torch.no_grad()
    def energy(self, x: Tensor) -> Tensor:
        """−ELBO ``(B,)`` with ``energy_samples`` z draws from a fixed seed."""
        return self.model.energy(x, samples=self.energy_samples)

    # ---- evaluation -----------------------------------------------------------------------

    def binarized_test(self, test: Tensor) -> Tensor:
        """The test split as the model sees it: one fixed Bernoulli draw when ``binarize``."""
        if not self.binarize:
            return test
        return binarize(test, torch.Generator(device=test.device).manual_seed(BINARIZE_TEST_SEED))

    @torch.no_grad()
    def iw_nll(self, x: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """−log p̂_k(x) ``(B,)``: the IWAE bound with ``k`` samples, in chunks of samples
        so that at most :data:`IW_ROWS` decoder rows are alive at once."""
        chunk = max(1, IW_ROWS // x.shape[0])
        parts = []
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            eps = torch.randn(m, x.shape[0], self.model.z_dim, device=x.device,
                              generator=generator)
            parts.append(torch.logsumexp(self.model.log_weights(x, eps).double(), dim=0))
        return -(torch.logsumexp(torch.stack(parts), dim=0) - math.log(k)).float()

    @torch.no_grad()
    def evaluate(self, test: Tensor, settings, generator: torch.Generator) -> EvalReport:
        """Test −ELBO (and its two terms) and the IWAE NLL in nats per image; figures of
        reconstructions, prior samples and (z_dim = 2) the latent manifold."""
        x_all = self.binarized_test(test)
        recon_sum = kl_sum = nll_sum = 0.0
        for x in x_all.split(settings.batch_size):
            eps = torch.randn(x.shape[0], self.model.z_dim, device=x.device, generator=generator)
            recon, kl = self.model.elbo_terms(x, eps)
            recon_sum, kl_sum = recon_sum + float(recon.sum()), kl_sum + float(kl.sum())
        for x in x_all.split(settings.iw_batch):
            nll_sum += float(self.iw_nll(x, settings.iw_samples, generator).double().sum())
        n = len(x_all)
        report = EvalReport(metrics={
            "vae/test_neg_elbo": (recon_sum + kl_sum) / n, "vae/test_recon": recon_sum / n,
            "vae/test_kl": kl_sum / n, "vae/test_nll_iw": nll_sum / n,
            "vae/iw_samples": float(settings.iw_samples)})
        if self.data.is_image:
            report.figures.update({k: image_grid(v, self.data.value_range, nrow=16 if k ==
                                                 "vae_manifold" else 8)
                                   for k, v in self._pictures(x_all[:32], 16).items()})
        return report

    @torch.no_grad()
    def _pictures(self, x: Tensor | None, manifold_side: int) -> dict[str, Tensor]:
        out = {}
        with eval_mode(self.model):
            if x is not None:
                mu, _ = self.model.encode(x)
                out["vae_reconstructions"] = interleave_rows(x, self._decode(mu))
            out["vae_prior_samples"] = self._decode(self.fixed_z)
            if self.model.z_dim == 2:
                out["vae_manifold"] = self._decode(manifold_latents(manifold_side, self.device))
        return out

    def visuals(self, generator: torch.Generator) -> dict[str, Tensor]:
        """Reconstructions of the last batch (rows alternate input / reconstruction), fixed
        prior samples (a film over training) and, for z_dim = 2, an 8 x 8 manifold grid."""
        if not self.data.is_image:
            return {}
        return {k.removeprefix("vae_"): v for k, v in self._pictures(self._last_x, 8).items()}

    def state_dict(self) -> dict:
        # The tensor itself (it never changes in place): a recorded training step compares
        # the addresses of the objective's state to notice a load (ebmrun.captured_step).
        return {"fixed_z": self.fixed_z}

    def load_state_dict(self, state: dict) -> None:
        self.fixed_z = state["fixed_z"].to(self.device)


def manifold_latents(side: int, device: torch.device) -> Tensor:
    """``(side², 2)`` latents on a grid of Gaussian quantiles (5 % to 95 %), row-major with
    z₁ decreasing down the rows, so the grid shows the decoder across the prior's mass."""
    q = torch.linspace(0.05, 0.95, side, device=device)
    values = torch.erfinv(2 * q - 1) * math.sqrt(2)
    z1, z0 = torch.meshgrid(values.flip(0), values, indexing="ij")
    return torch.stack([z0.flatten(), z1.flatten()], dim=1)
