"""Score a file of samples with the offline sample-quality metrics; prints one JSON line.

    python scripts/eval_samples.py PATH/samples.pt [--dataset mnist] [--root DIR] [--n 1000]

PATH/samples.pt holds one float tensor (N, 1, 28, 28) in [-1, 1]. The first ``--n`` samples
are compared with the whole test split; ``real_floor`` is the same metric for ``--n`` random
real training images (the median of 100 fixed draws, ``real_floor_sd`` the spread of one;
``ebmrun.metrics.real_floor``), i.e. the best score reachable with that many samples. The
evaluator is
the one shipped with ebmrun (no training); ``evaluator`` in the output names it
(``<dataset>-<weights hash>``): compare only numbers with the same name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ebmrun.data.idx import load_idx_dataset
from ebmrun.errors import UserError
from ebmrun.metrics.evaluator import RECIPES, get_evaluator
from ebmrun.metrics.real_floor import real_floor
from ebmrun.metrics.sample_quality import reference_stats, sample_quality


def load_samples(path: Path, n: int) -> torch.Tensor:
    """The first ``n`` samples ``(n, 1, 28, 28)`` float32 from ``path``."""
    if not path.is_file():
        raise UserError(f"samples file {path} does not exist; pass the path of a samples.pt")
    try:
        samples = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read {path} as a tensor file ({type(exc).__name__}); "
                        "save samples with torch.save(tensor, path)") from None
    if not isinstance(samples, torch.Tensor) or not torch.is_floating_point(samples):
        raise UserError(f"{path} must hold one float tensor (N, 1, 28, 28) in [-1, 1], got "
                        f"{type(samples).__name__}; save the sample tensor itself")
    samples = samples[:n].float()
    if samples.numel() and float(samples.min()) >= 0.0:
        # a common slip: saving images in [0, 1] (e.g. after the PNG rescale)
        print(f"warning: all values in {path} are >= 0; samples should be in [-1, 1] "
              "(convert with x * 2 - 1 if they are in [0, 1])", file=sys.stderr)
    return samples


def evaluate(path: Path, dataset: str, root: str | None, n: int, cache_dir: str | None) -> dict:
    """All metrics for the samples at ``path`` as a JSON-ready dict."""
    if n < 2:
        raise UserError(f"--n must be at least 2, got {n}")
    samples = load_samples(path, n)
    evaluator = get_evaluator(dataset, root, cache_dir=cache_dir)
    data = load_idx_dataset(name=RECIPES[dataset].loader_name, root=root)
    test = data.to_float(data.test)
    # same number of real training images as samples, so the floor has the same N-bias
    reference = reference_stats(evaluator, test)
    floor = real_floor(evaluator, data, samples.shape[0], reference, cache_dir=cache_dir)
    result = {"samples": str(path), "dataset": dataset}
    result.update(sample_quality(evaluator, samples, reference))
    result["real_floor"], result["real_floor_sd"] = floor.median, floor.sd
    result["evaluator_test_accuracy"] = evaluator.test_accuracy
    result["evaluator"] = evaluator.version
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samples", type=Path, help="samples.pt: float tensor (N, 1, 28, 28)")
    parser.add_argument("--dataset", default="mnist", choices=sorted(RECIPES))
    parser.add_argument("--root", default=None,
                        help="data root (default: $EBMRUN_DATA_DIR, else ./data)")
    parser.add_argument("--n", type=int, default=1000, help="number of samples to score")
    parser.add_argument("--cache-dir", default=None,
                        help="evaluator cache (default: $EBMRUN_CACHE_DIR or ~/.cache/ebmrun)")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.samples, args.dataset, args.root, args.n, args.cache_dir)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
