"""Checkpoints: atomic writes, safe loading, clear errors for bad files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ebmrun.checkpoint import (atomic_torch_save, load_checkpoint, resolve_checkpoint_path,
                               save_checkpoint)
from ebmrun.errors import UserError


def test_roundtrip_from_file_or_dir(tmp_path: Path) -> None:
    save_checkpoint({"step": 3, "model": {"w": torch.ones(2)}}, tmp_path)
    for where in (tmp_path, tmp_path / "last.pt"):
        ckpt = load_checkpoint(where)
        assert ckpt["step"] == 3 and torch.equal(ckpt["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp files left


def test_failed_write_keeps_previous_checkpoint(tmp_path: Path) -> None:
    save_checkpoint({"step": 1}, tmp_path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"bad": Unsaveable()}, tmp_path / "last.pt")
    assert load_checkpoint(tmp_path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class _RunsCode:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "ebmrun-checkpoint", "version": 1, "x": _RunsCode(marker)}, path)
    with pytest.raises(UserError, match="refusing to load") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", os.urandom(4096)])
def test_garbage_files_are_user_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "random.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="truncated or corrupt|refusing|not an ebmrun"):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    save_checkpoint({"step": 1, "model": {"w": torch.randn(1000)}}, tmp_path)
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_checkpoint(tmp_path)


def test_foreign_torch_file_and_old_version(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not an ebmrun checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"format": "ebmrun-checkpoint", "version": 99}, tmp_path / "new.pt")
    with pytest.raises(UserError, match="format version 99"):
        load_checkpoint(tmp_path / "new.pt")


def test_missing_checkpoint_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="checkpoint not found.*fix: pass ckpt="):
        resolve_checkpoint_path(tmp_path / "nothing")
    with pytest.raises(UserError, match="last.pt"):
        resolve_checkpoint_path(tmp_path)  # a dir without last.pt

