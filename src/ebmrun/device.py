"""Device selection: ``device=auto|cpu|cuda|mps``."""

from __future__ import annotations

import torch

from ebmrun.config import DeviceConfig
from ebmrun.errors import UserError


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


AVAILABLE = {"cuda": torch.cuda.is_available, "mps": _mps_available, "cpu": lambda: True}
AUTO_ORDER = ("cuda", "mps", "cpu")


def resolve_device(cfg: DeviceConfig) -> torch.device:
    """The torch device named by ``cfg.name`` (``auto``: first available of cuda, mps, cpu).

    Also applies ``cfg.threads`` to torch's CPU thread pool and, on CUDA, ``cfg.tf32``.
    """
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    name = cfg.name
    if name == "auto":
        name = next(n for n in AUTO_ORDER if AVAILABLE[n]())
    if name not in AVAILABLE:
        raise UserError(f"unknown device '{name}' (choose from: auto, {', '.join(AVAILABLE)})")
    if not AVAILABLE[name]():
        raise UserError(f"device={name} was requested but {name.upper()} is not available on "
                        f"this machine (fix: device=cpu or device=auto)")
    if name == "cuda" and cfg.tf32:  # convolutions already use TF32 by torch's default
        torch.backends.cuda.matmul.allow_tf32 = True
    return torch.device(name)
