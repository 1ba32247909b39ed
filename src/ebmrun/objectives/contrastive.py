"""InfoNCE on two augmented views (SimCLR, Chen et al. 2020): contrastive embedding.

For a batch of B items, two random augmentations give 2B views with unit embeddings z.
Each view's positive is the other view of its item; the other 2B − 2 views are negatives:

    loss = mean_i −log[ exp(cos(z_i, z_i⁺)/τ) / Σ_{k≠i} exp(cos(z_i, z_k)/τ) ]

i.e. cross-entropy over logits −E(z_i, z_k)/τ with the pair energy E = −cos: positive
pairs are pulled together (low energy), negatives pushed apart. τ = ``temperature``.

Evaluation: linear-probe accuracy: a multinomial logistic regression fitted (L-BFGS) on
the frozen features h of the labelled training split, scored on the test split. The
labels come from ``probe_data``, a dataset config (by default the run's own ``dataset``),
loaded when first needed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from ebmrun.build import instantiate
from ebmrun.errors import UserError
from ebmrun.logging import plots2d
from ebmrun.objectives.base import DataInfo, EvalReport, Objective, OptimSettings, make_optimizer
from ebmrun.samplers.base import SampleResult, Sampler

PALETTE = torch.tensor([[0.12, 0.47, 0.71], [1.0, 0.5, 0.05], [0.17, 0.63, 0.17],
                        [0.84, 0.15, 0.16], [0.58, 0.4, 0.74], [0.55, 0.34, 0.29],
                        [0.89, 0.47, 0.76], [0.5, 0.5, 0.5], [0.74, 0.74, 0.13],
                        [0.09, 0.75, 0.81]])


def info_nce(z1: Tensor, z2: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """InfoNCE of unit embeddings of two views ``(B, d)`` each. Returns the loss, the
    positive cosines ``(2B,)``, the negative cosines ``(2B, 2B − 2)`` and the share of
    views whose positive has the largest logit."""
    z = torch.cat([z1, z2])
    n, b = len(z), len(z1)
    sim = z @ z.T
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (sim / temperature).masked_fill(self_mask, float("-inf"))
    targets = (torch.arange(n, device=z.device) + b) % n
    loss = F.cross_entropy(logits, targets)
    positive = sim[torch.arange(n, device=z.device), targets]
    # Each row's n − 2 other columns in ascending order: the j-th skips the row's own column
    # and its positive's (lo < hi). Arithmetic, where a boolean-mask index would read its
    # size on the host (no CUDA graph could hold it).
    rows = torch.arange(n, device=z.device)
    lo, hi = torch.minimum(rows, targets)[:, None], torch.maximum(rows, targets)[:, None]
    j = torch.arange(n - 2, device=z.device).expand(n, n - 2)
    negative = sim.gather(1, j + (j >= lo).long() + (j >= hi - 1).long())
    top1 = (logits.argmax(1) == targets).float().mean()
    return loss, positive, negative, top1


class Augment:
    """Random views of a batch, drawn with an explicit generator.

    Images: a random resized crop (area share in ``crop_area``, aspect ratio in [3/4, 4/3]
    where the crop fits)
    with rotation up to ``rotate_deg``, as one affine resampling, then Gaussian pixel noise.
    Vectors: Gaussian jitter. Values outside the image are the background (range low).
    """

    def __init__(self, data: DataInfo, crop_area: tuple[float, float], rotate_deg: float,
                 noise_std: float) -> None:
        low_area, high_area = crop_area
        if not 0 < low_area <= high_area <= 1:
            raise ValueError(f"crop_area must be [low, high] within (0, 1], got {crop_area}")
        self.data, self.crop_area = data, (float(low_area), float(high_area))
        self.rotate, self.noise_std = math.radians(rotate_deg), float(noise_std)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        def uniform(low: float, high: float) -> Tensor:
            return torch.rand(len(x), device=x.device, generator=generator) * (high - low) + low

        if self.data.is_image:
            area = uniform(*self.crop_area)
            # aspect ratio within [3/4, 4/3] and within what keeps the crop inside the image
            log_low = area.log().clamp(min=math.log(3 / 4))
            log_high = (-area.log()).clamp(max=math.log(4 / 3))
            ratio = torch.exp(log_low + (log_high - log_low) * uniform(0, 1))
            sx, sy = (area * ratio).sqrt(), (area / ratio).sqrt()
            cx, cy = uniform(-1, 1) * (1 - sx), uniform(-1, 1) * (1 - sy)  # crop inside
            angle = uniform(-self.rotate, self.rotate)
            cos, sin = angle.cos(), angle.sin()
            theta = torch.stack([torch.stack([cos * sx, -sin * sy, cx], 1),
                                 torch.stack([sin * sx, cos * sy, cy], 1)], 1)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            low = self.data.value_range[0]
            x = F.grid_sample(x - low, grid, align_corners=False) + low
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn(x.shape, device=x.device, generator=generator)
        return x


def scatter_image(points: Tensor, labels: Tensor | None = None, res: int = 256) -> Tensor:
    """Points ``(N, 2)`` drawn as coloured dots (by ``labels`` ``(N,)``, mod 10) on white,
    scaled to fill the picture: ``(3, res, res)`` in [0, 1]."""
    p = points.detach().float().cpu()
    low, high = p.min(0).values, p.max(0).values
    pix = ((p - low) / (high - low).clamp_min(1e-12) * (res - 5) + 2).round().long()
    colours = (PALETTE[labels.cpu() % 10] if labels is not None
               else PALETTE[:1].expand(len(p), 3))
    image = torch.ones(3, res, res)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            image[:, res - 1 - (pix[:, 1] + dy), pix[:, 0] + dx] = colours.T
    return image


def pca_2d(x: Tensor) -> Tensor:
    """The first two principal-component scores ``(N, 2)`` of ``x`` ``(N, d)``."""
    centred = x.float() - x.float().mean(0)
    _, _, v = torch.pca_lowrank(centred, q=2, center=False, niter=4)
    return centred @ v


def linear_probe(train_h: Tensor, train_y: Tensor, test_h: Tensor, test_y: Tensor,
                 weight_decay: float = 1e-4, iters: int = 200) -> tuple[float, float]:
    """Train / test accuracy of a logistic regression on standardised features."""
    mean, std = train_h.mean(0), train_h.std(0).clamp_min(1e-6)
    a, b = (train_h - mean) / std, (test_h - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    linear = nn.Linear(a.shape[1], classes).to(a.device)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=iters,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(a), train_y) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return (float((linear(a).argmax(1) == train_y).float().mean()),
                float((linear(b).argmax(1) == test_y).float().mean()))


class ContrastiveObjective(Objective):
    """InfoNCE training of a :class:`ebmrun.models.contrastive.ContrastiveEncoder`.

    Args:
        temperature: τ of the InfoNCE logits.
        crop_area / rotate_deg / noise_std: the augmentations (see :class:`Augment`).
        lr / betas: Adam settings (null: ``optim.lr`` / ``optim.betas``).
        probe_data: dataset config with labels for the linear probe (default: ``dataset``).
        probe_train_items: labelled training items for the probe (null: all).
    """

    train_metrics = ("loss", "positive_similarity", "negative_similarity", "top1")
    eval_metrics = ("contrastive/*",)

    generates_new_samples = False  # generate shows augmented views, not new items
    capturable_step = True  # no host reads in the step (see ebmrun.captured_step)

    def __init__(self, model: nn.Module, sampler: Sampler, data: DataInfo,
                 generator: torch.Generator, temperature: float = 0.2,
                 crop_area: list[float] | None = None, rotate_deg: float = 10.0,
                 noise_std: float = 0.0, lr: float | None = 1e-3,
                 betas: list[float] | None = None, probe_data: dict | None = None,
                 probe_train_items: int | None = None) -> None:
        super().__init__(model, data, generator)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.lr, self.betas = float(temperature), lr, betas
        self.augment = Augment(data, tuple(crop_area or (0.5, 1.0)), rotate_deg, noise_std)
        self.probe_data, self.probe_train_items = probe_data, probe_train_items
        self._probe = None
        self._examples_seen = False  # the model's example items are set (checked once)
        self._last: dict[str, Tensor] = {}
        self._last_views: Tensor | None = None
        self._last_z: Tensor | None = None

    def configure_optimizers(self, settings: OptimSettings) -> list[torch.optim.Optimizer]:
        return [make_optimizer(self.model.parameters(), settings, self.lr, self.betas)]

    def training_step(self, x: Tensor) -> dict[str, Tensor]:
        if not self._examples_seen:  # read once: a host read per step would stop capture
            if not bool(self.model.examples_set):
                with torch.no_grad():
                    n = min(len(x), len(self.model.examples))
                    self.model.examples[:n] = x[:n]
                    self.model.examples_set.fill_(True)
            self._examples_seen = True
        v1, v2 = self.augment(x, self.generator), self.augment(x, self.generator)
        z = self.model.embed(torch.cat([v1, v2]))
        z1, z2 = z[: len(x)], z[len(x):]
        loss, positive, negative, top1 = info_nce(z1, z2, self.temperature)
        self.model.remember(z1)
        with torch.no_grad():
            self._last = {"similarity/positive": positive.detach(),
                          "similarity/negative": negative.detach().flatten()[:4096]}
            self._last_views = torch.stack([x[:8], v1[:8], v2[:8]]).flatten(0, 1).detach()
            self._last_z = z1.detach()
        return {"loss": loss, "positive_similarity": positive.mean().detach(),
                "negative_similarity": negative.mean().detach(), "top1": top1}

    @torch.no_grad()
    def generate(self, n: int, *, steps: int | None = None, generator: torch.Generator,
                 snapshot_every: int = 0) -> SampleResult:
        """Not samples: ``n`` augmented views of the model's fixed examples (two views per
        example, side by side), i.e. what the encoder learns to match."""
        examples = self.model.examples
        idx = (torch.arange(n, device=examples.device) // 2) % len(examples)
        return SampleResult(x=self.augment(examples[idx], generator))

    def energy(self, x: Tensor) -> Tensor:
        """−(cosine similarity to the nearest training embedding in the bank) ``(B,)``."""
        return self.model.energy(x)

    # ---- evaluation -------------------------------------------------------------------------

    def _probe_dataset(self):
        """The labelled dataset of the probe, loaded once."""
        if self._probe is None:
            if self.probe_data is None:
                raise UserError("the linear probe needs labelled data (fix: set "
                                "model.objective.probe_data to a dataset config)")
            self._probe = instantiate(OmegaConf.create(self.probe_data),
                                      "model.objective.probe_data")
        return self._probe

    @torch.no_grad()
    def features(self, x: Tensor, batch: int) -> Tensor:
        return torch.cat([self.model.features(chunk) for chunk in x.split(batch)])

    @torch.no_grad()
    def evaluate(self, test: Tensor, settings, generator: torch.Generator) -> EvalReport:
        """Linear-probe accuracy on frozen features h, and a PCA picture of the test
        embeddings coloured by class."""
        probe = self._probe_dataset()
        if probe.train_labels is None or probe.test_labels is None:
            raise UserError(f"dataset {probe.name} has no labels: the linear probe needs them "
                            f"(fix: model.objective.probe_data=<a labelled dataset config>)")
        if tuple(probe.item_shape) != tuple(test.shape[1:]):
            raise UserError(f"model.objective.probe_data has items of shape {probe.item_shape}"
                            f" but the test split has {tuple(test.shape[1:])} (fix: use the "
                            f"run's dataset)")
        device, batch = test.device, settings.batch_size
        n_train = len(probe.train) if self.probe_train_items is None else min(
            self.probe_train_items, len(probe.train))
        train_x = probe.to_float(probe.train[:n_train]).to(device)
        train_h = self.features(train_x, batch)
        test_h = self.features(test, batch)
        train_y = probe.train_labels[:n_train].to(device)
        test_y = probe.test_labels[: len(test)].to(device)
        train_acc, test_acc = linear_probe(train_h, train_y, test_h, test_y)
        z = torch.cat([self.model.embed(c) for c in test[:2000].split(batch)])
        return EvalReport(
            metrics={"contrastive/linear_probe_acc": test_acc,
                     "contrastive/linear_probe_train_acc": train_acc,
                     "contrastive/probe_train_items": float(n_train)},
            figures={"embedding_pca": scatter_image(pca_2d(z), test_y[: len(z)])})

    # ---- pictures ---------------------------------------------------------------------------

    @torch.no_grad()
    def visuals(self, generator: torch.Generator) -> dict[str, Tensor]:
        """Rows: 8 items, their first views, their second views; and a PCA projection of
        the last batch's embeddings."""
        if self._last_z is None:
            return {}
        pca = plots2d.in_value_range(scatter_image(pca_2d(self._last_z)), self.data.value_range)
        out = {"embedding_pca": pca}
        if self.data.is_image:
            out["views"] = self._last_views
        return out

    def histograms(self) -> dict[str, Tensor]:
        return dict(self._last)
