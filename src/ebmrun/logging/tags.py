"""One naming scheme for what every family logs, and the multi-line charts built on it.

Objectives name their training outputs as they like (``energy_sample``, ``energy_fake``,
``free_energy_chains``, ...); :func:`canonical` maps them to one scheme, so the same
quantity has the same TensorBoard tag in every family (the README's "TensorBoard" section
has the table):

- ``energy/data``: mean energy of the real batch (deep EBM E(x), EBGAN D(x), RBM F(x), DAE
  E(clean)); ``energy/samples``: of the model's negatives (MCMC samples, G(z), RBM chains);
  ``energy/gap`` = ``energy/samples`` − ``energy/data``; ``energy/margin``: EBGAN's m.
- ``loss`` (what is optimised) and ``loss/<term>`` for its parts.
- ``lr/<network>``, ``sampler/<stat>``, ``buffer/<stat>`` (training outputs, logged under
  ``train/``), ``grad/<stat>``, ``perf/<stat>``, ``quality/<stat>`` (the runner's own).

:func:`layout` turns the tags a run has logged into TensorBoard's custom-scalars layout:
E(data) vs E(samples) (with EBGAN's margin), the gap, train vs held-out energy, the loss
terms, and the evaluation metrics that belong together (FD beside its real-vs-real floor).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


# Legacy (objective output / histogram) name -> canonical name. Objectives may emit the
# canonical names directly; these keep today's objectives on the scheme.
ALIASES: dict[str, str] = {
    "energy_data": "energy/data",
    "energy_sample": "energy/samples",
    "energy_gap": "energy/gap",
    "energy_real": "energy/data",      # EBGAN: D(x) of real images
    "energy_fake": "energy/samples",   # EBGAN: D(G(z))
    "energy/real": "energy/data",
    "energy/fake": "energy/samples",
    "hinge_active": "energy/hinge_active",  # EBGAN: share of fakes with D(G(z)) < m
    "energy_clean": "energy/data",     # DAE
    "energy/clean": "energy/data",
    "energy_corrupted": "energy/corrupted",
    "energy_noise": "energy/noise",    # NCE
    "free_energy_data": "energy/data",  # RBM: free energy F(x)
    "free_energy_chains": "energy/samples",
    "loss_cd": "loss/contrastive",
    "loss_reg": "loss/regulariser",
    "loss_d": "loss/discriminator",
    "loss_g": "loss/generator",
    "pt": "loss/pulling_away",
}


def canonical(name: str) -> str:
    """The scheme's name for ``name`` (unchanged when it is already canonical)."""
    return ALIASES.get(name, name)


def with_gap(values: dict[str, float]) -> dict[str, float]:
    """Add ``energy/gap`` where a family logs both energies but not their difference."""
    if "energy/data" in values and "energy/samples" in values and "energy/gap" not in values:
        values = {**values, "energy/gap": values["energy/samples"] - values["energy/data"]}
    return values


# Stats that are constant for some samplers (Langevin's acceptance rate is 1, its step size
# fixed): the logger holds them back until they change, so no flat chart is shown.
QUIET_IF_CONSTANT = (r"/sampler/acceptance_rate$", r"/sampler/step_size$")


def quiet_if_constant(tag: str) -> bool:
    return any(re.search(p, tag) for p in QUIET_IF_CONSTANT)


@dataclass(frozen=True)
class Chart:
    """One multi-line chart: every logged tag matching one of ``patterns`` is a line."""

    title: str
    patterns: tuple[str, ...]


# Category title -> charts. A run's layout holds the charts that match any tag it logged;
# TensorBoard merges the layouts of all runs by category title.
CHARTS: dict[str, tuple[Chart, ...]] = {
    "energy: data vs samples": (
        Chart("E(data), E(samples) (EBGAN: D(real), D(fake), margin m)",
              (r"^train/energy/(data|samples|margin)$",)),
        Chart("gap E(samples) - E(data): widening = samples drift from the data",
              (r"^train/energy/gap$",)),
        Chart("E(train batch) vs E(test set): a growing gap = overfitting",
              (r"^train/energy/data$", r"^eval/energy/test_mean$")),
        Chart("E of outliers (noise, flipped, other set) vs test",
              (r"^eval/energy/[a-z_]+_mean$",)),
    ),
    "training": (
        Chart("loss and its terms", (r"^train/loss(/.*)?$",)),
        Chart("learning rates", (r"^lr/.*$",)),
        Chart("gradient norm and clipping", (r"^grad/.*$",)),
        Chart("sampler during training", (r"^train/sampler/.*$",)),
        Chart("replay buffer: mean age of the negatives (sampler runs since noise)",
              (r"^train/buffer/age_mean$",)),
        Chart("replay buffer: share of the negatives restarted from noise",
              (r"^train/buffer/reinit_share$",)),
        Chart("speed", (r"^perf/.*$",)),
    ),
    "evaluation": (
        Chart("sample quality: Fréchet distance vs the real-vs-real floor",
              (r"^eval/samples/frechet.*$",)),
        Chart("quality probe while training: FD of a few samples vs its floor",
              (r"^quality/frechet.*$",)),
        Chart("anomaly AUROC of E(x)", (r"^eval/ood/.*$",)),
        Chart("2-D: test NLL and KL(target || model)", (r"^eval/density/(test_nll|kl.*)$",)),
    ),
}


def layout(tags: Iterable[str]) -> dict[str, dict[str, list]]:
    """The custom-scalars layout (``SummaryWriter.add_custom_scalars`` format: category ->
    chart title -> ["Multiline", patterns]) of the charts each of whose patterns matches one
    of ``tags`` (train vs eval appears once both are logged)."""
    tags = list(tags)
    out: dict[str, dict[str, list]] = {}
    for title, charts in CHARTS.items():
        shown = {c.title: ["Multiline", list(c.patterns)] for c in charts
                 if all(any(re.search(p, t) for t in tags) for p in c.patterns)}
        if shown:
            out[title] = shown
    return out
