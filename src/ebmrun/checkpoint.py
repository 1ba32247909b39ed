"""Checkpoints: atomic writes, safe loads, and the saved config.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(..., weights_only=True)``: a file whose pickle would run code is refused.
Files are written to a temporary name in the same directory, flushed to disk and renamed
over the target, so a crash mid-write leaves the previous good checkpoint intact.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from ebmrun.errors import UserError

FORMAT = "ebmrun-checkpoint"
VERSION = 1
CKPT_NAME = "last.pt"


def _file_mode() -> int:
    """The mode a plain ``open()`` would give a new file: 0o666 minus the umask (mkstemp's
    files are 0600, which hid run outputs from the rest of a lab group)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file + fsync + rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_json(obj: Any, path: Path) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_checkpoint(payload: dict, run_dir: Path, name: str = CKPT_NAME) -> Path:
    """Write ``payload`` (see :func:`ebmrun.run` for the keys) as ``run_dir/name``
    (``last.pt``; scripts may keep others beside it)."""
    path = Path(run_dir) / name
    atomic_torch_save({"format": FORMAT, "version": VERSION, **payload}, path)
    # A process killed mid-write leaves its temp file behind; the new checkpoint is
    # complete now, so those leftovers can go.
    for stale in path.parent.glob(f".{name}.*.tmp"):
        stale.unlink(missing_ok=True)
    return path


def resolve_checkpoint_path(path_or_dir: str | os.PathLike) -> Path:
    """A checkpoint file from a file path or a run dir (which holds ``last.pt``)."""
    path = Path(path_or_dir).expanduser()
    if path.is_dir():
        path = path / CKPT_NAME
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (fix: pass ckpt=<run dir or .pt file> "
                        f"of a finished or interrupted run)")
    return path


def load_checkpoint(path_or_dir: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> dict:
    """Load and sanity-check an ebmrun checkpoint with ``weights_only=True``.

    Raises :class:`UserError` for missing, truncated, corrupt, unsafe or foreign files.
    """
    path = resolve_checkpoint_path(path_or_dir)
    corrupt = UserError(f"cannot read checkpoint {path}: the file is truncated or corrupt "
                        f"(fix: use another checkpoint, e.g. the run's last.pt)")
    if not zipfile.is_zipfile(path):  # torch.save always writes a zip archive
        raise corrupt
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # weights_only=True met a pickle that would import or call code: never run it.
        raise UserError(f"refusing to load {path}: it contains objects other than tensors and "
                        f"plain data (code could run on load); only load checkpoints written "
                        f"by ebmrun") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError):
        raise corrupt from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not an ebmrun checkpoint (fix: pass a last.pt written by "
                        f"ebmrun)")
    if ckpt.get("version") != VERSION:
        raise UserError(f"{path} has checkpoint format version {ckpt.get('version')}, this "
                        f"ebmrun reads version {VERSION} (fix: re-train or use a matching "
                        f"ebmrun version)")
    ckpt["path"] = str(path)
    return ckpt


def load_model_state(model: torch.nn.Module, ckpt: dict, ema: bool = False) -> None:
    """Load the checkpoint's weights into ``model``; a mismatch is one clear line. ``ema``:
    the EMA of the weights where the run kept one (sampling, evaluation)."""
    try:
        model.load_state_dict(ckpt["ema"] if ema and ckpt.get("ema") else ckpt["model"])
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[0][:160]
        raise UserError(f"checkpoint {ckpt.get('path')} does not match the configured model "
                        f"({detail}) (fix: sample/resume with the checkpoint's own config, "
                        f"without model overrides)") from None
