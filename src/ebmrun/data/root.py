"""Where dataset files live, and the one-line error for when they are not there.

Shared by the file-based loaders (MNIST, Fashion-MNIST, CIFAR-10): they all look under one
data root, laid out the way torchvision lays it out, so a root filled by torchvision (or a
shared read-only copy) works as is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ebmrun.errors import UserError

DATA_DIR_ENV = "EBMRUN_DATA_DIR"
DEFAULT_DATA_DIR = "data"


def resolve_data_root(root: str | os.PathLike | None) -> Path:
    """The absolute data root: ``root`` if given (non-empty), else ``$EBMRUN_DATA_DIR``, else
    ``./data``. ``~`` is expanded; a relative path is taken relative to the current working
    directory (Hydra 1.3 does not change it unless ``hydra.job.chdir=true``)."""
    chosen = str(root) if root not in (None, "") else os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    # abspath (not resolve) so messages show the path the user gave, without following links.
    return Path(os.path.abspath(os.path.expanduser(chosen)))


def missing_files(root: Path, required: Sequence[str], suffixes: Sequence[str] = ("",)) -> list[str]:
    """The entries of ``required`` (paths relative to ``root``) that are absent.

    An entry counts as present when ``root / (entry + s)`` is a file for any ``s`` in
    ``suffixes`` (e.g. ``(".gz", "")`` accepts the compressed or the unpacked file). Missing
    entries are returned with the first suffix appended, i.e. under their preferred name.
    """
    return [rel + suffixes[0] for rel in required
            if not any((root / (rel + s)).is_file() for s in suffixes)]


def one_line(text: object, limit: int = 200) -> str:
    """``text`` squeezed onto one line and cut to ``limit`` characters (for embedding an
    exception's message, which may span lines, in a one-line UserError)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def missing_files_error(dataset: str, root: Path, missing: Sequence[str], folder: str,
                        note: str = "", download_tried: bool = False,
                        fetch_command: str = "") -> UserError:
    """The one-line UserError for missing dataset files: which files, which folder, and the
    ways to provide them.

    Args:
        dataset: dataset name, e.g. ``"mnist"``.
        root: the data root that was searched.
        missing: the missing paths, relative to ``root``.
        folder: the folder (relative to ``root``) the files belong in, e.g. ``"MNIST/raw"``.
        note: extra detail, e.g. why a download failed; appended in parentheses.
        download_tried: a download was attempted (so ``dataset.download=true`` is already on
            and is not suggested; a copy from a machine with network is).
        fetch_command: a command that downloads them there, e.g.
            ``python -m ebmrun.data.fetch mnist --root <dir>``.
    """
    detail = f" ({one_line(note, limit=400)})" if note else ""
    how = f"`{fetch_command}`" if fetch_command else "dataset.download=true"
    fetch = (f"or download them where there is network ({how}) and copy them over"
             if download_tried else "or set dataset.download=true with network access")
    return UserError(
        f"dataset {dataset}: missing {', '.join(missing)} under data root {root}{detail}; "
        f"fix: put them under {root / folder}/, or point dataset.root=<dir> (or "
        f"{DATA_DIR_ENV}=<dir>) at a root that has them, {fetch}")


def as_range(value: Sequence[float], what: str) -> tuple[float, float]:
    """``value`` (a tuple, or the list Hydra passes) as a ``(low, high)`` float pair with
    ``low < high``; UserError naming the config field ``what`` otherwise."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be two numbers [low, high], got {value!r}; "
                        f"fix: set {what}=[-1.0,1.0] or similar") from None
    if not low < high:
        raise UserError(f"{what} must have low < high, got {value!r}; "
                        f"fix: set {what}=[low,high] with low < high")
    return low, high
