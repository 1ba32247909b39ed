"""Downloading MNIST / Fashion-MNIST safely: all or nothing, md5-verified.

Every missing file of a dataset is fetched into a private temporary folder (outside the data
root) and checked against its md5; only when all of them are complete and verified are they
copied into ``<root>/<folder>/raw`` (each under a hidden name, then renamed). A download that
fails half-way, a wrong mirror, or no network leaves nothing behind: no partial files and no
empty folders in the user's data root.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

# Base URLs tried in order for each dataset (the ones torchvision uses).
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "http://yann.lecun.com/exdb/mnist/"),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

# md5 of each published .gz file.
MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}

# Optional base URL of a copy of a data root (``<url>/MNIST/raw/<file>``), e.g. a lab's
# internal mirror; tried before the public mirrors.
MIRROR_ENV = "EBMRUN_DATA_MIRROR"

TIMEOUT_S = 30.0  # per connection attempt / read; a dead mirror must not hang a run
CHUNK = 1 << 16


class DownloadError(Exception):
    """A download that did not complete; its message is short and on one line."""


def _reason(url: str, exc: BaseException) -> str:
    """``host: why`` for a failed fetch, short enough to quote whole in a one-line error."""
    host = urlsplit(url).netloc or url
    if isinstance(exc, urllib.error.HTTPError):
        why = f"HTTP {exc.code} for {urlsplit(url).path.rsplit('/', 1)[-1]}"
    elif isinstance(exc, urllib.error.URLError):
        why = str(exc.reason)
    elif isinstance(exc, (socket.timeout, TimeoutError)):
        why = f"no answer within {TIMEOUT_S:.0f} s"
    else:
        why = f"{type(exc).__name__}: {exc}"
    return f"{host}: {' '.join(why.split())}"


def _fetch(url: str, dest: Path, md5: str) -> None:
    """Stream ``url`` into ``dest`` and check its md5; DownloadError on any failure."""
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, dest.open("wb") as out:
            print(f"data: downloading {url}", file=sys.stderr, flush=True)  # connected
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError, HTTPError,
        # timeouts, a connection cut mid-file (IncompleteRead)
        raise DownloadError(_reason(url, exc)) from None
    if digest.hexdigest() != md5:
        raise DownloadError(f"{urlsplit(url).netloc}: {dest.name} has md5 "
                            f"{digest.hexdigest()}, expected {md5} (incomplete or wrong file)")


def fetch_dataset(name: str, raw_dir: Path, files: Sequence[str],
                  mirrors: Sequence[str] | None = None) -> None:
    """Download ``files`` (names from :data:`MD5`) of dataset ``name`` into ``raw_dir``.

    Mirrors: ``mirrors``, else ``$EBMRUN_DATA_MIRROR`` (if set) then :data:`MIRRORS`. All
    files land in a temporary folder first and are verified; only then is ``raw_dir``
    created and filled. Raises DownloadError (nothing written) if any file fails on every
    mirror.
    """
    if mirrors is None:
        local = os.environ.get(MIRROR_ENV)
        own = [f"{local.rstrip('/')}/{raw_dir.parent.name}/raw/"] if local else []
        mirrors = [*own, *MIRRORS[name]]
    with tempfile.TemporaryDirectory(prefix="ebmrun-download-") as tmp:
        for filename in files:
            reasons = []
            for base in mirrors:
                url = base.rstrip("/") + "/" + filename
                try:
                    _fetch(url, Path(tmp) / filename, MD5[name][filename])
                    break
                except DownloadError as exc:
                    reasons.append(str(exc))
            else:
                raise DownloadError("; ".join(reasons))
        install_files(Path(tmp), raw_dir, files)


def install_files(src: Path, raw_dir: Path, files: Sequence[str]) -> None:
    """Copy the complete, verified ``files`` from ``src`` into ``raw_dir``, each renamed into
    place from a hidden temporary name. On failure, undo: remove what was copied and the
    folders this call created."""
    created = [p for p in (raw_dir, *raw_dir.parents) if not p.exists()]
    placed: list[Path] = []
    try:
        raw_dir.mkdir(parents=True, exist_ok=True)
        for filename in files:
            part = raw_dir / f".{filename}.{os.getpid()}.part"
            placed.append(part)
            shutil.copyfile(src / filename, part)
            os.replace(part, raw_dir / filename)
            placed[-1] = raw_dir / filename
    except OSError as exc:
        for path in placed:
            path.unlink(missing_ok=True)
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                pass
        raise DownloadError(f"cannot write {raw_dir} ({exc.strerror or exc})") from None
