"""Datasets held in memory, the resumable batch iterator, and the loaders the Hydra
``dataset`` configs point at (``conf/dataset/*.yaml``)."""

from ebmrun.data.base import BatchIterator, InMemoryData
from ebmrun.data.cifar10 import load_cifar10
from ebmrun.data.idx import IDX_DATASETS, load_idx_dataset
from ebmrun.data.image_folder import load_image_folder
from ebmrun.data.root import resolve_data_root
from ebmrun.data.toy2d import TOY_DENSITIES, load_toy2d, log_density

__all__ = [
    "BatchIterator",
    "IDX_DATASETS",
    "InMemoryData",
    "TOY_DENSITIES",
    "load_cifar10",
    "load_idx_dataset",
    "load_image_folder",
    "load_toy2d",
    "log_density",
    "resolve_data_root",
]
