"""JEM: train a classifier as an energy model (Grathwohl et al. 2020).

    loss = CE(f(x), y) + λ · [mean E(x_data) − mean E(x_sample)
                              + α · mean(E(x_data)² + E(x_sample)²)]

with E(x) = −logsumexp_y f(x)[y]. The first term trains p(y | x); the bracket is the
contrastive estimate of −∇ log p(x) with negatives drawn by SGLD (the ``sampler`` group)
from a replay buffer, as for the deep EBM. λ = ``px_weight``; λ = 0 is plain cross-entropy
of the same network (no sampling). The published stabilisers are settings: 5 % of the
chains restarted from noise (``reinit_fraction``), small SGLD noise (``sampler.noise_std``),
the energy regulariser α (``alpha``) and noise on the real images (``data_noise_std``).

``conditional_negatives`` = q > 0 draws the negatives (partly) ancestrally, as JEM's
``class_cond_p_x_sample`` does for q = 1: buffer slots are dealt out in periods of
K + U slots (U = round(K (1 − q) / q)); position j < K of a period always holds a chain of
E(x, y = j), the other U positions chains of E(x). A uniform draw of slots is then a uniform
draw of labels, so the conditional chains sample p(x | y) with y uniform, i.e. p(x) when the
model's p(y) is near uniform (balanced classes). The loss is unchanged (E(x) of the
negatives); what changes is where the chains go: the p(x) term also raises the energy of the
states that conditional chains (``task=sample sample.label=...``) visit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebmrun.conditional import label_draws, rows_by_label
from ebmrun.metrics.calibration import expected_calibration_error
from ebmrun.objectives.base import DataInfo, EvalReport, Objective
from ebmrun.objectives.common import ChainsFromNoise
from ebmrun.objectives.replay_buffer import ReplayBuffer, ReplayBufferCD
from ebmrun.samplers.base import SampleResult, Sampler


class JEM(ReplayBufferCD, ChainsFromNoise, Objective):
    """Cross-entropy plus SGLD contrastive divergence on p(x).

    Args:
        model: a :class:`~ebmrun.models.jem.ClassifierEnergy` (``logits``, ``energy``,
            ``class_energy``).
        sampler: SGLD for the negatives (``sampler.steps`` per training step).
        px_weight: λ, weight of the p(x) term; 0 = plain cross-entropy.
        alpha: energy-magnitude regulariser inside the p(x) term.
        data_noise_std: std of Gaussian noise on real images (both terms).
        buffer_size / reinit_fraction: the replay buffer of the negatives' chains.
        sample_steps: default steps of fresh samples from noise (pictures, task=sample).
        ece_bins: bins of the expected calibration error in ``evaluate``.
        conditional_negatives: q, the share of buffer chains run on E(x, y) (above).
    """

    capturable_step = True  # as the deep EBM's CD; the labels are a second static input

    uses_labels = True   # training_step(x, y)
    conditional = True   # E(x, y) = −f(x)[y]: sample.label, compose.labels

    train_metrics = ("loss", "loss/cross_entropy", "loss_cd", "loss_reg", "accuracy", "energy_data",
                     "energy_sample", "energy_gap", "sampler/*")
    # The replay buffer is scored like fresh samples (``buffer/*``), as for the deep EBM.
    eval_metrics = ("classifier/test_accuracy", "classifier/ece", "classifier/test_nll",
                    "buffer/*")

    def __init__(self, model: nn.Module, sampler: Sampler, data: DataInfo,
                 generator: torch.Generator, px_weight: float = 1.0, alpha: float = 0.0,
                 data_noise_std: float = 0.0, buffer_size: int = 10000,
                 reinit_fraction: float = 0.05, sample_steps: int = 500,
                 ece_bins: int = 15, conditional_negatives: float = 0.0) -> None:
        super().__init__(model, data, generator)
        if px_weight < 0 or alpha < 0:
            raise ValueError(f"px_weight and alpha must be >= 0, got {px_weight}, {alpha}")
        for name, share in (("reinit_fraction", reinit_fraction),
                            ("conditional_negatives", conditional_negatives)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {share}")
        self.sampler = sampler
        self.px_weight, self.alpha = float(px_weight), float(alpha)
        self.data_noise_std = float(data_noise_std)
        self.reinit_fraction = float(reinit_fraction)
        self.sample_steps, self.ece_bins = int(sample_steps), int(ece_bins)
        self.conditional_negatives = float(conditional_negatives)
        q, k = self.conditional_negatives, model.num_classes
        self._unconditional_slots = round(k * (1 - q) / q) if q > 0 else 0  # U per period
        device = next(model.parameters()).device
        self.buffer = ReplayBuffer(buffer_size, data.item_shape, data.box, device, generator)
        # Plain cross-entropy runs no chains: its buffer stays noise, not worth scoring.
        self.persistent = self.px_weight > 0
        self._last: dict[str, Tensor] = {}

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def chain_energy(self, slots: Tensor):
        """The energy ``(n, ...) -> (n,)`` the buffer chains in ``slots`` ``(n,)`` run on:
        E(x), or with ``conditional_negatives`` E(x, j) at period position j < K."""
        if self.conditional_negatives == 0:
            return self.model.energy
        position = slots % (self.num_classes + self._unconditional_slots)
        # Positions past the K labels run on E(x): label −1 for class_energy.
        return self.conditional_energy(torch.where(position < self.num_classes, position, -1))

    def training_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        batch = x.shape[0]
        x = self.noisy_data(x)
        if self.px_weight > 0:
            chains = self.negatives(batch)
            logits = self.model.logits(torch.cat([x, chains.x]))  # one forward for both
            e_all = -torch.logsumexp(logits, dim=1)
            loss_px, out = self.contrastive_terms(e_all[:batch], e_all[batch:], chains)
            logits = logits[:batch]
            px_term = self.px_weight * loss_px
        else:  # plain cross-entropy: no chains at all
            logits = self.model.logits(x)
            out = {"energy_data": -torch.logsumexp(logits.detach(), dim=1).mean()}
            px_term = 0.0
        loss_ce = F.cross_entropy(logits, y)
        return {"loss": loss_ce + px_term, "loss/cross_entropy": loss_ce.detach(),
                "accuracy": (logits.argmax(1) == y).float().mean().detach(), **out}

    def class_energies(self, x: Tensor) -> Tensor:
        """E(x, y) for every class: ``(B, K)`` = −f(x)."""
        return -self.model.logits(x)

    def conditional_energy(self, labels: Tensor):
        """E(x, y) with ``labels`` ``(B,)`` fixed per chain, as an ``energy_fn``."""
        return lambda x: self.model.class_energy(x, labels)

    def generate(self, n: int, *, steps: int | None = None, generator: torch.Generator,
                 snapshot_every: int = 0, labels: Tensor | None = None) -> SampleResult:
        """``n`` chains from uniform noise on E(x), or on E(x, y) with ``labels`` ``(n,)``."""
        if labels is None:
            return super().generate(n, steps=steps, generator=generator,
                                    snapshot_every=snapshot_every)
        steps = self.sample_steps if steps is None else steps
        return self.sampler.sample(self.conditional_energy(labels),
                                   self.chain_starts(n, generator), steps=steps,
                                   generator=generator, snapshot_every=snapshot_every)

    @torch.no_grad()
    def evaluate(self, test: Tensor, settings, generator: torch.Generator,
                 labels: Tensor | None = None) -> EvalReport:
        """Test accuracy, negative log-likelihood of the labels and expected calibration
        error (``ece_bins`` equal-width confidence bins) on ``test`` ``(N, C, H, W)``."""
        if labels is None:
            return EvalReport()
        logits = torch.cat([self.model.logits(chunk).float().cpu()
                            for chunk in test.split(settings.batch_size)])
        labels = labels.cpu()
        probs = logits.softmax(dim=1)
        return EvalReport(metrics={
            "classifier/test_accuracy": float((logits.argmax(1) == labels).double().mean()),
            "classifier/test_nll": float(F.cross_entropy(logits.double(), labels)),
            "classifier/ece": expected_calibration_error(probs, labels, self.ece_bins)})

    @torch.no_grad()
    def visuals(self, generator: torch.Generator) -> dict[str, Tensor]:
        """Chains from noise on E(x) (64 shown), the same chains in rows by one label
        y ~ p(y | x) each (row k: up to 8 of label k, grey where the chains drew fewer), and
        the replay buffer. The rows are how ``task=sample``'s rejection method draws p(x | y)
        (before its refinement steps), from the chains already run: chains on E(x, k) climb a
        logit off the data and would show digits a reader takes for another class."""
        per_row = 8  # 1.5 chains per place, so balanced classes mostly fill their rows
        fresh = self.generate(max(64, per_row * 3 // 2 * self.num_classes),
                              generator=generator).x
        low, high = self.data.value_range
        by_label = rows_by_label(fresh, label_draws(self, fresh, generator), self.num_classes,
                                 per_row, blank=(low + high) / 2)
        return {"samples_by_label": by_label, "samples_from_noise": fresh[:64],
                "buffer": self.buffer_picture()}
