"""CIFAR-10 from torchvision's python layout: ``<root>/cifar-10-batches-py/``.

The pickled batches are read here rather than through ``torchvision.datasets.CIFAR10``
so that loading needs no md5 pass over 170 MB and no torchvision import; torchvision is
only used to download. The pickles are read with an unpickler that accepts nothing but
numpy arrays, so a data file cannot run code.
"""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ebmrun.data.base import InMemoryData
from ebmrun.data.download import install_files
from ebmrun.data.root import as_range, missing_files, missing_files_error, resolve_data_root
from ebmrun.errors import UserError

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")

# What a pickled numpy array may reference (numpy 1 and 2 module names, protocols 2-5).
_ALLOWED_GLOBALS = {
    (module, name)
    for module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray",
                   "numpy.core.numeric", "numpy._core.numeric")
    for name in ("_reconstruct", "ndarray", "dtype", "_frombuffer", "scalar")
} | {("_codecs", "encode")}  # protocol-2 pickles written by Python 3 store bytes this way


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals needed to rebuild arrays."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 (pickle API)
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64."""
    try:
        with path.open("rb") as f:
            # latin1: the official files are Python 2 pickles of numpy arrays.
            batch = _ArrayOnlyUnpickler(f, encoding="latin1").load()
        # Keys are str in the official (Python 2) files, bytes in Python 3 pickles.
        data = batch.get("data", batch.get(b"data"))
        labels = batch.get("labels", batch.get(b"labels"))
        images = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
    except Exception as exc:  # truncated, not a pickle, wrong keys/shapes: all "corrupt"
        raise UserError(f"{path} is not a valid CIFAR-10 batch ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:150]}); fix: delete {path.parent} "
                        f"and download the python version again") from None
    return images, labels


def _read_split(files: tuple[str, ...], folder: Path) -> tuple[Tensor, Tensor]:
    """Concatenated images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64."""
    parts = [_read_batch(folder / f) for f in files]
    return (torch.from_numpy(np.concatenate([p[0] for p in parts])),
            torch.from_numpy(np.concatenate([p[1] for p in parts])))


def _download(root: Path) -> None:
    """Fetch and unpack the python version with torchvision (which checks its md5) in a
    temporary folder, then copy the missing files into ``root/cifar-10-batches-py``: a failed
    download leaves nothing in ``root``. torchvision is imported only here (slow)."""
    import torchvision.datasets

    with tempfile.TemporaryDirectory(prefix="ebmrun-download-") as tmp:
        torchvision.datasets.CIFAR10(tmp, train=True, download=True)
        dest = root / FOLDER
        install_files(Path(tmp) / FOLDER, dest, [f for f in TRAIN_FILES + TEST_FILES
                                                 if not (dest / f).is_file()])


def load_cifar10(name: str = "cifar10", root: str | None = None, download: bool = False,
                 value_range: tuple[float, float] = (-1.0, 1.0)) -> InMemoryData:
    """Load CIFAR-10 into memory.

    Args:
        name: dataset name used in run names and logs.
        root: data root holding ``cifar-10-batches-py/`` (see
            :func:`~ebmrun.data.root.resolve_data_root` for the default).
        download: fetch missing files with torchvision (needs network and a writable root);
            all or nothing: a failed download leaves nothing in the root.
        value_range: range of ``to_float`` output, ``(low, high)`` (a list is accepted).

    Returns:
        InMemoryData with train ``(50000, 3, 32, 32)`` and test ``(10000, 3, 32, 32)`` uint8
        images, int64 labels in 0..9, ``box == value_range`` and the 10 class names.
    """
    value_range = as_range(value_range, "dataset.value_range")
    data_root = resolve_data_root(root)
    required = [f"{FOLDER}/{f}" for f in TRAIN_FILES + TEST_FILES]

    missing = missing_files(data_root, required)
    note = "the python version, cifar-10-python.tar.gz unpacked"
    if missing and download:
        try:
            _download(data_root)
        except Exception as exc:  # no network, read-only root, mirror down: all end the same
            note = f"download failed: {type(exc).__name__}: {exc}"
        missing = missing_files(data_root, required)
    if missing:
        raise missing_files_error(name, data_root, missing, FOLDER, note,
                                  download_tried=download)

    folder = data_root / FOLDER
    train, train_labels = _read_split(TRAIN_FILES, folder)
    test, test_labels = _read_split(TEST_FILES, folder)
    return InMemoryData(name=name, train=train, test=test, value_range=value_range,
                        box=value_range, train_labels=train_labels, test_labels=test_labels,
                        classes=list(CLASSES))
