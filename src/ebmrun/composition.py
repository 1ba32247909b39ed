"""``task=sample`` on energies that condition and add (Du, Li & Mordatch 2020).

- ``sample.label=3`` (or ``[0,1,...]``): samples of p(x | y) of a family that can condition
  (``Objective.conditional``, e.g. JEM's −f(x)[y]); with a list, the samples are split into
  consecutive blocks, one label per block. ``sample.label_method``: ``rejection`` keeps
  unconditional samples by a label drawn from p(y | x), then runs ``label_refine_steps``
  on E(x, y) from them (:mod:`ebmrun.conditional`); ``chains`` runs the sampler on E(x, y)
  from noise.
- ``compose.labels=[3,8]``: one chain on Σ_k w_k E(x, y_k) of one conditional model
  (conjunction: a product of experts; a negative weight is a negation).
- ``compose.ckpts=[runB, ...]``: the energies of further checkpoints added to ``ckpt``'s,
  Σ_i w_i E_i(x) (with ``compose.labels``: one label per checkpoint, ``-1`` = E_i(x)).

The chains run ``ckpt``'s own sampler from its uniform starts; every term must have an
energy on items of the same shape and value range. With an evaluator for the data
(MNIST-like), the classes of the samples are scored: the share classified as the asked
label per label, and for a composition the share and mean probability of each label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ebmrun.build import build_trained
from ebmrun.checkpoint import load_checkpoint
from ebmrun.conditional import refine, rejection_samples, select_rows
from ebmrun.config import merge_overrides
from ebmrun.data.base import to_unit_range
from ebmrun.errors import UserError
from ebmrun.logging.run_logger import image_grid
from ebmrun.metrics.evaluator import RECIPES, get_evaluator
from ebmrun.objectives.base import DataInfo, Objective
from ebmrun.objectives.common import ChainsFromNoise
from ebmrun.samplers.base import SampleResult

EnergyFn = Callable[[Tensor], Tensor]


def requested(cfg: DictConfig) -> bool:
    """Whether the run asks for labels or a composition."""
    return cfg.sample.label is not None or any(v is not None for v in cfg.compose.values())


def as_labels(value, key: str) -> list[int]:
    """``sample.label``: an int or a list of ints, as a list."""
    value = OmegaConf.to_object(value) if OmegaConf.is_config(value) else value
    labels = value if isinstance(value, list) else [value]
    if not labels or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        raise UserError(f"{key}={value!r} must be a class label or a list of them (fix: "
                        f"{key}=3 or {key}=[0,1,2])")
    return labels


def block_labels(labels: list[int], n: int) -> Tensor:
    """One label per chain ``(n,)``: consecutive blocks of ⌈n / len(labels)⌉ chains."""
    per = -(-n // len(labels))
    return torch.tensor(labels).repeat_interleave(per)[:n]


@dataclass
class Term:
    """One energy of a sum: ``weight`` · E(x) of ``objective`` (or E(x, ``label``))."""

    objective: Objective
    weight: float
    label: int | None


def composed_energy(terms: list[Term]) -> EnergyFn:
    """Σ_i w_i E_i(x): ``(B, ...) -> (B,)``; the class energies of one model are computed
    once for all of its labels."""
    by_model: dict[int, list[Term]] = {}
    for term in terms:
        by_model.setdefault(id(term.objective), []).append(term)

    def energy(x: Tensor) -> Tensor:
        total = torch.zeros(x.shape[0], device=x.device)
        for group in by_model.values():
            objective = group[0].objective
            plain = sum(t.weight for t in group if t.label is None)
            labelled = [t for t in group if t.label is not None]
            if labelled:
                weights = torch.tensor([t.weight for t in labelled], device=x.device)
                class_e = objective.class_energies(x)[:, [t.label for t in labelled]]
                total = total + (class_e.float() * weights).sum(dim=1)
            if plain:
                total = total + plain * objective.energy(x).float()
        return total

    return energy


class Plan:
    """What ``task=sample`` draws when labels or a composition are asked for."""

    def __init__(self, cfg: DictConfig, objective: Objective, info: DataInfo) -> None:
        self.objective, self.info = objective, info
        self.chain_labels: list[int] | None = None
        self.terms: list[Term] = []
        self.label_method = cfg.sample.label_method
        self.refine_steps = cfg.sample.label_refine_steps
        self.batch_size = cfg.sample.batch_size
        self._rejected: tuple[SampleResult, int] | None = None  # every row, chains run
        if cfg.sample.label is not None:
            if any(v is not None for v in cfg.compose.values()):
                raise UserError("sample.label and compose.* ask for different samples (fix: "
                                "sample.label=<labels> for one label per chain, or "
                                "compose.labels=[...] for their sum in every chain)")
            self.chain_labels = as_labels(cfg.sample.label, "sample.label")
            self._check_labels(objective, self.chain_labels, "sample.label")
        else:
            self.terms = self._terms(cfg, objective, info)

    @staticmethod
    def _check_labels(objective: Objective, labels: list[int], key: str) -> None:
        if not objective.conditional:
            raise UserError(f"{key}: model {type(objective).__name__} has no class-"
                            f"conditional energy E(x, y) (fix: drop {key}, or use a family "
                            f"that conditions, e.g. model=jem)")
        bad = [v for v in labels if not 0 <= v < objective.num_classes]
        if bad:
            raise UserError(f"{key}: label {bad[0]} is not a class of this model (fix: labels "
                            f"in 0..{objective.num_classes - 1})")

    def _terms(self, cfg: DictConfig, objective: Objective, info: DataInfo) -> list[Term]:
        objectives = [objective]
        for path in cfg.compose.ckpts or []:
            objectives.append(_load_other(cfg, path, info))
        labels = (as_labels(cfg.compose.labels, "compose.labels")
                  if cfg.compose.labels is not None else None)
        if labels is not None and len(objectives) > 1 and len(labels) != len(objectives):
            raise UserError(f"compose.labels has {len(labels)} labels for {len(objectives)} "
                            f"checkpoints (fix: one label per checkpoint, -1 for E(x))")
        if labels is not None and len(objectives) == 1:
            objectives = objectives * len(labels)  # several labels of one model
        n_terms = len(objectives)
        weights = ([1.0] * n_terms if cfg.compose.weights is None
                   else [float(w) for w in cfg.compose.weights])
        if len(weights) != n_terms:
            raise UserError(f"compose.weights has {len(weights)} weights for {n_terms} "
                            f"energies (fix: one weight per energy, e.g. compose.weights="
                            f"[{','.join(['1'] * n_terms)}])")
        terms = []
        for i, (term_objective, weight) in enumerate(zip(objectives, weights)):
            label = None if labels is None or labels[i] == -1 else labels[i]
            if label is not None:
                self._check_labels(term_objective, [label], "compose.labels")
            elif not term_objective.has_energy:
                raise UserError(f"compose: model {type(term_objective).__name__} has no "
                                f"energy to add (fix: compose families with an energy)")
            terms.append(Term(term_objective, weight, label))
        if not isinstance(objective, ChainsFromNoise):
            raise UserError(f"compose: model {type(objective).__name__} does not draw its "
                            f"samples by a sampler on its energy (fix: ckpt= a family that "
                            f"does, e.g. jem or deep_ebm)")
        return terms

    def generate(self, n: int, start: int, total: int, *, steps: int | None,
                 generator: torch.Generator, snapshot_every: int) -> SampleResult:
        """Chains ``start .. start + n`` of ``total``."""
        objective = self.objective
        if self.chain_labels is not None and self.label_method == "rejection":
            if self._rejected is None:  # all rows at once: one pool of p(x) chains
                labels = block_labels(self.chain_labels, total)
                kept, chains = rejection_samples(
                    objective, labels, steps=steps, generator=generator,
                    snapshot_every=snapshot_every, batch_size=self.batch_size)
                self._rejected = (refine(objective, kept, labels, steps=self.refine_steps,
                                         generator=generator), chains)
            return select_rows([self._rejected[0]], torch.arange(start, start + n))
        if self.chain_labels is not None:
            labels = block_labels(self.chain_labels, total)[start:start + n]
            device = next(objective.model.parameters()).device
            return objective.generate(n, steps=steps, generator=generator,
                                      snapshot_every=snapshot_every, labels=labels.to(device))
        steps = objective.sample_steps if steps is None else steps
        return objective.sampler.sample(composed_energy(self.terms),
                                        objective.chain_starts(n, generator), steps=steps,
                                        generator=generator, snapshot_every=snapshot_every)

    def describe(self) -> dict:
        """What was sampled, for metrics.json."""
        if self.chain_labels is not None:
            out = {"labels": self.chain_labels, "label_method": self.label_method}
            if self.label_method == "rejection":
                out["label_refine_steps"] = self.refine_steps
            if self._rejected is not None:
                out["conditional/chains_run"] = self._rejected[1]
            return out
        return {"compose": [{"weight": t.weight, "label": t.label} for t in self.terms]}

    def score(self, samples: Tensor, dataset: str, root: str | None) -> dict[str, float]:
        """The evaluator's view of the samples ``(N, C, H, W)`` (MNIST-like data only)."""
        if not self.info.is_image or dataset not in RECIPES:
            return {}
        evaluator = get_evaluator(dataset, root)
        probs = evaluator.logits(to_unit_range(samples, self.info.value_range)).softmax(1)
        predicted = probs.argmax(dim=1)
        metrics: dict[str, float] = {}
        if self.chain_labels is not None:
            asked = block_labels(self.chain_labels, len(samples))
            for label in sorted(set(self.chain_labels)):
                mine = asked == label
                metrics[f"conditional/accuracy_{label}"] = float(
                    (predicted[mine] == label).double().mean())
            metrics["conditional/accuracy"] = float((predicted == asked).double().mean())
            return metrics
        for label in sorted({t.label for t in self.terms if t.label is not None}):
            metrics[f"compose/share_{label}"] = float((predicted == label).double().mean())
            metrics[f"compose/prob_{label}"] = float(probs[:, label].double().mean())
        return metrics

    def grid(self, samples: Tensor, per_row: int = 10) -> Tensor | None:
        """Conditional samples, one row per asked label (``(3, H, W)`` in [0, 1])."""
        if self.chain_labels is None or not self.info.is_image:
            return None
        asked = block_labels(self.chain_labels, len(samples))
        rows = [samples[asked == label][:per_row] for label in dict.fromkeys(self.chain_labels)]
        if any(len(r) < per_row for r in rows):
            return None
        return image_grid(torch.cat(rows), self.info.value_range, nrow=per_row)


def _load_other(cfg: DictConfig, path: str, info: DataInfo) -> Objective:
    """The trained objective of a further checkpoint, refused unless its items have the shape
    and value range of ``ckpt``'s."""
    ckpt = load_checkpoint(path)
    other_cfg = merge_overrides(ckpt["config"], cfg, [])
    parts, other = build_trained(other_cfg, ckpt)
    if tuple(other.item_shape) != tuple(info.item_shape):
        raise UserError(f"compose.ckpts: {path} models items of shape {tuple(other.item_shape)}"
                        f", ckpt's are {tuple(info.item_shape)} (fix: compose models of the "
                        f"same data)")
    if tuple(other.value_range) != tuple(info.value_range):
        raise UserError(f"compose.ckpts: {path} models values in {tuple(other.value_range)}, "
                        f"ckpt's in {tuple(info.value_range)} (fix: compose models trained "
                        f"with the same dataset.value_range)")
    parts.model.eval()
    return parts.objective
