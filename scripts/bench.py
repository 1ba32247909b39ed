"""Training throughput of any ebmrun config: one JSON line.

    python scripts/bench.py model=deep_ebm dataset=mnist [overrides...] [--iters 20 --warmup 3]

Runs the real training step (objective + backward + optimizer) on real batches after a
warm-up and prints {"model", "dataset", "images_per_s", "s_per_iter", "peak_rss_mb",
"threads", "device", ...}. Speed is measured here, never in tests.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
from hydra import compose, initialize_config_dir

from ebmrun.build import (build_components, data_info_of, load_data, make_batches,
                          optim_settings, validate_config)
from ebmrun.cli import CONFIG_DIR
from ebmrun.run import training_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=deep_ebm")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    args = parser.parse_args()

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=args.overrides)
    validate_config(cfg)
    data = load_data(cfg)
    parts = build_components(cfg, data_info_of(data))
    optimizers = parts.objective.configure_optimizers(optim_settings(cfg))
    batches = make_batches(cfg, data)
    train_set = data.train.to(parts.device)
    sync = torch.cuda.synchronize if parts.device.type == "cuda" else (lambda: None)

    times = []
    for i in range(args.warmup + args.iters):
        idx = batches.next_indices()
        x = data.to_float(train_set[idx.to(parts.device)])
        y = data.train_labels[idx].to(parts.device) if parts.objective.uses_labels else None
        sync()
        start = time.perf_counter()
        training_step(parts.objective, optimizers, x, cfg.trainer.grad_clip, y=y)
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    s_per_iter = statistics.median(times)
    result = {
        "model": cfg.model.name, "dataset": data.name,
        "images_per_s": round(cfg.trainer.batch_size / s_per_iter, 1),
        "s_per_iter": round(s_per_iter, 5), "batch_size": cfg.trainer.batch_size,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(), "device": str(parts.device),
        "overrides": args.overrides,
    }
    if parts.device.type == "cuda":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
