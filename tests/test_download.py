"""The data download: all or nothing, md5-verified, one clear line when it cannot be done.

A local HTTP server on 127.0.0.1 serves small IDX files in the real format (5 images); the
md5 table and the mirror list are pointed at it. No outside network is used.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ebmrun.data import download, fetch
from ebmrun.data.idx import IDX_FILES, load_idx_dataset
from ebmrun.errors import UserError

FILES = [f + ".gz" for pair in IDX_FILES.values() for f in pair]


def _idx(array: np.ndarray) -> bytes:
    """An uint8 array in IDX format: magic 0x0000 08 <ndim>, big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _small_mnist(n: int = 5) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    out = {}
    for split in ("train", "test"):  # different content per split: every md5 differs
        images, labels = rng.integers(0, 256, (n, 28, 28)), rng.permutation(n)
        img_name, lab_name = IDX_FILES[split]
        out[img_name + ".gz"] = gzip.compress(_idx(images), mtime=0)
        out[lab_name + ".gz"] = gzip.compress(_idx(labels), mtime=0)
    return out


class _Server(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    cut: set[str]  # files whose transfer stops half-way (connection closed)
    served: list[str]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        name = self.path.rsplit("/", 1)[-1]
        self.server.served.append(name)
        body = self.server.files.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if name in self.server.cut else body)
        self.close_connection = True

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[_Server]:
    """A file server for ``mnist`` on 127.0.0.1; MD5 and MIRRORS point at it, and the
    download's temporary folders go under ``tmp_path/tmp`` so the test can see them."""
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.files, srv.cut, srv.served = _small_mnist(), set(), []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    md5 = {name: hashlib.md5(body).hexdigest() for name, body in srv.files.items()}
    monkeypatch.setitem(download.MD5, "mnist", md5)
    monkeypatch.setitem(download.MIRRORS, "mnist", (f"http://127.0.0.1:{srv.server_port}/m/",))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    yield srv
    srv.shutdown()
    srv.server_close()


def _everything_under(path: Path) -> list[Path]:
    return sorted(path.rglob("*")) if path.exists() else []


def test_download_lands_verified_files(server: _Server, tmp_path: Path) -> None:
    root = tmp_path / "data"
    d = load_idx_dataset("mnist", str(root), download=True)
    assert d.train.shape == (5, 1, 28, 28) and sorted(d.test_labels.tolist()) == [0, 1, 2, 3, 4]
    raw = root / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(FILES)  # no .part files
    for name in FILES:
        assert (raw / name).read_bytes() == server.files[name]
    assert _everything_under(tmp_path / "tmp") == []  # temporary folder removed
    # Present now: a second load downloads nothing.
    server.served.clear()
    load_idx_dataset("mnist", str(root), download=True)
    assert server.served == []


@pytest.mark.parametrize("fault", ["cut", "wrong_md5", "missing_on_server"])
def test_failed_download_leaves_nothing_behind(server: _Server, tmp_path: Path,
                                              fault: str) -> None:
    """The third file fails after two complete ones: no file, no folder is left anywhere."""
    third = FILES[2]
    if fault == "cut":
        server.cut.add(third)
    elif fault == "wrong_md5":
        server.files[third] = server.files[FILES[0]]
    else:
        del server.files[third]
    root = tmp_path / "data"
    with pytest.raises(UserError) as info:
        load_idx_dataset("mnist", str(root), download=True)
    assert server.served[:3] == FILES[:3]  # it did get half-way
    assert not root.exists()  # not even an empty MNIST/raw
    assert _everything_under(tmp_path / "tmp") == []
    msg = str(info.value)
    assert "\n" not in msg and "download failed" in msg
    assert f"127.0.0.1:{server.server_port}" in msg  # the reason, whole
    assert "download=true" not in msg  # already on: not suggested
    assert "MNIST/raw/train-images-idx3-ubyte.gz" in msg and "ebmrun.data.fetch mnist" in msg


def test_failed_download_keeps_existing_files(server: _Server, tmp_path: Path) -> None:
    """Files already in place stay; only the missing ones are fetched, and a failure among
    them removes none of the user's own files."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / FILES[0]).write_bytes(server.files[FILES[0]])
    server.cut.add(FILES[3])
    with pytest.raises(UserError):
        load_idx_dataset("mnist", str(tmp_path / "data"), download=True)
    assert FILES[0] not in server.served
    assert [p.name for p in raw.iterdir()] == [FILES[0]]


def test_no_network_is_one_line_naming_files_folder_and_fixes(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with http.server.HTTPServer(("127.0.0.1", 0), _Handler) as closed:
        port = closed.server_port  # closed below: nothing listens there
    for name in ("mnist", "fashion_mnist"):
        monkeypatch.setitem(download.MIRRORS, name, (f"http://127.0.0.1:{port}/x/",))
    with pytest.raises(UserError) as info:
        fetch.ensure(root=str(tmp_path / "data"))
    msg = str(info.value)
    assert "\n" not in msg and f"127.0.0.1:{port}" in msg  # the reason, not cut
    assert all(f in msg for f in FILES) and "MNIST/raw/ and FashionMNIST/raw/" in msg
    assert "make data" in msg and "EBMRUN_DATA_DIR=<dir>" in msg
    assert "download=true" not in msg
    assert not (tmp_path / "data").exists()


def test_fetch_cli(server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "data"
    assert fetch.main(["mnist", "--root", str(root)]) == 0
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == sorted(FILES)
    assert fetch.main(["mnist", "--root", str(root / "MNIST")]) == 2  # one level too deep
    assert "fix: --root " + str(root) in capsys.readouterr().err
    assert not (root / "MNIST" / "MNIST").exists()


def test_root_one_level_too_deep_is_refused_not_downloaded_into(
        server: _Server, tmp_path: Path) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, body in server.files.items():
        (raw / name).write_bytes(body)
    for deep in (raw.parent, raw):
        with pytest.raises(UserError, match=f"dataset.root={tmp_path / 'data'} "):
            load_idx_dataset("mnist", str(deep), download=True)
    assert server.served == [] and not (raw.parent / "MNIST").exists()
    assert not (raw / "MNIST").exists()


def test_lab_mirror_from_the_environment(server: _Server, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """$EBMRUN_DATA_MIRROR (a copy of a data root) is tried before the public mirrors."""
    monkeypatch.setitem(download.MIRRORS, "mnist", ("http://127.0.0.1:9/unused/",))
    monkeypatch.setenv(download.MIRROR_ENV, f"http://127.0.0.1:{server.server_port}/lab/")
    load_idx_dataset("mnist", str(tmp_path / "data"), download=True)
    assert len(list((tmp_path / "data" / "MNIST" / "raw").iterdir())) == 4
