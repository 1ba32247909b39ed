"""The objective contract: how one model family is trained and sampled.

The runner owns the loop (data, optimizer steps, clipping, schedules, logging,
checkpoints); an objective owns the recipe: the loss of one batch, how negatives or fakes
are made, how to draw samples, and which pictures show progress. It never calls
``backward()`` or an optimizer.

Two shapes of ``training_step`` (see :meth:`Objective.training_step`):

- one parameter group (most families): return ``{"loss": scalar with grad, **scalars}``;
- several groups (``groups = ("d", "g")`` for a GAN): a generator that yields
  ``(group, loss)`` in update order and returns the scalars to log. The runner updates the
  group's parameters before it resumes the generator, so a later loss sees the updated
  weights (EBGAN's G step sees the D of this step, as in the paper).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ebmrun.samplers.base import SampleResult


@dataclass(frozen=True)
class DataInfo:
    """What an objective may know about the data: item shape, value range, sampling box."""

    item_shape: tuple[int, ...]
    value_range: tuple[float, float]
    box: tuple[float, float]

    @property
    def is_image(self) -> bool:
        return len(self.item_shape) == 3


@dataclass
class OptimSettings:
    """Optimizer settings passed from ``cfg.optim`` (see ``ebmrun.config.OptimConfig``)."""

    name: str
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    fused: bool


@dataclass
class EvalReport:
    """What an evaluation produced.

    ``metrics``: flat name -> number (written to metrics.json and TensorBoard, ``/`` groups);
    ``figures``: name -> ``(3, H, W)`` float image in [0, 1] (PNG + TensorBoard image);
    ``tables``: name -> rows (list of dicts), written to metrics.json as they are.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    figures: dict[str, Tensor] = field(default_factory=dict)
    tables: dict[str, list[dict]] = field(default_factory=dict)

    def update(self, other: "EvalReport", prefix: str = "") -> None:
        self.metrics.update({prefix + k: v for k, v in other.metrics.items()})
        self.figures.update({prefix + k: v for k, v in other.figures.items()})
        self.tables.update({prefix + k: v for k, v in other.tables.items()})


# What ``training_step`` returns: the scalars of one group's step, or a generator of
# ``(group, loss)`` pairs that returns them.
StepOutput = dict[str, Tensor] | Generator[tuple[str, Tensor], None, dict[str, Tensor]]


OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def make_optimizer(params, settings: OptimSettings, lr: float | None = None,
                   betas: Sequence[float] | None = None) -> torch.optim.Optimizer:
    """Build the optimizer named in ``settings``. A model's own ``lr``/``betas`` (e.g. per
    network) replace the settings' where not None; betas and ``settings.fused`` apply to
    adam/adamw only."""
    kwargs = {"lr": settings.lr if lr is None else lr, "weight_decay": settings.weight_decay}
    if settings.name in ("adam", "adamw"):
        kwargs["betas"] = tuple(settings.betas if betas is None else betas)
        kwargs["fused"] = settings.fused
    return OPTIMIZERS[settings.name](params, **kwargs)


class Objective(ABC):
    """Base class of training recipes. ``model`` is the ``nn.Module`` that is checkpointed.

    Capabilities are declared here as class attributes, never probed:
    ``needs_checkpoint`` (``task=sample``/``eval`` need a trained checkpoint),
    ``has_energy`` (:meth:`energy` returns per-item energies), ``uses_sampler`` (training
    or ``generate`` runs the configured sampler; an instance may set it from its settings,
    e.g. EBGAN's ``latent_refine``), ``generates_new_samples``.
    """

    # Parameter groups in update order; :meth:`configure_optimizers` returns one optimizer
    # per group, in this order. Per-group settings: ``model.optim.<group>`` (run.py).
    groups: tuple[str, ...] = ("loss",)
    # Legacy escape hatch for objectives that step their own optimizers: the runner then
    # only calls ``training_step`` (no clipping, schedules by epoch only, no DDP).
    manual_optimization = False
    # The names (fnmatch patterns) of what ``training_step`` returns and what ``evaluate``
    # reports: the pre-flight refuses a ``trainer.objective_metric`` the family never
    # produces before any training (tests/test_preflight.py checks them against real runs).
    train_metrics: tuple[str, ...] = ("loss",)
    eval_metrics: tuple[str, ...] = ()
    needs_checkpoint = True
    # ``training_step(x, y)`` with the batch's class labels ``y`` ``(B,)`` (JEM); the runner
    # refuses a dataset without labels for such a family.
    uses_labels = False
    # The family defines E(x, y) for class labels: ``class_energies(x)`` gives all of them
    # ``(B, K)``, ``conditional_energy(labels)`` an ``energy_fn`` with one label per chain,
    # ``generate(..., labels=)`` samples it (``sample.label``, ``compose.labels``);
    # ``num_classes`` is K.
    conditional = False
    has_energy = False  # True for every subclass that overrides :meth:`energy`
    # ``training_step`` makes no host syncs and runs the same shapes and Python path every
    # step, so the whole step may be replayed as a CUDA graph (ebmrun.captured_step).
    capturable_step = False
    uses_sampler = True

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "has_energy" not in vars(cls) and cls.energy is not Objective.energy:
            cls.has_energy = True
    # Whether ``generate`` draws new samples (sample-quality metrics apply) or, as for
    # sparse coding, only reconstructs given items.
    generates_new_samples = True

    def __init__(self, model: nn.Module, data: DataInfo, generator: torch.Generator) -> None:
        self.model = model
        self.data = data
        self.generator = generator

    @abstractmethod
    def training_step(self, x: Tensor) -> StepOutput:
        """Loss terms for one batch ``x`` ``(B, *item_shape)`` (and its labels ``y``
        ``(B,)`` as a second argument for families with ``uses_labels``).

        One group: ``{"loss": scalar with grad, **other scalars}``. Several ``groups``: a
        generator yielding ``(group, scalar loss with grad)`` in update order, returning a
        dict of scalars (it should hold ``"loss"``, the number reports and sweeps use).
        Every entry but the losses is logged; nothing here calls ``backward``."""

    def configure_optimizers(self, settings: OptimSettings) -> list[torch.optim.Optimizer]:
        """One optimizer per entry of ``groups``, in that order; by default one over all
        model parameters."""
        return [make_optimizer(self.model.parameters(), settings)]

    @abstractmethod
    def generate(self, n: int, *, steps: int | None = None, generator: torch.Generator,
                 snapshot_every: int = 0) -> SampleResult:
        """Draw ``n`` new samples ``(n, *item_shape)`` in the data's value range."""

    def energy(self, x: Tensor) -> Tensor | None:
        """Per-item energy ``(B,)`` of ``x`` ``(B, *item_shape)`` (lower = more data-like),
        used for anomaly scores and 2-D normalisers; ``None`` if the family has none."""
        return None

    def evaluate(self, test: Tensor, settings, generator: torch.Generator) -> EvalReport:
        """Family-specific held-out metrics on ``test`` ``(N, *item_shape)`` (float, in the
        data's value range, on the model's device); families with ``uses_labels`` also get
        the test labels ``(N,)`` as ``labels=``. ``settings`` is the run's
        :class:`ebmrun.config.EvalConfig`. The runner adds the generic metrics (sample
        quality, anomaly AUROC, 2-D normaliser) itself."""
        return EvalReport()

    def replay_samples(self, n: int, generator: torch.Generator) -> Tensor | None:
        """Up to ``n`` items ``(m, *item_shape)`` of the family's persistent training chains
        (replay buffer), for scoring beside fresh samples; ``None`` if it keeps none."""
        return None

    def visuals(self, generator: torch.Generator) -> dict[str, Tensor]:
        """Image batches ``(N, C, H, W)`` to log as grids (name -> images)."""
        return {}

    def histograms(self) -> dict[str, Tensor]:
        """1-D tensors to log as histograms (e.g. energies of the last batch)."""
        return {}

    def health_warning(self, window: dict[str, float]) -> str | None:
        """One line saying the run has failed in a way it does not recover from, judged
        from ``window``: the means of :meth:`training_step`'s scalars over the last
        ``trainer.log_every`` steps (keys as returned there); ``None`` while it looks
        healthy. The runner prints the first such line and logs it to TensorBoard
        (:mod:`ebmrun.callbacks.health`)."""
        return None

    def reference_lines(self) -> dict[str, float]:
        """Constants drawn beside the training curves they bound (tag -> value), e.g.
        EBGAN's margin next to D(fake)."""
        return {}

    def state_dict(self) -> dict:
        """Training state beyond the model and optimizers (replay buffer, ...)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
