"""A small CNN classifier used as the feature extractor for offline sample-quality metrics.

Inception-based FID is meaningless on 28x28 grey digits, so (as is common for MNIST-like
data) a small classifier trained on the real training split measures samples in its 128-d
penultimate feature space. Like the Inception weights of FID, the MNIST and Fashion-MNIST
evaluators are fixed: their weights ship inside the package (``evaluator_weights/``, made by
``scripts/train_evaluator.py``), so ``task=eval`` scores at once and every machine measures
with the same network. Each evaluator is named ``<dataset>-<first 12 hex of the sha256 of
its weights>`` (:attr:`Evaluator.version`), recorded beside every number it produced, so
numbers from different evaluators are never compared silently.

A dataset with a training recipe but no shipped weights is trained on first use (minutes,
announced) and cached under ``$EBMRUN_CACHE_DIR`` or ``~/.cache/ebmrun``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from ebmrun.checkpoint import atomic_torch_save
from ebmrun.errors import UserError
from ebmrun.metrics.evaluator_training import RECIPES, recipe_for, train_evaluator

__all__ = ["Evaluator", "RECIPES", "get_evaluator", "load_evaluator", "save_evaluator",
           "shipped_path", "evaluator_path", "weights_digest"]

# Bump when the architecture changes: cached (retrained) files of an older one are refused.
EVALUATOR_VERSION = 2

SHIPPED_DIR = Path(__file__).resolve().parent / "evaluator_weights"


class Evaluator(nn.Module):
    """conv32-pool-conv64-pool-conv128 (each with batch norm) -> global average pool ->
    FC 128 (ReLU, the feature) -> FC 10. About 111k parameters (450 KB).

    Inputs are ``(N, 1, 28, 28)`` float images in ``[-1, 1]``.
    """

    feature_dim = 128
    num_classes = 10

    def __init__(self, batch_size: int = 500) -> None:
        super().__init__()
        self.batch_size = batch_size  # chunk size for the no-grad helpers
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),  # 7x7
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(128, self.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(self.feature_dim, self.num_classes)
        self.test_accuracy: float | None = None
        self.dataset: str | None = None
        self.digest: str | None = None  # sha256 of the weights, set when saved or loaded

    @property
    def version(self) -> str:
        """``<dataset>-<first 12 hex of the weights' sha256>``, e.g. ``mnist-1a2b3c4d5e6f``."""
        digest = self.digest or weights_digest(self.state_dict())
        return f"{self.dataset}-{digest[:12]}"

    def forward(self, x: Tensor) -> Tensor:
        """Training-time logits ``(N, 10)`` for ``x`` ``(N, 1, 28, 28)``, with autograd."""
        return self.head(self.conv(x))

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


def weights_digest(state_dict: dict[str, Tensor]) -> str:
    """sha256 (hex) of the names, dtypes, shapes and bytes of ``state_dict``'s tensors, in
    name order: it identifies the weights whatever file format they were saved in."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def shipped_path(dataset: str) -> Path:
    """The weights file shipped with the package for ``dataset`` (it may not exist)."""
    return SHIPPED_DIR / f"{dataset}.pt"


def default_cache_dir() -> Path:
    """``$EBMRUN_CACHE_DIR`` or ``~/.cache/ebmrun``."""
    return Path(os.environ.get("EBMRUN_CACHE_DIR") or Path.home() / ".cache" / "ebmrun")


def evaluator_path(dataset: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache file of a retrained evaluator for ``dataset`` (one without shipped weights)."""
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / "evaluators" / f"{dataset}-v{EVALUATOR_VERSION}.pt"


def save_evaluator(model: Evaluator, path: Path, seed: int, **extra: object) -> None:
    """Write ``model`` to ``path`` atomically (:func:`ebmrun.checkpoint.atomic_torch_save`),
    so a concurrent reader never sees a half-written file. ``extra``: plain values (numbers,
    strings) recorded beside the weights, e.g. how they were trained."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {"state_dict": state, "test_accuracy": model.test_accuracy,
               "dataset": model.dataset, "seed": seed, "version": EVALUATOR_VERSION, **extra}
    atomic_torch_save(payload, path)
    model.digest = weights_digest(state)


def load_evaluator(path: Path, dataset: str) -> Evaluator:
    """Load an evaluator written by :func:`save_evaluator` (``weights_only=True``)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model = Evaluator()
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:  # corrupt / foreign file: tell the user how to recover
        raise UserError(f"cannot read evaluator {path} ({type(exc).__name__}: {exc}); "
                        "delete the file to retrain it (a shipped one: reinstall ebmrun)"
                        ) from None
    if payload.get("dataset") != dataset or payload.get("version") != EVALUATOR_VERSION:
        raise UserError(f"evaluator {path} is for dataset {payload.get('dataset')!r} "
                        f"v{payload.get('version')}, expected {dataset!r} "
                        f"v{EVALUATOR_VERSION}; delete the file to retrain it")
    model.eval()
    model.dataset = dataset
    model.test_accuracy = payload.get("test_accuracy")
    model.digest = weights_digest(payload["state_dict"])
    return model


def get_evaluator(dataset: str, root: str | None, cache_dir: str | None = None,
                  seed: int = 0) -> Evaluator:
    """The evaluator for ``dataset`` ("mnist" or "fashion_mnist").

    The weights shipped with the package when there are some (no data, no training);
    otherwise the cached ``<cache_dir>/evaluators/<dataset>-v2.pt``, or one trained now on
    the training split under data root ``root`` (minutes, announced on stderr) and cached.
    ``cache_dir`` defaults to ``$EBMRUN_CACHE_DIR`` or ``~/.cache/ebmrun``.
    """
    recipe = recipe_for(dataset)  # fail fast on an unknown name, before touching files
    shipped = shipped_path(dataset)
    if shipped.is_file():
        return load_evaluator(shipped, dataset)
    path = evaluator_path(dataset, cache_dir)
    if path.exists():
        return load_evaluator(path, dataset)
    print(f"evaluator[{dataset}]: no shipped weights for {dataset}, so training its "
          f"sample-quality classifier on the training split now (about {recipe.minutes} min "
          f"on one CPU thread, once); it is cached at {path} for later runs", file=sys.stderr)
    model = train_evaluator(dataset, root, seed=seed)
    save_evaluator(model, path, seed)
    return model
