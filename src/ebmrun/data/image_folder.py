"""A folder of image files (any nesting), decoded once into one uint8 tensor.

Every image is read with PIL a single time at load, converted to RGB or grayscale, scaled so
its shorter side is ``image_size`` and centre-cropped to a square; training then batches by
indexing, with no per-step decoding.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from ebmrun.data.base import InMemoryData
from ebmrun.data.root import as_range, one_line
from ebmrun.errors import UserError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
PIL_MODES: dict[int, str] = {1: "L", 3: "RGB"}
PROGRESS_MIN_FILES = 1000  # show a progress bar above this many files


def find_images(folder: Path) -> list[Path]:
    """All image files under ``folder`` (recursive), sorted so the order and hence the
    train/test split do not depend on the file system."""
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def read_image(path: Path, image_size: int, mode: str) -> np.ndarray:
    """One image as ``(S, S)`` (mode ``"L"``) or ``(S, S, 3)`` (``"RGB"``) uint8: shorter
    side scaled to ``S``, centre crop. UserError naming the file if PIL cannot read it."""
    try:
        with Image.open(path) as img:
            # fit = centre-crop to a square, then resize: same as resize-shorter-side + crop.
            img = ImageOps.fit(img.convert(mode), (image_size, image_size),
                               method=Image.Resampling.BICUBIC)
            return np.asarray(img, dtype=np.uint8)
    except Exception as exc:  # UnidentifiedImageError, truncated data, decompression bomb
        raise UserError(f"cannot read image {path} ({type(exc).__name__}: {one_line(exc, 150)}); "
                        f"fix: delete or replace that file, or point dataset.path elsewhere"
                        ) from None


def load_image_folder(name: str = "image_folder", path: str = "???", image_size: int = 32,
                      channels: int = 3, test_fraction: float = 0.1, seed: int = 0,
                      value_range: tuple[float, float] = (-1.0, 1.0)) -> InMemoryData:
    """Load every image under ``path`` into memory and split off a test part.

    Args:
        name: dataset name used in run names and logs.
        path: folder to search recursively for png/jpg/jpeg/bmp/gif/webp files (``~`` and
            paths relative to the working directory are accepted).
        image_size: side ``S`` of the square output images.
        channels: 3 (RGB) or 1 (grayscale).
        test_fraction: share of images put in the test split, in ``[0, 1)``; at least one
            image when there are two or more.
        seed: seeds the permutation that picks the test images.
        value_range: range of ``to_float`` output, ``(low, high)`` (a list is accepted).

    Returns:
        InMemoryData with train ``(N - n_test, C, S, S)`` and test ``(n_test, C, S, S)``
        uint8 images, no labels, ``box == value_range``.
    """
    value_range = as_range(value_range, "dataset.value_range")
    mode = PIL_MODES.get(int(channels))
    if mode is None:
        raise UserError(f"dataset.channels must be 1 or 3, got {channels!r}; "
                        f"fix: set dataset.channels=3 (RGB) or 1 (grayscale)")
    if int(image_size) < 1:
        raise UserError(f"dataset.image_size must be >= 1, got {image_size!r}; "
                        f"fix: set dataset.image_size=32 or similar")
    if not 0.0 <= float(test_fraction) < 1.0:
        raise UserError(f"dataset.test_fraction must be in [0, 1), got {test_fraction!r}; "
                        f"fix: set dataset.test_fraction=0.1 or similar")
    if path in (None, "", "???"):
        raise UserError("dataset.path is not set; fix: set dataset.path=/path/to/images")
    folder = Path(os.path.abspath(os.path.expanduser(str(path))))
    if not folder.is_dir():
        raise UserError(f"image folder {folder} does not exist or is not a folder; "
                        f"fix: set dataset.path to a folder of images")
    files = find_images(folder)
    if not files:
        raise UserError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under "
                        f"{folder}; fix: put images there or set dataset.path elsewhere")

    size = int(image_size)
    # Filled in place: one (N, S, S[, C]) buffer instead of a list of N arrays plus a copy.
    images = np.empty((len(files), size, size) + ((3,) if mode == "RGB" else ()), np.uint8)
    for i, file in enumerate(tqdm(files, desc=f"loading {name}", unit="img",
                                  disable=len(files) <= PROGRESS_MIN_FILES)):
        images[i] = read_image(file, size, mode)
    data = torch.from_numpy(images)
    data = data.unsqueeze(1) if mode == "L" else data.permute(0, 3, 1, 2).contiguous()

    n = len(files)
    n_test = min(max(1, round(n * float(test_fraction))), n - 1) if n >= 2 else 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    # Sorted indices keep each split in file order, which makes the data easy to inspect.
    test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
    return InMemoryData(name=name, train=data[train_idx], test=data[test_idx],
                        value_range=value_range, box=value_range)
