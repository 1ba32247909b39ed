"""MNIST and Fashion-MNIST from their IDX files, in torchvision's raw layout.

The files are read directly (``<root>/MNIST/raw/train-images-idx3-ubyte.gz`` or the same
name unpacked), not through ``torchvision.datasets``: torchvision with ``download=False``
wants the unpacked files and with ``download=True`` writes next to the ``.gz``, which fails
on a read-only shared copy. Decoding is one gzip inflate and one ``frombuffer`` per file,
so the whole of MNIST loads in well under a second.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ebmrun.data.base import InMemoryData
from ebmrun.data.download import DownloadError, fetch_dataset
from ebmrun.data.root import (DATA_DIR_ENV, as_range, missing_files, missing_files_error,
                              resolve_data_root)
from ebmrun.errors import UserError


@dataclass(frozen=True)
class IdxSpec:
    """Where one IDX dataset lives and how to fetch it."""

    folder: str  # torchvision's folder name under the root: <root>/<folder>/raw
    torchvision_class: str  # name of the torchvision.datasets class that can download it
    classes: tuple[str, ...]


IDX_DATASETS: dict[str, IdxSpec] = {
    "mnist": IdxSpec("MNIST", "MNIST", (
        "0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
        "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine")),
    "fashion_mnist": IdxSpec("FashionMNIST", "FashionMNIST", (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")),
}

# split -> (images file, labels file), without the .gz suffix.
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Either form of each file is accepted; the .gz name is the one reported as missing.
SUFFIXES = (".gz", "")

# IDX type code (third magic byte) -> big-endian numpy dtype.
IDX_DTYPES: dict[int, str] = {
    0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, source: Path | str = "<bytes>") -> np.ndarray:
    """Decode an IDX byte string into an array of its declared shape (native byte order).

    Layout: 2 zero bytes, a type code, the number of dimensions ``d``, ``d`` big-endian
    uint32 sizes, then the values in row-major order. Any mismatch is a UserError naming
    ``source``.
    """
    def corrupt(why: str) -> UserError:
        return UserError(f"{source} is not a valid IDX file ({why}); fix: delete it and "
                         f"download it again (or restore it from a good copy)")

    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise corrupt(f"bad magic number {data[:4].hex() or 'none'}")
    dtype, ndim = np.dtype(IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise corrupt("header cut short")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise corrupt(f"{len(data)} bytes where the header {list(shape)} implies {expected}")
    # astype copies into a writable native-endian array that torch can own.
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(
        dtype.newbyteorder("="))


def read_idx(path_without_gz: Path) -> np.ndarray:
    """Read ``<path>`` if it exists (unpacked, fastest), else ``<path>.gz``."""
    path = path_without_gz if path_without_gz.is_file() else path_without_gz.with_name(
        path_without_gz.name + ".gz")
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as exc:  # truncated / not gzip / unreadable
        raise UserError(f"cannot read {path} ({exc}); fix: delete it and download it again "
                        f"(or restore it from a good copy)") from None
    return parse_idx(data, path)


def misdirected_root(spec: IdxSpec, root: Path) -> Path | None:
    """The root the user meant when ``root`` points inside the dataset's own folder (e.g.
    ``<dir>/MNIST`` or ``<dir>/MNIST/raw`` instead of ``<dir>``), else None."""
    probe = IDX_FILES["train"][0]
    for meant, raw in ((root.parent, root / "raw"), (root.parent.parent, root)):
        if raw.name == "raw" and raw.parent.name == spec.folder and any(
                (raw / (probe + s)).is_file() for s in SUFFIXES):
            return meant
    return None


def _load_split(name: str, raw: Path, split: str) -> tuple[Tensor, Tensor]:
    """Images ``(N, 1, H, W)`` uint8 and labels ``(N,)`` int64 of one split."""
    images_file, labels_file = IDX_FILES[split]
    images, labels = read_idx(raw / images_file), read_idx(raw / labels_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(
            f"dataset {name}: {raw / images_file} has shape {images.shape} and "
            f"{raw / labels_file} has shape {labels.shape}, expected (N, H, W) and (N,); "
            f"fix: replace them with the original {name} files")
    return (torch.from_numpy(images.astype(np.uint8, copy=False)).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)))


# dataset.binarize choices: null (grey values) | dynamic (a fresh Bernoulli draw of every
# training image each time it is used, made by the objective; see InMemoryData.binarize).
BINARIZE_CHOICES = (None, "dynamic")


def load_idx_dataset(name: str, root: str | None = None, download: bool = False,
                     value_range: tuple[float, float] = (-1.0, 1.0),
                     binarize: str | None = None) -> InMemoryData:
    """Load MNIST or Fashion-MNIST into memory.

    Args:
        name: ``"mnist"`` or ``"fashion_mnist"``.
        root: data root holding ``MNIST/raw`` / ``FashionMNIST/raw`` (see
            :func:`~ebmrun.data.root.resolve_data_root` for the default).
        download: fetch missing files (needs network and a writable root); all or nothing,
            md5-verified (see :mod:`ebmrun.data.download`).
        value_range: range of ``to_float`` output, ``(low, high)`` (a list is accepted).
        binarize: ``None`` or ``"dynamic"`` (binarised-MNIST benchmark; needs
            ``value_range=[0, 1]``: grey values are the Bernoulli probabilities).

    Returns:
        InMemoryData with train ``(60000, 1, 28, 28)`` and test ``(10000, 1, 28, 28)`` uint8
        images, int64 labels in 0..9, ``box == value_range`` and the 10 class names.
    """
    spec = IDX_DATASETS.get(name)
    if spec is None:
        raise UserError(f"unknown IDX dataset {name!r}; fix: set dataset.name to one of "
                        f"{', '.join(sorted(IDX_DATASETS))}")
    value_range = as_range(value_range, "dataset.value_range")
    if binarize not in BINARIZE_CHOICES:
        raise UserError(f"dataset.binarize={binarize} is invalid (choose from: null, dynamic)")
    if binarize is not None and value_range != (0.0, 1.0):
        raise UserError(f"dataset.binarize={binarize} needs grey values in [0, 1] as the "
                        f"pixel probabilities, got value_range {list(value_range)} "
                        f"(fix: dataset.value_range=[0,1])")
    data_root = resolve_data_root(root)
    folder = f"{spec.folder}/raw"
    required = [f"{folder}/{f}" for pair in IDX_FILES.values() for f in pair]

    missing = missing_files(data_root, required, SUFFIXES)
    meant = misdirected_root(spec, data_root) if missing else None
    if meant is not None:  # never download into <dir>/MNIST/MNIST/raw
        raise UserError(f"dataset {name}: data root {data_root} is inside the {spec.folder} "
                        f"folder; fix: dataset.root={meant} (or {DATA_DIR_ENV}={meant}): the "
                        f"root is the folder that holds {folder}/")
    note = "the .gz or unpacked form of each"
    if missing and download:
        try:  # all or nothing: a failure leaves no file or folder behind
            fetch_dataset(name, data_root / folder, [Path(m).name for m in missing])
        except DownloadError as exc:
            note = f"download failed: {exc}"
        missing = missing_files(data_root, required, SUFFIXES)
    if missing:
        raise missing_files_error(
            name, data_root, missing, folder, note, download_tried=download,
            fetch_command=f"python -m ebmrun.data.fetch {name} --root <dir>")

    raw = data_root / folder
    train, train_labels = _load_split(name, raw, "train")
    test, test_labels = _load_split(name, raw, "test")
    return InMemoryData(name=name, train=train, test=test, value_range=value_range,
                        box=value_range, train_labels=train_labels, test_labels=test_labels,
                        classes=list(spec.classes), binarize=binarize)
