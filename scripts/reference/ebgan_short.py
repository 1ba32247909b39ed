"""A short EBGAN on MNIST, the way a user writes one in an afternoon: the second yardstick
for ``ebmrun experiment=ebgan_mnist`` (issue 14).

The recipe: an infoGAN generator with BatchNorm (FC1024-BN-ReLU, FC 128·7·7-BN-ReLU,
ConvT 64-BN-ReLU, ConvT 1-Tanh) on z ~ N(0, I) of 62 dims; an auto-encoder discriminator
((64)4c2s-ReLU, FC 32 = the code, FC 64·14·14-BN-ReLU, (1)4dc2s); PyTorch's default
initialisation; energy = batch-mean MSE of the reconstruction against the (detached)
input; margin 1, λ_PT 0.1 (squared cosines); Adam 2e-4, β = (0.5, 0.999) for both nets;
batch 64 from a shuffling DataLoader; a fresh z for the generator step.
It differs from ``ebgan_popular.py`` only in the prior (N(0, I), not U[0, 1)), the
initialisation (PyTorch's default, not N(0, 0.02)) and the fresh z. Keep it faithful:
it is a yardstick, not something to tune.

    python scripts/reference/ebgan_short.py --out DIR [--steps N | --minutes M] [--threads 2]
        [--dataset fashion_mnist]
    python scripts/reference/ebgan_short.py --bench [--iters 50 --warmup 10]

Training writes DIR/samples.pt (1000, 1, 28, 28) float32 in [-1, 1] (G in eval mode),
samples.png, model.pt and run.json (steps, wall and CPU seconds); score the samples with
``python scripts/eval_samples.py DIR/samples.pt``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torchvision.utils
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ebmrun.data.idx import load_idx_dataset

Z_DIM, BATCH, MARGIN, PT_WEIGHT, LR, BETAS = 62, 64, 1.0, 0.1, 2e-4, (0.5, 0.999)


class Generator(nn.Module):
    """(B, 62) -> (B, 1, 28, 28) in (-1, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(Z_DIM, 1024), nn.BatchNorm1d(1024), nn.ReLU(),
                                nn.Linear(1024, 128 * 7 * 7), nn.BatchNorm1d(128 * 7 * 7),
                                nn.ReLU())
        self.deconv = nn.Sequential(nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.BatchNorm2d(64),
                                    nn.ReLU(), nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.fc(z).view(-1, 128, 7, 7))


class AutoEncoder(nn.Module):
    """(B, 1, 28, 28) -> reconstruction (B, 1, 28, 28) and code (B, 32)."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Sequential(nn.Conv2d(1, 64, 4, 2, 1), nn.ReLU(), nn.Flatten(),
                                    nn.Linear(64 * 14 * 14, 32))
        self.decode = nn.Sequential(nn.Linear(32, 64 * 14 * 14), nn.BatchNorm1d(64 * 14 * 14),
                                    nn.ReLU(), nn.Unflatten(1, (64, 14, 14)),
                                    nn.ConvTranspose2d(64, 1, 4, 2, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encode(x)
        return self.decode(code), code


def energy(D: AutoEncoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    recon, code = D(x)
    return nn.functional.mse_loss(recon, x.detach()), code


def pulling_away(codes: torch.Tensor) -> torch.Tensor:
    unit = codes / codes.norm(dim=1, keepdim=True)
    n = codes.shape[0]
    return ((unit @ unit.T).pow(2).sum() - n) / (n * (n - 1))


def batches(root: str, dataset: str = "mnist"):
    """Endless shuffled batches (64, 1, 28, 28) in [-1, 1]: what torchvision's MNIST (or
    FashionMNIST) with ToTensor() + Normalize((0.5,), (0.5,)) gives, read with ebmrun's idx
    reader because the shared data directory holds only the .gz files (torchvision wants
    them unpacked)."""
    raw = load_idx_dataset(dataset, root).train  # (60000, 1, 28, 28) uint8
    data = TensorDataset((raw.float() / 255 - 0.5) / 0.5)
    loader = DataLoader(data, batch_size=BATCH, shuffle=True, drop_last=True)
    while True:
        for (x,) in loader:
            yield x


def step(G, D, opt_g, opt_d, x) -> tuple[float, float]:
    e_real, _ = energy(D, x)
    e_fake, _ = energy(D, G(torch.randn(BATCH, Z_DIM)).detach())
    loss_d = e_real + torch.clamp(MARGIN - e_fake, min=0)
    opt_d.zero_grad()
    loss_d.backward()
    opt_d.step()

    e_fake, codes = energy(D, G(torch.randn(BATCH, Z_DIM)))  # a fresh z for G
    loss_g = e_fake + PT_WEIGHT * pulling_away(codes)
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()
    return loss_d.item(), loss_g.item()


def draw(G: Generator, n: int = 1000) -> torch.Tensor:
    """``n`` samples (n, 1, 28, 28) from G in eval mode (BatchNorm running statistics, as
    a user samples), from their own seeded stream so training is not perturbed."""
    G.eval()
    with torch.no_grad():
        samples = G(torch.randn(n, Z_DIM, generator=torch.Generator().manual_seed(1)))
    G.train()
    return samples.float().contiguous()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path)
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--minutes", type=float, default=None, help="or this wall-clock budget")
    p.add_argument("--snapshots", default="", help="also write samples_<step>.pt at these "
                   "steps, e.g. 1000,2000 (one run, several budgets)")
    p.add_argument("--bench", action="store_true", help="time steps, print JSON, no training run")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default="mnist", choices=("mnist", "fashion_mnist"),
                   help="the same script on Fashion-MNIST (score with eval_samples.py "
                        "--dataset fashion_mnist)")
    p.add_argument("--root", default=os.environ.get("EBMRUN_DATA_DIR") or "/work/shared/data")
    a = p.parse_args()
    if not a.bench and (a.out is None or (a.steps is None and a.minutes is None)):
        p.error("training needs --out DIR and --steps N or --minutes M")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    G, D = Generator(), AutoEncoder()
    opt_g = torch.optim.Adam(G.parameters(), lr=LR, betas=BETAS)
    opt_d = torch.optim.Adam(D.parameters(), lr=LR, betas=BETAS)
    data = batches(a.root, a.dataset)

    if a.bench:
        times = []
        for i in range(a.warmup + a.iters):
            x = next(data)
            t0 = time.perf_counter()
            step(G, D, opt_g, opt_d, x)
            if i >= a.warmup:
                times.append(time.perf_counter() - t0)
        times.sort()
        median = times[len(times) // 2]
        print(json.dumps({"impl": "ebgan_short", "images_per_s": round(BATCH / median, 1),
                          "s_per_iter": round(median, 5), "s_per_iter_min": round(times[0], 5),
                          "threads": torch.get_num_threads()}))
        return

    a.out.mkdir(parents=True, exist_ok=True)
    snapshots = {int(v) for v in a.snapshots.split(",") if v}
    wall0, cpu0, n = time.perf_counter(), time.process_time(), 0
    budget = float("inf") if a.minutes is None else a.minutes * 60
    while (a.steps is None or n < a.steps) and time.perf_counter() - wall0 < budget:
        loss_d, loss_g = step(G, D, opt_g, opt_d, next(data))
        n += 1
        if n % 250 == 0:
            print(f"step {n} loss_d {loss_d:.4f} loss_g {loss_g:.4f} "
                  f"({time.perf_counter() - wall0:.0f} s)", flush=True)
        if n in snapshots:
            torch.save(draw(G), a.out / f"samples_{n}.pt")
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    samples = draw(G)
    torch.save(samples, a.out / "samples.pt")
    torchvision.utils.save_image(samples[:100] * 0.5 + 0.5, a.out / "samples.png", nrow=10)
    torch.save({"G": G.state_dict(), "D": D.state_dict()}, a.out / "model.pt")
    info = {"steps": n, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "threads": a.threads,
            "dataset": a.dataset}
    (a.out / "run.json").write_text(json.dumps(info) + "\n")
    print(json.dumps(info))


if __name__ == "__main__":
    main()
