"""The PyTorch examples-repo VAE (pytorch/examples, vae/main.py), for comparisons with
``ebmrun model=vae``.

It mirrors how that example is written: a 784-400-20 MLP (``fc1``, ``fc21``/``fc22`` for
mean and log-variance, ``fc3``, ``fc4`` + sigmoid), ``F.binary_cross_entropy`` summed over
pixels plus the closed-form KL, Adam lr 1e-3 with its defaults, batch 128, and a
``DataLoader`` over ``torchvision.datasets.MNIST`` with ``transforms.ToTensor()`` (grey
values in [0, 1], one PIL conversion per item). It is *not* the ebmrun implementation; it
is the yardstick, so keep it faithful rather than fast.

torchvision's MNIST class reads unpacked IDX files, so the shared ``.gz`` files are
unpacked into a temporary folder first (the shared copy is read-only).

    python scripts/reference/vae_framework_example.py --bench [--iters 50 --warmup 5] [--threads 1]
    python scripts/reference/vae_framework_example.py --train --epochs 10

``--bench`` prints one JSON line with ``images_per_s`` (data fetch + training step, median
over iterations), like ``scripts/bench.py``. ``--train`` prints the example's per-epoch
train loss and test loss (summed BCE + KL per image, grey MNIST).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn, optim
from torch.utils.data import DataLoader
from torchvision import datasets, transforms


class VAE(nn.Module):
    """The example's model, unchanged: ``(B, 1, 28, 28)`` -> (recon ``(B, 784)``, mu, logvar)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    """Reconstruction + KL divergence losses summed over all elements and batch."""
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def unpacked_mnist(tmp: Path) -> Path:
    """Copy the shared MNIST .gz files, unpacked, to ``tmp/MNIST/raw`` (torchvision layout)."""
    shared = Path(os.environ.get("EBMRUN_DATA_DIR", "/work/shared/data")) / "MNIST" / "raw"
    raw = tmp / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in shared.glob("*.gz"):
        with gzip.open(gz, "rb") as src, open(raw / gz.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return tmp


def loaders(root: Path, batch_size: int = 128) -> tuple[DataLoader, DataLoader]:
    """The example's loaders (it passes ``num_workers=1, pin_memory=True`` only with CUDA,
    so on a CPU the items are loaded in the main process)."""
    tf = transforms.ToTensor()
    train = datasets.MNIST(str(root), train=True, download=False, transform=tf)
    test = datasets.MNIST(str(root), train=False, download=False, transform=tf)
    return (DataLoader(train, batch_size=batch_size, shuffle=True),
            DataLoader(test, batch_size=batch_size, shuffle=False))


def bench(train_loader: DataLoader, iters: int, warmup: int) -> dict:
    model = VAE()
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    times: list[float] = []
    it = iter(train_loader)
    for i in range(warmup + iters):
        start = time.perf_counter()
        try:
            data, _ = next(it)
        except StopIteration:
            it = iter(train_loader)
            data, _ = next(it)
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = loss_function(recon_batch, data, mu, logvar)
        loss.backward()
        loss.item()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    s_per_iter = statistics.median(times)
    return {"model": "vae_framework_example", "dataset": "mnist",
            "images_per_s": round(128 / s_per_iter, 1), "s_per_iter": round(s_per_iter, 5),
            "batch_size": 128,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "threads": torch.get_num_threads(), "device": "cpu"}


def train(train_loader: DataLoader, test_loader: DataLoader, epochs: int) -> None:
    torch.manual_seed(1)
    model = VAE()
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        train_loss = 0.0
        for data, _ in train_loader:
            optimizer.zero_grad()
            recon_batch, mu, logvar = model(data)
            loss = loss_function(recon_batch, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
        model.eval()
        test_loss = 0.0
        with torch.no_grad():
            for data, _ in test_loader:
                recon_batch, mu, logvar = model(data)
                test_loss += loss_function(recon_batch, data, mu, logvar).item()
        print(json.dumps({"epoch": epoch,
                          "train_loss": round(train_loss / len(train_loader.dataset), 3),
                          "test_loss": round(test_loss / len(test_loader.dataset), 3),
                          "elapsed_s": round(time.perf_counter() - start, 1)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="store_true", help="print images/s as JSON")
    parser.add_argument("--train", action="store_true", help="train and print test losses")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vae_example_") as tmp:
        train_loader, test_loader = loaders(unpacked_mnist(Path(tmp)))
        if args.train:
            train(train_loader, test_loader, args.epochs)
        else:
            print(json.dumps(bench(train_loader, args.iters, args.warmup)))


if __name__ == "__main__":
    main()
