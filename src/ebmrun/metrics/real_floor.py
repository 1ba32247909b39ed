"""The real-vs-real floor of the Fréchet distance: what ``n`` real images score.

The FD of ``n`` samples is biased upwards by its finite sample, so a number means little
alone: print it next to the FD of ``n`` real *training* images against the same reference,
the score of a perfect sampler with that many samples. One draw of real images is a noisy
estimate of it: 1,000 MNIST training images scored 0.16-0.79 on the shipped evaluator
(sd 0.10, heavy-tailed). So the floor is the median over :data:`FLOOR_DRAWS` draws, and a
constant of (evaluator, training split, reference, ``n``): the draws come from a fixed
sequence of permutations (:data:`FLOOR_SEED`), whatever the run's seed.

Why 100 draws. With the 10 draws used before, the median still moved with the
permutation: seed 0's ten draws of 1,000 gave 0.228, seeds 1-4 0.24-0.38. The median of all
60 disjoint draws of 1,000 (every MNIST training image once) is 0.282, and 0.264-0.317 over
six permutations; 100 draws (60 of one permutation, 40 of the next) put the median's own
error at about 0.01. Featurising the ~60,000 images costs 33-40 s on one CPU thread, so each
floor is cached as a small JSON file under ``<cache_dir>/floors/`` keyed by everything it
depends on (a miss only costs the time).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import Tensor

from ebmrun.checkpoint import atomic_write_json
from ebmrun.data.base import InMemoryData, to_unit_range
from ebmrun.metrics.evaluator import Evaluator, default_cache_dir
from ebmrun.metrics.frechet import feature_stats, frechet_from_stats
from ebmrun.metrics.sample_quality import FrechetDraws

FLOOR_DRAWS = 100
FLOOR_SEED = 0


def floor_index_draws(num_items: int, n: int, draws: int = FLOOR_DRAWS) -> list[Tensor]:
    """``draws`` index sets ``(n,)`` into ``num_items`` training items: consecutive blocks
    of a fixed permutation (disjoint), then of the next one, and so on. Fewer than ``n``
    indices each where ``num_items < n`` (one set then)."""
    generator = torch.Generator().manual_seed(FLOOR_SEED)
    per_permutation = max(1, num_items // n)
    if num_items < n:
        draws = 1
    blocks: list[Tensor] = []
    while len(blocks) < draws:
        order = torch.randperm(num_items, generator=generator)
        take = min(per_permutation, draws - len(blocks))
        blocks.extend(order[i * n:(i + 1) * n] for i in range(take))
    return blocks


def _cache_key(evaluator: Evaluator, data: InMemoryData, n: int,
               reference: tuple[Tensor, Tensor]) -> str:
    """A digest of everything the floor depends on. The reference statistics are rounded,
    so a reference featurised with another thread count (last-bit differences) still hits."""
    digest = hashlib.sha256()
    digest.update(f"{evaluator.version}|{data.name}|{n}|{FLOOR_DRAWS}|{FLOOR_SEED}".encode())
    digest.update(data.train.contiguous().numpy().tobytes())
    for stat in reference:
        digest.update(stat.double().mul(1e5).round().numpy().tobytes())
    return digest.hexdigest()[:20]


def _measure(evaluator: Evaluator, data: InMemoryData, n: int,
             reference: tuple[Tensor, Tensor]) -> FrechetDraws:
    """The FD of each floor draw of ``n`` training images to ``reference``: each image is
    featurised once, however many draws hold it."""
    blocks = floor_index_draws(len(data.train), n)
    used = torch.cat(blocks).unique()  # sorted
    images = to_unit_range(data.to_float(data.train[used]), data.value_range)
    features = evaluator.features(images)
    values = [frechet_from_stats(*feature_stats(features[torch.searchsorted(used, block)]),
                                 *reference) for block in blocks]
    return FrechetDraws.of(values)


def real_floor(evaluator: Evaluator, data: InMemoryData, n: int,
               reference: tuple[Tensor, Tensor],
               cache_dir: str | os.PathLike | None = None) -> FrechetDraws:
    """The real-vs-real floor of ``n`` samples' FD to ``reference`` (feature statistics from
    :func:`ebmrun.metrics.sample_quality.reference_stats`): the median over the
    :data:`FLOOR_DRAWS` draws of :func:`floor_index_draws` and the spread of one draw.
    Cached under ``cache_dir`` (default ``$EBMRUN_CACHE_DIR`` or ``~/.cache/ebmrun``)."""
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = base / "floors" / f"{data.name}-n{n}-{_cache_key(evaluator, data, n, reference)}.json"
    try:
        cached = json.loads(path.read_text())
        return FrechetDraws(median=cached["median"], sd=cached["sd"], draws=cached["draws"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or unreadable: measure it again
    floor = _measure(evaluator, data, n, reference)
    try:
        atomic_write_json({"evaluator": evaluator.version, "dataset": data.name, "n": n,
                           "median": floor.median, "sd": floor.sd, "draws": floor.draws},
                          path)
    except OSError:
        pass  # a read-only cache only costs the time next run
    return floor
