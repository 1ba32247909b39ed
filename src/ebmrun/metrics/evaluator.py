"""A small CNN classifier used as the feature extractor for offline sample-quality metrics.

Inception-based FID is meaningless on 28x28 grey digits, so (as is common for MNIST-like
data) we train a small classifier on the real training split and measure samples in its
128-d penultimate feature space. The trained weights are cached per dataset so every run
and every comparison uses the *same* evaluator; bump :data:`EVALUATOR_VERSION` whenever the
architecture or recipe changes, so stale caches are not silently mixed with new ones.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ebmrun.errors import UserError

EVALUATOR_VERSION = 1


@dataclass(frozen=True)
class EvaluatorRecipe:
    """How to train the evaluator for one dataset."""

    loader_name: str  # name passed to ebmrun.data.idx.load_idx_dataset
    epochs: int
    max_shift: int  # random translation augmentation, in pixels
    target_accuracy: float  # expected test accuracy; a warning is printed below it


# Fashion-MNIST gets one more epoch and smaller shifts: its items are tightly centred and
# the task is harder, so heavy translation costs accuracy within a short budget.
RECIPES: dict[str, EvaluatorRecipe] = {
    "mnist": EvaluatorRecipe("mnist", epochs=3, max_shift=2, target_accuracy=0.985),
    "fashion_mnist": EvaluatorRecipe("fashion_mnist", epochs=4, max_shift=1, target_accuracy=0.90),
}


class Evaluator(nn.Module):
    """conv32-conv64-pool-conv128-pool -> FC 128 (ReLU, the feature) -> FC 10.

    Inputs are ``(N, 1, 28, 28)`` float images in ``[-1, 1]``.
    """

    feature_dim = 128
    num_classes = 10

    def __init__(self, batch_size: int = 500) -> None:
        super().__init__()
        self.batch_size = batch_size  # chunk size for the no-grad helpers
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 7x7
            nn.Flatten(),
            nn.Linear(128 * 7 * 7, self.feature_dim), nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(self.feature_dim, self.num_classes)
        self.test_accuracy: float | None = None
        self.dataset: str | None = None

    def forward(self, x: Tensor) -> Tensor:
        """Training-time logits ``(N, 10)`` for ``x`` ``(N, 1, 28, 28)``, with autograd."""
        return self.head(self.dropout(self.conv(x)))

    @torch.no_grad()
    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Features ``(N, 128)`` and logits ``(N, 10)`` in eval mode, batched, no grad."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise UserError(
                f"the evaluator takes (N, 1, 28, 28) images, got shape {tuple(x.shape)}; "
                "pass MNIST-sized grey images scaled to [-1, 1]")
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        feats, logits = [], []
        for chunk in x.split(self.batch_size):
            f = self.conv(chunk.to(device=device, dtype=torch.float32))
            feats.append(f.cpu())
            logits.append(self.head(f).cpu())
        self.train(was_training)
        return torch.cat(feats), torch.cat(logits)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(N, 128)`` (after ReLU) for ``x`` ``(N, 1, 28, 28)``."""
        return self.features_and_logits(x)[0]

    def logits(self, x: Tensor) -> Tensor:
        """Class logits ``(N, 10)`` for ``x`` ``(N, 1, 28, 28)``."""
        return self.features_and_logits(x)[1]

    def accuracy(self, x: Tensor, labels: Tensor) -> float:
        """Fraction of ``x`` ``(N, 1, 28, 28)`` classified as ``labels`` ``(N,)``."""
        return float((self.logits(x).argmax(dim=1) == labels).float().mean())


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image of ``x`` ``(N, C, H, W)`` by its own integer offset in
    ``[-max_shift, max_shift]`` on both axes, filling with the background value -1.

    Done with one padded gather rather than per-image loops or PIL, so it is cheap.
    """
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(c)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def default_cache_dir() -> Path:
    """``$EBMRUN_CACHE_DIR`` or ``~/.cache/ebmrun``."""
    return Path(os.environ.get("EBMRUN_CACHE_DIR") or Path.home() / ".cache" / "ebmrun")


def evaluator_path(dataset: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache file of the evaluator for ``dataset``."""
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / "evaluators" / f"{dataset}-v{EVALUATOR_VERSION}.pt"


def _recipe(dataset: str) -> EvaluatorRecipe:
    try:
        return RECIPES[dataset]
    except KeyError:
        raise UserError(
            f"no evaluator for dataset {dataset!r}; use one of {sorted(RECIPES)}") from None


def train_evaluator(dataset: str, root: str | None, seed: int = 0,
                    batch_size: int = 128, lr: float = 1e-3) -> Evaluator:
    """Train an evaluator on the training split of ``dataset`` (deterministic for ``seed``).

    Adam with a cosine learning-rate decay and random-shift augmentation; the test accuracy
    is stored on the returned model and printed.
    """
    from ebmrun.data.idx import load_idx_dataset  # deferred: only needed when training

    recipe = _recipe(dataset)
    data = load_idx_dataset(name=recipe.loader_name, root=root)
    if data.train_labels is None or data.test_labels is None:
        raise UserError(f"dataset {dataset!r} has no labels; an evaluator needs a labelled set")
    generator = torch.Generator().manual_seed(seed)
    # fork_rng keeps the caller's global RNG untouched; init and dropout draw from it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Evaluator()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        n = data.train.shape[0]
        steps_per_epoch = n // batch_size
        total = recipe.epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        model.train()
        start = time.time()
        with tqdm(total=total, desc=f"evaluator[{dataset}]", unit="step") as bar:
            for epoch in range(recipe.epochs):
                perm = torch.randperm(n, generator=generator)
                for i in range(steps_per_epoch):
                    idx = perm[i * batch_size:(i + 1) * batch_size]
                    x = random_shift(data.to_float(data.train[idx]), recipe.max_shift, generator)
                    loss = F.cross_entropy(model(x), data.train_labels[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    bar.update(1)
                    if i % 50 == 0:
                        bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
    model.eval()
    model.dataset = dataset
    model.test_accuracy = model.accuracy(data.to_float(data.test), data.test_labels)
    elapsed = time.time() - start
    print(f"evaluator[{dataset}]: test accuracy {model.test_accuracy:.4f} "
          f"after {recipe.epochs} epochs in {elapsed:.0f} s")
    if model.test_accuracy < recipe.target_accuracy:
        print(f"warning: evaluator[{dataset}] is below its target accuracy "
              f"{recipe.target_accuracy:.3f}; its features may be less reliable")
    return model


def save_evaluator(model: Evaluator, path: Path, seed: int) -> None:
    """Write ``model`` to ``path`` atomically (temp file in the same dir, then os.replace),
    so a concurrent reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"state_dict": model.state_dict(), "test_accuracy": model.test_accuracy,
               "dataset": model.dataset, "seed": seed, "version": EVALUATOR_VERSION}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_evaluator(path: Path, dataset: str) -> Evaluator:
    """Load a cached evaluator written by :func:`save_evaluator`."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model = Evaluator()
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:  # corrupt / foreign file: tell the user how to recover
        raise UserError(f"cannot read cached evaluator {path} ({type(exc).__name__}: {exc}); "
                        "delete the file to retrain it") from None
    if payload.get("dataset") != dataset or payload.get("version") != EVALUATOR_VERSION:
        raise UserError(f"cached evaluator {path} is for dataset {payload.get('dataset')!r} "
                        f"v{payload.get('version')}, expected {dataset!r} "
                        f"v{EVALUATOR_VERSION}; delete the file to retrain it")
    model.eval()
    model.dataset = dataset
    model.test_accuracy = payload.get("test_accuracy")
    return model


def get_evaluator(dataset: str, root: str | None, cache_dir: str | None = None,
                  seed: int = 0) -> Evaluator:
    """The evaluator for ``dataset`` ("mnist" or "fashion_mnist"), from the cache at
    ``<cache_dir>/evaluators/<dataset>-v1.pt`` or trained (a few CPU minutes) and cached.

    ``cache_dir`` defaults to ``$EBMRUN_CACHE_DIR`` or ``~/.cache/ebmrun``; ``root`` is the
    data root, only read when training.
    """
    _recipe(dataset)  # fail fast on an unknown name, before touching the cache
    path = evaluator_path(dataset, cache_dir)
    if path.exists():
        return load_evaluator(path, dataset)
    model = train_evaluator(dataset, root, seed=seed)
    save_evaluator(model, path, seed)
    return model
