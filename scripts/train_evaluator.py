"""Train the sample-quality evaluators shipped with ebmrun (deterministic); prints JSON.

    OMP_NUM_THREADS=1 python scripts/train_evaluator.py [mnist fashion_mnist] [--root DIR]

Writes ``src/ebmrun/metrics/evaluator_weights/<dataset>.pt`` (or ``--out DIR``), the weights
``get_evaluator`` loads by default. One CPU thread and a fixed seed make the run
bit-identical on the same torch build and CPU; the weights are committed, so users never run
this. Re-running it changes the evaluator's hash (``samples/evaluator`` in metrics.json) only
if the weights come out different. Time on one thread of an AMD EPYC (AVX-512) core under a
shared load: see the README (a few minutes per dataset).

For each dataset the JSON line has the test accuracy, the version name, the training time
and the real-vs-real Fréchet floor of 1,000 training images against the test split (the median
of 100 fixed draws, `ebmrun.metrics.real_floor`).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ebmrun.data.idx import load_idx_dataset
from ebmrun.metrics.evaluator import SHIPPED_DIR, RECIPES, save_evaluator
from ebmrun.metrics.evaluator_training import train_evaluator
from ebmrun.metrics.real_floor import real_floor
from ebmrun.metrics.sample_quality import reference_stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="*", default=sorted(RECIPES), choices=sorted(RECIPES))
    parser.add_argument("--root", default=None, help="data root (default: $EBMRUN_DATA_DIR)")
    parser.add_argument("--out", type=Path, default=SHIPPED_DIR, help="folder for <dataset>.pt")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the shipped weights were made at one thread (bit-identical)
    torch.use_deterministic_algorithms(True)
    for dataset in args.datasets:
        start = time.time()
        model = train_evaluator(dataset, args.root, seed=args.seed)
        seconds = time.time() - start
        save_evaluator(model, args.out / f"{dataset}.pt", args.seed,
                       recipe=asdict(RECIPES[dataset]), torch=str(torch.__version__),
                       train_seconds=round(seconds, 1))
        data = load_idx_dataset(name=RECIPES[dataset].loader_name, root=args.root)
        floor = real_floor(model, data, 1000,
                           reference_stats(model, data.to_float(data.test))).median
        print(json.dumps({"dataset": dataset, "evaluator": model.version,
                          "test_accuracy": model.test_accuracy, "train_seconds": round(seconds),
                          "frechet_real_floor_1000": floor,
                          "file": str(args.out / f"{dataset}.pt"),
                          "bytes": (args.out / f"{dataset}.pt").stat().st_size}), flush=True)


if __name__ == "__main__":
    main()
