"""The popular EBGAN recipe on MNIST (pytorch-generative-model-collections style), for
comparisons with ``ebmrun experiment=ebgan_mnist``.

This mirrors how the widely copied PyTorch EBGAN is written: an infoGAN generator
(FC1024-BN-ReLU, FC 128·7·7-BN-ReLU, ConvT 64-BN-ReLU, ConvT 1-Tanh; z ~ U[0, 1)^62),
an auto-encoder discriminator ((64)4c2s-ReLU, FC 32 = the code, FC 64·14·14-BN-ReLU,
(1)4dc2s), N(0, 0.02) weight init, batch 64, Adam 2e-4 β = (0.5, 0.999) for both nets,
margin 1, λ_PT = 0.1, batch-mean MSE energies with the generated image detached as the
reconstruction target, and a DataLoader over a TensorDataset. It is *not* the ebmrun
implementation; it is the yardstick, so keep it faithful rather than fast. One deliberate
difference: the pulling-away term is the correct one (squared cosines), not the repo's.

    python scripts/reference/ebgan_popular.py --bench [--iters 30 --warmup 5]
    python scripts/reference/ebgan_popular.py --train --minutes 10 --out DIR

``--train`` writes samples.pt (1000, 1, 28, 28) float32 in [-1, 1], samples.png, model.pt.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torchvision.utils
from torch.utils.data import DataLoader, TensorDataset

from ebmrun.data.idx import load_idx_dataset

BATCH_SIZE = 64
Z_DIM = 62
MARGIN = 1.0
PT_WEIGHT = 0.1


def initialize_weights(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            m.weight.data.normal_(0, 0.02)
            m.bias.data.zero_()
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.weight.data.normal_(1, 0.02)
            m.bias.data.zero_()


class Generator(nn.Module):
    """infoGAN: FC1024_BR-FC7x7x128_BR-(64)4dc2s_BR-(1)4dc2s_T; (B, 62) -> (B, 1, 28, 28)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(Z_DIM, 1024), nn.BatchNorm1d(1024), nn.ReLU(),
            nn.Linear(1024, 128 * 7 * 7), nn.BatchNorm1d(128 * 7 * 7), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh())
        initialize_weights(self)

    def forward(self, z):
        return self.deconv(self.fc(z).view(-1, 128, 7, 7))


class Discriminator(nn.Module):
    """Auto-encoder (64)4c2s-FC32-FC64*14*14_BR-(1)4dc2s; returns (reconstruction, code)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 64, 4, 2, 1), nn.ReLU())
        self.fc = nn.Sequential(
            nn.Linear(64 * 14 * 14, 32),  # the code (no BN/ReLU: the PT term uses it)
            nn.Linear(32, 64 * 14 * 14), nn.BatchNorm1d(64 * 14 * 14), nn.ReLU())
        self.deconv = nn.Sequential(nn.ConvTranspose2d(64, 1, 4, 2, 1))
        initialize_weights(self)

    def forward(self, x):
        x = self.conv(x).view(x.size(0), -1)
        code = self.fc[0](x)
        x = self.fc(x).view(-1, 64, 14, 14)
        return self.deconv(x), code


def pullaway_loss(codes):
    """Mean over i != j of squared cosine similarity (the paper's PT; the popular repo
    forgets the square)."""
    normalized = codes / torch.sqrt(torch.sum(codes ** 2, 1, keepdim=True))
    similarity = torch.matmul(normalized, normalized.transpose(1, 0))
    n = codes.size(0)
    return (torch.sum(similarity ** 2) - n) / (n * (n - 1))


def make_loader(root):
    data = load_idx_dataset("mnist", root)
    images = data.to_float(data.train)  # (60000, 1, 28, 28) in [-1, 1]
    return DataLoader(TensorDataset(images, data.train_labels), batch_size=BATCH_SIZE,
                      shuffle=True, drop_last=True)


def endless(loader):
    while True:
        yield from loader


def setup(seed):
    torch.manual_seed(seed)
    G, D = Generator(), Discriminator()
    G_optimizer = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    D_optimizer = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    return G, D, G_optimizer, D_optimizer


def training_step(G, D, G_optimizer, D_optimizer, x_):
    mse = nn.MSELoss()
    z_ = torch.rand((x_.size(0), Z_DIM))

    # update D network
    D_optimizer.zero_grad()
    D_real, _ = D(x_)
    D_real_loss = mse(D_real, x_)
    G_ = G(z_)
    D_fake, _ = D(G_)
    D_fake_loss = mse(D_fake, G_.detach())
    D_loss = D_real_loss + torch.clamp(MARGIN - D_fake_loss, min=0)
    D_loss.backward()
    D_optimizer.step()

    # update G network
    G_optimizer.zero_grad()
    G_ = G(z_)
    D_fake, D_fake_code = D(G_)
    D_fake_loss = mse(D_fake, G_.detach())
    G_loss = D_fake_loss + PT_WEIGHT * pullaway_loss(D_fake_code)
    G_loss.backward()
    G_optimizer.step()
    return D_loss.item(), G_loss.item()


def bench(args):
    G, D, G_opt, D_opt = setup(args.seed)
    batches = endless(make_loader(args.root))
    for _ in range(args.warmup):
        training_step(G, D, G_opt, D_opt, next(batches)[0])
    start = time.perf_counter()
    for _ in range(args.iters):
        training_step(G, D, G_opt, D_opt, next(batches)[0])
    elapsed = time.perf_counter() - start
    print(json.dumps({"impl": "ebgan_popular",
                      "images_per_s": round(args.iters * BATCH_SIZE / elapsed, 2),
                      "s_per_iter": round(elapsed / args.iters, 4),
                      "threads": torch.get_num_threads()}))


def train(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    G, D, G_opt, D_opt = setup(args.seed)
    batches = endless(make_loader(args.root))
    budget, start, step = args.minutes * 60.0, time.perf_counter(), 0
    while time.perf_counter() - start < budget:
        d_loss, g_loss = training_step(G, D, G_opt, D_opt, next(batches)[0])
        step += 1
        if step % 100 == 0:
            print(f"step {step} D_loss {d_loss:.4f} G_loss {g_loss:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    torch.save({"G": G.state_dict(), "D": D.state_dict()}, out / "model.pt")

    G.eval()  # as the repo's visualisation does
    with torch.no_grad():
        samples = G(torch.rand((1000, Z_DIM))).clamp(-1, 1)
    torch.save(samples.float().contiguous(), out / "samples.pt")
    torchvision.utils.save_image(samples[:100] * 0.5 + 0.5, out / "samples.png", nrow=10)
    print(f"{step} steps in {time.perf_counter() - start:.0f} s; saved model.pt, samples.pt, "
          f"samples.png to {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--bench", action="store_true", help="time training iterations")
    mode.add_argument("--train", action="store_true", help="train, then save samples")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--minutes", type=float, default=10.0, help="--train wall-clock budget")
    parser.add_argument("--out", type=str, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--root", type=str,
                        default=os.environ.get("EBMRUN_DATA_DIR") or "/work/shared/data")
    args = parser.parse_args()
    if args.train and not args.out:
        parser.error("--train needs --out DIR")
    torch.set_num_threads(args.threads)
    if args.bench:
        bench(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
