"""RBM training by contrastive divergence: CD-k or persistent CD (PCD-k).

    loss = mean_B F(v_data) − mean_B F(v_model)

Its parameter gradient is the usual CD update ⟨∂E/∂θ⟩_data − ⟨∂E/∂θ⟩_model with the hidden
units summed out (F is the free energy). The negatives v_model come from ``sampler=gibbs``
(k = ``sampler.steps`` block Gibbs sweeps), started at the data batch (CD-k, Hinton 2002)
or at persistent chains carried across updates (PCD, Tieleman 2008), which follow the
model and mix far better for the same k. The chains live in the checkpoint.

Data: items are mapped from the data's value range into [0, 1] (grey values are pixel
probabilities). With ``dataset.binarize=dynamic`` every batch is a fresh Bernoulli draw
(checkpointed generator) and the test split is the VAE's fixed draw, so the two families'
test log-likelihoods are on the same binary images.

Evaluation (``task=eval``): log Z by annealed importance sampling (``eval.ais_chains``,
``eval.ais_steps``; :mod:`ebmrun.metrics.ais`) and the test log-likelihood
mean(−F(v)) − log Z in nats per image (``rbm/test_ll_ais``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebmrun.logging.run_logger import image_grid
from ebmrun.metrics.ais import ais_log_partition, base_rate_bias
from ebmrun.models.rbm import RBM
from ebmrun.objectives.base import DataInfo, EvalReport, Objective, OptimSettings, make_optimizer
from ebmrun.objectives.common import BINARIZE_TEST_SEED, binarize, eval_mode
from ebmrun.samplers.base import SampleResult, Sampler
from ebmrun.samplers.gibbs import BlockGibbs, bernoulli_logits


class RBMObjective(Objective):
    """CD-k / PCD-k for an :class:`ebmrun.models.rbm.RBM`.

    Args:
        model: the :class:`~ebmrun.models.rbm.RBM`.
        sampler: block Gibbs (``sampler=gibbs``); ``sampler.steps`` is k.
        persistent: PCD (chains carried across updates); False: CD-k from the data.
        binarize: ``dynamic`` draws binary images from the grey values of every batch (the
            config follows ``dataset.binarize``).
        init_visible_bias: set the visible biases to the log-odds of the first batch's pixel
            means before the first update (Hinton's practical guide): the model starts at
            the base rate instead of at uniform noise.
        lr / betas: Adam settings for this model (null: ``optim.lr`` / ``optim.betas``).
        sample_steps: Gibbs sweeps for fresh samples (pictures, ``task=sample``).
    """

    train_metrics = ("loss", "free_energy_data", "free_energy_chains", "recon_bce")
    # No host reads in the step; the persistent chains are updated in place.
    capturable_step = True
    eval_metrics = ("rbm/*",)

    def __init__(self, model: nn.Module, sampler: Sampler, data: DataInfo,
                 generator: torch.Generator, persistent: bool = True,
                 binarize: str | None = None, init_visible_bias: bool = True,
                 lr: float | None = 1e-3, betas: list[float] | None = None,
                 sample_steps: int = 1000) -> None:
        super().__init__(model, data, generator)
        if not isinstance(sampler, BlockGibbs):
            raise ValueError(f"model=rbm draws its negatives by block Gibbs, got sampler "
                             f"{type(sampler).__name__} (fix: sampler=gibbs)")
        if not isinstance(model, RBM):
            raise ValueError(f"the rbm objective trains an RBM (model.net._target_="
                             f"ebmrun.models.rbm.RBM), got {type(model).__name__}")
        if binarize not in (None, "dynamic"):
            raise ValueError(f"binarize={binarize} is invalid (choose from: null, dynamic)")
        if sample_steps < 0:
            raise ValueError(f"sample_steps must be >= 0, got {sample_steps}")
        self.sampler = sampler
        self.persistent, self.binarize = bool(persistent), binarize
        self.init_visible_bias = bool(init_visible_bias)
        self.lr, self.betas = lr, betas
        self.sample_steps = int(sample_steps)
        self.chains: Tensor | None = None  # PCD states (B, V), created from the first batch
        self.bias_initialised = False
        self._last: dict[str, Tensor] = {}

    def configure_optimizers(self, settings: OptimSettings) -> list[torch.optim.Optimizer]:
        return [make_optimizer(self.model.parameters(), settings, self.lr, self.betas)]

    # ---- data <-> visible units -------------------------------------------------------------

    def to_visible(self, x: Tensor) -> Tensor:
        """Items ``(B, *item)`` in the value range -> visible values ``(B, V)`` in [0, 1]."""
        low, high = self.data.value_range
        return ((x.flatten(1).float() - low) / (high - low)).clamp_(0.0, 1.0)

    def from_visible(self, v: Tensor) -> Tensor:
        """Visible values ``(B, V)`` in [0, 1] -> items ``(B, *item)`` in the value range."""
        low, high = self.data.value_range
        return (v * (high - low) + low).reshape(-1, *self.data.item_shape)

    def test_visible(self, test: Tensor) -> Tensor:
        """The test split as the model sees it: one fixed Bernoulli draw when binarising."""
        v = self.to_visible(test)
        if self.binarize:
            v = binarize(v, torch.Generator(device=v.device).manual_seed(BINARIZE_TEST_SEED))
        return v

    # ---- training ---------------------------------------------------------------------------

    def training_step(self, x: Tensor) -> dict[str, Tensor]:
        v = self.to_visible(x)
        if self.binarize:
            v = binarize(v, self.generator)
        if self.init_visible_bias and not self.bias_initialised:
            with torch.no_grad():
                p = v.mean(0).clamp(1e-3, 1 - 1e-3)
                self.model.visible_bias.copy_(torch.log(p) - torch.log1p(-p))
        self.bias_initialised = True
        if self.persistent and (self.chains is None or self.chains.shape != v.shape):
            self.chains = v.clone()  # PCD chains start at the data, then follow the model
        start = self.chains if self.persistent else v
        negatives = self.sampler.sample(self.model, start, generator=self.generator)
        if self.persistent:  # in place: a recorded step reads and writes the same tensor
            self.chains.copy_(negatives.x)
        both = torch.cat([v, negatives.x])  # one matmul for data and negatives
        h_logits = self.model.hidden_logits(both)
        free = self.model.free_energy(both, hidden_logits=h_logits)
        f_data, f_model = free[: len(v)], free[len(v):]
        with torch.no_grad():  # one mean-field reconstruction: the classic training monitor
            h_data = h_logits[: len(v)]
            probs = torch.sigmoid(self.model.visible_logits(torch.sigmoid(h_data)))
            recon = F.binary_cross_entropy(probs, v, reduction="none").sum(1).mean()
            self._last = {"free_energy/data": f_data.detach(),
                          "free_energy/chains": f_model.detach(),
                          "hidden/p_on": torch.sigmoid(h_data[:16]).flatten()}
        return {"loss": f_data.mean() - f_model.mean(), "recon_bce": recon,
                "free_energy_data": f_data.mean().detach(),
                "free_energy_chains": f_model.mean().detach()}

    # ---- sampling ---------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, n: int, *, steps: int | None = None, generator: torch.Generator,
                 snapshot_every: int = 0) -> SampleResult:
        """``n`` chains started from the visible biases' own Bernoulli draw, ``steps``
        (default ``sample_steps``) Gibbs sweeps; returns p(v | h) of the final hidden draw
        (grey pixel probabilities, the customary picture) in the value range."""
        steps = self.sample_steps if steps is None else steps
        bias = self.model.visible_bias.detach().float()
        v0 = bernoulli_logits(bias.expand(n, -1), generator)
        result = self.sampler.sample(self.model, v0, steps=steps, generator=generator,
                                     snapshot_every=snapshot_every)
        h = bernoulli_logits(self.model.hidden_logits(result.x), generator)
        probs = torch.sigmoid(self.model.visible_logits(h))
        return SampleResult(x=self.from_visible(probs), stats=result.stats,
                            chain=[self.from_visible(s) for s in result.chain])

    def energy(self, x: Tensor) -> Tensor:
        """The free energy ``(B,)`` of items ``x`` in the value range (grey = probabilities)."""
        return self.model.free_energy(self.to_visible(x))

    # ---- evaluation -------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, test: Tensor, settings, generator: torch.Generator) -> EvalReport:
        """log Z by AIS (base rate: the test pixel means) and the test log-likelihood in
        nats per item; figures of filters and samples for images."""
        v = self.test_visible(test)
        ais = ais_log_partition(self.model, settings.ais_chains, settings.ais_steps,
                                generator, base_bias=base_rate_bias(v))
        free = torch.cat([self.model.free_energy(chunk).double()
                          for chunk in v.split(settings.batch_size)])
        recon = sum(float(F.binary_cross_entropy(
            torch.sigmoid(self.model.visible_logits(torch.sigmoid(self.model.hidden_logits(c)))),
            c, reduction="sum")) for c in v.split(settings.batch_size)) / len(v)
        report = EvalReport(metrics={
            "rbm/test_ll_ais": float(-free.mean()) - ais.log_z,
            "rbm/log_z_ais": ais.log_z,
            "rbm/ais_ess": ais.ess, "rbm/ais_log_w_std": float(ais.log_weights.std()),
            "rbm/test_free_energy": float(free.mean()), "rbm/test_recon_bce": recon,
            "rbm/ais_chains": float(settings.ais_chains),
            "rbm/ais_steps": float(settings.ais_steps)})
        if self.data.is_image:
            with eval_mode(self.model):
                samples = self.generate(64, generator=generator).x
            report.figures["rbm_filters"] = image_grid(self.model.filters(100), (0.0, 1.0), 10)
            report.figures["rbm_samples"] = image_grid(samples, self.data.value_range)
        return report

    @torch.no_grad()
    def visuals(self, generator: torch.Generator) -> dict[str, Tensor]:
        """Filters of 64 hidden units, the persistent chains, and fresh samples."""
        if not self.data.is_image:
            return {}
        low, high = self.data.value_range
        out = {"filters": self.model.filters(64) * (high - low) + low,
               "samples_from_noise": self.generate(64, generator=generator).x}
        if self.chains is not None:
            out["pcd_chains"] = self.from_visible(self.chains[:64])
        return out

    def histograms(self) -> dict[str, Tensor]:
        return dict(self._last)

    def state_dict(self) -> dict:
        return {"chains": self.chains, "bias_initialised": self.bias_initialised}

    def load_state_dict(self, state: dict) -> None:
        chains = state.get("chains")
        device = self.model.weight.device
        if chains is not None and self.chains is not None and chains.shape == self.chains.shape:
            self.chains.copy_(chains)  # a rollback keeps the tensor a recorded step uses
        else:
            self.chains = None if chains is None else chains.to(device)
        self.bias_initialised = bool(state.get("bias_initialised", True))
