"""Dataset loaders, their Hydra configs and the batch iterator. Fast and offline: real MNIST /
Fashion-MNIST come from the shared data folder, everything else is generated in tmp dirs."""

from __future__ import annotations

import gzip
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from ebmrun.data import (BatchIterator, InMemoryData, TOY_DENSITIES, load_cifar10,
                         load_idx_dataset, load_image_folder, load_toy2d, log_density,
                         resolve_data_root)
from ebmrun.data import cifar10 as cifar10_module
from ebmrun.data.idx import IDX_FILES, parse_idx
from ebmrun.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf" / "dataset"
IDX_NAMES = [f for pair in IDX_FILES.values() for f in pair]


@pytest.fixture(scope="module")
def loaded(data_root: Path) -> dict[str, InMemoryData]:
    return {name: load_idx_dataset(name, str(data_root)) for name in ("mnist", "fashion_mnist")}


def _raw_copy(data_root: Path, dest: Path, folder: str = "MNIST") -> Path:
    """``dest/<folder>/raw`` with symlinks to the real .gz files; returns the raw folder."""
    raw = dest / folder / "raw"
    raw.mkdir(parents=True)
    for f in IDX_NAMES:
        (raw / f"{f}.gz").symlink_to(data_root / folder / "raw" / f"{f}.gz")
    return raw


# ---------------------------------------------------------------- data root

def test_resolve_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EBMRUN_DATA_DIR", raising=False)
    assert resolve_data_root(None) == tmp_path / "data"
    monkeypatch.setenv("EBMRUN_DATA_DIR", "rel/dir")
    assert resolve_data_root("") == tmp_path / "rel" / "dir"
    assert resolve_data_root("/abs/x") == Path("/abs/x")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_root("~/d") == tmp_path / "home" / "d"


# ---------------------------------------------------------------- MNIST / Fashion-MNIST

@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_real(loaded: dict[str, InMemoryData], name: str) -> None:
    d = loaded[name]
    assert d.name == name and d.is_image and d.item_shape == (1, 28, 28)
    assert d.train.shape == (60000, 1, 28, 28) and d.test.shape == (10000, 1, 28, 28)
    assert d.train.dtype == d.test.dtype == torch.uint8
    for labels, n in ((d.train_labels, 60000), (d.test_labels, 10000)):
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert set(labels.unique().tolist()) == set(range(10))
    assert len(d.classes) == 10 and d.box == d.value_range == (-1.0, 1.0)
    x = d.to_float(d.test)
    assert x.dtype == torch.float32 and x.min().item() == -1.0 and x.max().item() == 1.0


def test_idx_unpacked_files(data_root: Path, tmp_path: Path,
                            loaded: dict[str, InMemoryData]) -> None:
    raw = _raw_copy(data_root, tmp_path)
    for f in IDX_FILES["test"]:  # test split unpacked only; train stays .gz
        (raw / f"{f}.gz").unlink()
        (raw / f).write_bytes(gzip.decompress((data_root / "MNIST/raw" / f"{f}.gz").read_bytes()))
    d = load_idx_dataset("mnist", str(tmp_path))
    assert torch.equal(d.test, loaded["mnist"].test)
    assert torch.equal(d.test_labels, loaded["mnist"].test_labels)


def test_idx_missing_files_message(data_root: Path, tmp_path: Path) -> None:
    raw = _raw_copy(data_root, tmp_path)
    (raw / "train-images-idx3-ubyte.gz").unlink()
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError) as info:
        load_idx_dataset("mnist", str(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path) in msg
    assert "MNIST/raw/train-images-idx3-ubyte.gz" in msg
    assert "MNIST/raw/t10k-labels-idx1-ubyte.gz" in msg
    assert "train-labels" not in msg and "t10k-images" not in msg
    assert "dataset.root" in msg and "EBMRUN_DATA_DIR" in msg and "download=true" in msg


@pytest.mark.parametrize("damage", ["truncated_gz", "truncated_idx", "bad_magic"])
def test_idx_corrupt_file(data_root: Path, tmp_path: Path, damage: str) -> None:
    raw = _raw_copy(data_root, tmp_path)
    target = raw / "t10k-labels-idx1-ubyte.gz"
    good = target.read_bytes()
    target.unlink()
    content = gzip.decompress(good)
    target.write_bytes({
        "truncated_gz": lambda: good[: len(good) // 2],
        "truncated_idx": lambda: gzip.compress(content[:-10]),
        "bad_magic": lambda: gzip.compress(b"\x12\x34" + content[2:]),
    }[damage]())
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz") as info:
        load_idx_dataset("mnist", str(tmp_path))
    assert "\n" not in str(info.value)


def test_parse_idx_dtypes() -> None:
    a = (np.arange(6).reshape(3, 2) - 3).astype(">i4")  # IDX is big-endian
    data = bytes([0, 0, 0x0C, 2]) + np.array([3, 2], ">u4").tobytes() + a.tobytes()
    out = parse_idx(data)
    assert out.shape == (3, 2) and out.dtype == np.int32 and (out == a).all()


def test_idx_unknown_name() -> None:
    with pytest.raises(UserError, match="fashion_mnist, mnist"):
        load_idx_dataset("kmnist", "/nonexistent")


# ---------------------------------------------------------------- CIFAR-10

def _write_cifar(root: Path, n: int = 4, str_keys: bool = False, protocol: int = 5) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist()}
        if str_keys:
            batch = {k.decode(): v for k, v in batch.items()}
        (folder / f).write_bytes(pickle.dumps(batch, protocol=protocol))


@pytest.mark.parametrize("str_keys,protocol", [(False, 5), (True, 2)])
def test_cifar10_synthetic(tmp_path: Path, str_keys: bool, protocol: int) -> None:
    _write_cifar(tmp_path, str_keys=str_keys, protocol=protocol)
    d = load_cifar10(root=str(tmp_path), value_range=[0.0, 1.0])
    assert d.train.shape == (20, 3, 32, 32) and d.test.shape == (4, 3, 32, 32)
    assert d.train.dtype == torch.uint8 and d.train_labels.dtype == torch.int64
    assert d.value_range == d.box == (0.0, 1.0) and len(d.classes) == 10
    batch = pickle.loads((tmp_path / "cifar-10-batches-py/data_batch_1").read_bytes())
    flat = torch.from_numpy(batch["data" if str_keys else b"data"][1])
    # Channel-major rows of 32: pixel (c, y, x) is flat[c * 1024 + y * 32 + x].
    assert torch.equal(d.train[1], flat.reshape(3, 32, 32))
    assert d.train[1, 2, 5, 7] == flat[2 * 1024 + 5 * 32 + 7]


def test_cifar10_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        load_cifar10(root=str(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path) in msg and "cifar-10-batches-py/test_batch" in msg
    _write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py/data_batch_3").write_bytes(b"\x80\x05junk")
    with pytest.raises(UserError, match="data_batch_3"):
        load_cifar10(root=str(tmp_path))


def test_cifar10_pickle_cannot_run_code(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    evil = pickle.dumps(type("Evil", (), {"__reduce__": lambda self: (
        os.system, (f"touch {marker}",))})())
    (tmp_path / "cifar-10-batches-py/test_batch").write_bytes(evil)
    with pytest.raises(UserError, match="test_batch"):
        load_cifar10(root=str(tmp_path))
    assert not marker.exists()


def test_cifar10_download_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cifar10_module, "_download",
                        lambda root: (_ for _ in ()).throw(RuntimeError("offline")))
    with pytest.raises(UserError, match="download failed: RuntimeError: offline"):
        load_cifar10(root=str(tmp_path), download=True)


# ---------------------------------------------------------------- toy 2-D

@pytest.mark.parametrize("name", list(TOY_DENSITIES))
def test_toy2d(name: str) -> None:
    d = load_toy2d(name, n_train=4000, n_test=500, seed=3)
    assert d.train.shape == (4000, 2) and d.test.shape == (500, 2) and not d.is_image
    assert d.train.dtype == torch.float32 and torch.isfinite(d.train).all()
    assert d.box == d.value_range == (-4.5, 4.5) and d.train_labels is None
    assert torch.equal(d.train, load_toy2d(name, 4000, 500, seed=3).train)
    assert not torch.equal(d.train, load_toy2d(name, 4000, 500, seed=4).train)
    assert not torch.equal(d.train[:500], d.test)
    inside = (d.train.abs() <= 4.5).all(1).float().mean().item()
    assert inside > 0.99, f"{name}: only {inside:.3f} of points inside the box"
    odd = TOY_DENSITIES[name](7, torch.Generator().manual_seed(0))
    assert odd.shape == (7, 2) and odd.dtype == torch.float32


def test_toy2d_unknown_and_box() -> None:
    with pytest.raises(UserError, match="8gaussians.*pinwheel"):
        load_toy2d("banana")
    assert load_toy2d("rings", 10, 2, box=[-5, 5]).box == (-5.0, 5.0)
    with pytest.raises(UserError, match="dataset.box"):
        load_toy2d("rings", 10, 2, box=[5, -5])


@pytest.mark.parametrize("name", ["8gaussians", "checkerboard"])
def test_toy2d_log_density(name: str) -> None:
    # Integrates to 1 (midpoint rule on a fine grid) and is finite at the samples.
    xs = torch.linspace(-6, 6, 481)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="ij"), -1).reshape(-1, 2)
    assert abs(log_density(name, grid).exp().sum().item() * (12 / 480) ** 2 - 1) < 0.02
    x = TOY_DENSITIES[name](1000, torch.Generator().manual_seed(0))
    assert torch.isfinite(log_density(name, x)).all()


# ---------------------------------------------------------------- image folder

def _write_images(folder: Path) -> None:
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(40, 30), (32, 32), (17, 50), (64, 64), (100, 20)]):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / ("sub" if i % 2 else ".") / f"img{i}.png")
    Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(folder / "gray.jpg")
    (folder / "notes.txt").write_text("not an image")


def test_image_folder_rgb_and_gray(tmp_path: Path) -> None:
    _write_images(tmp_path)
    d = load_image_folder(path=str(tmp_path), image_size=16, test_fraction=0.3, seed=1)
    assert d.train.dtype == torch.uint8 and d.train.shape[1:] == (3, 16, 16)
    assert len(d.train) + len(d.test) == 6 and len(d.test) == 2
    assert d.box == d.value_range == (-1.0, 1.0) and d.is_image
    g = load_image_folder(path=str(tmp_path), image_size=8, channels=1, test_fraction=0.0)
    assert g.train.shape == (5, 1, 8, 8) and g.test.shape == (1, 1, 8, 8)


def test_image_folder_centre_crop(tmp_path: Path) -> None:
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, :20, 0] = 255  # red left third, green middle, blue right third
    arr[:, 20:40, 1] = 255
    arr[:, 40:, 2] = 255
    Image.fromarray(arr).save(tmp_path / "wide.png")
    d = load_image_folder(path=str(tmp_path), image_size=10)
    assert d.test.shape == (0, 3, 10, 10) and d.train.shape == (1, 3, 10, 10)
    # Interior columns only: the resampling filter blends the edge pixels with neighbours.
    assert (d.train[0, 1, :, 1:-1] == 255).all() and (d.train[0, 0, :, 1:-1] == 0).all()
    assert (d.train[0, 0] < 40).all() and (d.train[0, 2] < 40).all()


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no image files"):
        load_image_folder(path=str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        load_image_folder(path=str(tmp_path / "nope"))
    with pytest.raises(UserError, match="dataset.path is not set"):
        load_image_folder()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(UserError, match="broken.png"):
        load_image_folder(path=str(tmp_path))


# ---------------------------------------------------------------- batch iterator

@pytest.mark.parametrize("drop_last", [False, True])
def test_batch_iterator_epoch_coverage(drop_last: bool) -> None:
    it = BatchIterator(n=10, batch_size=3, seed=0, drop_last=drop_last)
    for epoch in range(3):
        seen = torch.cat([it.next_indices() for _ in range(it.batches_per_epoch)])
        assert it.epoch == epoch
        expected = 9 if drop_last else 10
        assert len(seen) == len(set(seen.tolist())) == expected


def test_batch_iterator_resume() -> None:
    it = BatchIterator(n=11, batch_size=4, seed=5)
    for _ in range(4):
        it.next_indices()
    buf = io.BytesIO()
    torch.save(it.state_dict(), buf)  # as a checkpoint would
    expected = [it.next_indices() for _ in range(12)]
    resumed = BatchIterator(n=11, batch_size=4, seed=999)
    buf.seek(0)
    resumed.load_state_dict(torch.load(buf))
    assert all(torch.equal(a, resumed.next_indices()) for a in expected)


# ---------------------------------------------------------------- Hydra configs

def test_every_dataset_config_is_tested() -> None:
    assert {p.stem for p in CONF_DIR.glob("*.yaml")} == {
        "mnist", "fashion_mnist", "cifar10", "toy2d", "image_folder"}


@pytest.mark.parametrize("config", ["mnist", "fashion_mnist", "cifar10", "toy2d",
                                    "image_folder"])
def test_dataset_config_instantiates(config: str, data_root: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    node = OmegaConf.load(CONF_DIR / f"{config}.yaml")
    root = data_root
    if config == "cifar10":
        _write_cifar(tmp_path / "cifar")
        root = tmp_path / "cifar"
    if config == "toy2d":
        node.n_train, node.n_test = 100, 10
    if config == "image_folder":
        _write_images(tmp_path / "imgs")
        node.path = str(tmp_path / "imgs")
    # root: ${oc.env:EBMRUN_DATA_DIR,data} and seed: ${seed} resolve as in the runner.
    monkeypatch.setenv("EBMRUN_DATA_DIR", str(root))
    cfg = OmegaConf.create({"seed": 7, "dataset": node})
    d = instantiate(cfg.dataset, _convert_="all")
    assert isinstance(d, InMemoryData) and len(d.train) > 0
    assert isinstance(d.value_range, tuple) and isinstance(d.box, tuple)
    assert d.name == node.name
