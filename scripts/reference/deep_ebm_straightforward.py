"""Straightforward deep-EBM baseline on MNIST (UvA DL tutorial 8 recipe), for comparisons.

This file deliberately mirrors how a typical user writes the tutorial's recipe in plain
PyTorch: a Python-list replay buffer, ``.data``/``.grad`` manipulation in the Langevin loop,
toggling ``requires_grad`` on every parameter around sampling, a DataLoader over a
TensorDataset. It is *not* the ebmrun implementation; it is the yardstick that ebmrun's
speed and sample quality are compared against, so keep it faithful rather than fast.

    python scripts/reference/deep_ebm_straightforward.py --bench [--iters 20 --warmup 3]
    python scripts/reference/deep_ebm_straightforward.py --train --steps 2400 --out DIR

Differences from the tutorial, all mechanical: no PyTorch Lightning (its gradient clipping
``gradient_clip_val=0.1`` is the norm clip below, its per-epoch StepLR is stepped at the end
of each DataLoader pass = 468 steps with drop_last), and data comes from ebmrun's IDX loader
instead of torchvision.datasets.MNIST (same images, same [-1, 1] scaling).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torchvision.utils
from torch.utils.data import DataLoader, TensorDataset

from ebmrun.data.idx import load_idx_dataset

IMG_SHAPE = (1, 28, 28)
BATCH_SIZE = 128


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class CNNModel(nn.Module):
    """Score network f(x) = -E(x): (B, 1, 28, 28) -> (B,)."""

    def __init__(self, hidden_features: int = 32):
        super().__init__()
        c1, c2, c3 = hidden_features // 2, hidden_features, hidden_features * 2
        self.cnn_layers = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=5, stride=2, padding=4), Swish(),  # 16x16
            nn.Conv2d(c1, c2, kernel_size=3, stride=2, padding=1), Swish(),  # 8x8
            nn.Conv2d(c2, c3, kernel_size=3, stride=2, padding=1), Swish(),  # 4x4
            nn.Conv2d(c3, c3, kernel_size=3, stride=2, padding=1), Swish(),  # 2x2
            nn.Flatten(),
            nn.Linear(c3 * 4, c3), Swish(),
            nn.Linear(c3, 1),
        )

    def forward(self, x):
        return self.cnn_layers(x).squeeze(dim=-1)


def generate_samples(model, inp_imgs, steps=60, step_size=10):
    """The tutorial's Langevin loop on inp_imgs (B, 1, 28, 28), in place; returns them."""
    is_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad = False
    inp_imgs.requires_grad = True
    had_gradients_enabled = torch.is_grad_enabled()
    torch.set_grad_enabled(True)

    noise = torch.randn(inp_imgs.shape, device=inp_imgs.device)
    for _ in range(steps):
        noise.normal_(0, 0.005)
        inp_imgs.data.add_(noise.data)
        inp_imgs.data.clamp_(min=-1.0, max=1.0)

        out_imgs = -model(inp_imgs)
        out_imgs.sum().backward()
        inp_imgs.grad.data.clamp_(-0.03, 0.03)

        inp_imgs.data.add_(-step_size * inp_imgs.grad.data)
        inp_imgs.grad.detach_()
        inp_imgs.grad.zero_()
        inp_imgs.data.clamp_(min=-1.0, max=1.0)

    for p in model.parameters():
        p.requires_grad = True
    model.train(is_training)
    torch.set_grad_enabled(had_gradients_enabled)
    return inp_imgs.detach()


class Sampler:
    """Replay buffer as a Python list of (1, 1, 28, 28) CPU tensors."""

    def __init__(self, model, sample_size=BATCH_SIZE, max_len=8192):
        self.model = model
        self.sample_size = sample_size
        self.max_len = max_len
        self.examples = [torch.rand((1,) + IMG_SHAPE) * 2 - 1 for _ in range(sample_size)]

    def sample_new_exmps(self, steps=60, step_size=10):
        # ~5% of the batch starts from fresh noise, the rest from the buffer
        n_new = np.random.binomial(self.sample_size, 0.05)
        rand_imgs = torch.rand((n_new,) + IMG_SHAPE) * 2 - 1
        old_imgs = torch.cat(random.choices(self.examples, k=self.sample_size - n_new), dim=0)
        inp_imgs = torch.cat([rand_imgs, old_imgs], dim=0).detach()
        inp_imgs = generate_samples(self.model, inp_imgs, steps=steps, step_size=step_size)
        # as in the tutorial: new samples go in front, the buffer is cut at max_len
        self.examples = list(inp_imgs.cpu().chunk(self.sample_size, dim=0)) + self.examples
        self.examples = self.examples[:self.max_len]
        return inp_imgs


def make_loader(root):
    data = load_idx_dataset("mnist", root)
    images = data.to_float(data.train)  # (60000, 1, 28, 28) in [-1, 1]
    return DataLoader(TensorDataset(images, data.train_labels), batch_size=BATCH_SIZE,
                      shuffle=True, drop_last=True)


def endless(loader):
    """Batches of loader, epoch after epoch."""
    while True:
        yield from loader


def training_step(model, sampler, optimizer, real_imgs, alpha=0.1):
    small_noise = torch.randn_like(real_imgs) * 0.005
    real_imgs = real_imgs.add(small_noise).clamp(min=-1.0, max=1.0)
    fake_imgs = sampler.sample_new_exmps(steps=60, step_size=10)

    inp_imgs = torch.cat([real_imgs, fake_imgs], dim=0)
    real_out, fake_out = model(inp_imgs).chunk(2, dim=0)
    reg_loss = alpha * (real_out ** 2 + fake_out ** 2).mean()
    cdiv_loss = fake_out.mean() - real_out.mean()
    loss = reg_loss + cdiv_loss

    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    optimizer.step()
    return loss.item(), cdiv_loss.item(), reg_loss.item()


def setup(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = CNNModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.0, 0.999))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.97)
    return model, Sampler(model), optimizer, scheduler


def bench(args):
    model, sampler, optimizer, _ = setup(args.seed)
    loader = make_loader(args.root)
    batches = endless(loader)
    for _ in range(args.warmup):
        training_step(model, sampler, optimizer, next(batches)[0])
    start = time.perf_counter()
    for _ in range(args.iters):
        training_step(model, sampler, optimizer, next(batches)[0])
    elapsed = time.perf_counter() - start
    print(json.dumps({"impl": "straightforward",
                      "images_per_s": round(args.iters * BATCH_SIZE / elapsed, 2),
                      "s_per_iter": round(elapsed / args.iters, 4),
                      "threads": torch.get_num_threads()}))


def train(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, sampler, optimizer, scheduler = setup(args.seed)
    loader = make_loader(args.root)
    step, start = 0, time.perf_counter()
    while step < args.steps:
        for real_imgs, _ in loader:
            loss, cdiv, reg = training_step(model, sampler, optimizer, real_imgs)
            step += 1
            if step % 50 == 0 or step == args.steps:
                print(f"step {step}/{args.steps} loss {loss:.4f} cdiv {cdiv:.4f} "
                      f"reg {reg:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
            if step >= args.steps:
                break
        else:
            scheduler.step()  # once per full epoch, like Lightning's default interval
    torch.save(model.state_dict(), out / "model.pt")

    # final samples: fresh uniform noise, 256 Langevin steps with the training settings
    samples = generate_samples(model, torch.rand((1000,) + IMG_SHAPE) * 2 - 1,
                               steps=256, step_size=10)
    torch.save(samples.float().contiguous(), out / "samples.pt")
    buffer = random.sample(sampler.examples, k=min(1000, len(sampler.examples)))
    torch.save(torch.cat(buffer, dim=0).float(), out / "buffer.pt")
    torchvision.utils.save_image(samples[:100] * 0.5 + 0.5, out / "samples.png", nrow=10)
    print(f"saved model.pt, samples.pt, buffer.pt, samples.png to {out} "
          f"({time.perf_counter() - start:.0f} s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--bench", action="store_true", help="time training iterations")
    mode.add_argument("--train", action="store_true", help="train, then save samples")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2400)
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
