"""Training throughput of any ebmrun config: one JSON line.

    python scripts/bench.py model=deep_ebm dataset=mnist [overrides...] [--iters 20 --warmup 3]

Runs the real training step (objective + backward + optimizer) on real batches after a
warm-up and prints {"model", "dataset", "images_per_s", "s_per_iter", "peak_rss_mb",
"threads", "device", ...}. Speed is measured here, never in tests.

``--loop`` times the whole training loop instead (``ebmrun.run.train`` in a temporary run
dir, every callback: scalars, diagnostics, pictures and checkpoints at their intervals), the
mean seconds per step over the ``--iters`` steps after the warm-up (a mean, so the steps
that log count). ``--loop --no-diagnostics`` takes the default-on diagnostics out (gradient
norms and clip shares, images/s, replay-buffer statistics, the quality probe), which is how
their overhead is measured (run both with scripts/compare.py). ``--probe`` times the quality
probe (:mod:`ebmrun.callbacks.quality`) on the untrained model: its first call (evaluator
and reference statistics included) and a later one.
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
from ebmrun.captured_step import captured_if_possible
from ebmrun.cli import CONFIG_DIR
from ebmrun.optimization import Updater


class StepClock:
    """A last callback that notes the time at the end of every step."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []  # process CPU time: robust to other jobs on the machine

    def __getattr__(self, name: str):  # the hooks it does not need do nothing
        return lambda *args: None

    def on_step(self, run, x, out) -> None:
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())


def without_diagnostics() -> None:
    """Switch the default-on diagnostics off in this process (benchmark only)."""
    import ebmrun.optimization
    from ebmrun.objectives.replay_buffer import ReplayBuffer

    ReplayBuffer.stats = lambda self: {}
    # Unclipped groups compute their norm only for the diagnostics (clipping needs it anyway).
    ebmrun.optimization.torch.nn.utils.get_total_norm = lambda grads: torch.zeros(())


def loop_seconds_per_step(cfg, warmup: int, iters: int, diagnostics: bool
                          ) -> tuple[float, float]:
    """Mean wall and CPU seconds per step of the real training loop (see the module
    docstring)."""
    import tempfile
    from pathlib import Path

    import ebmrun.run
    from ebmrun.callbacks import default_callbacks
    from ebmrun.callbacks.diagnostics import Diagnostics
    from ebmrun.callbacks.quality import QualityProbe

    clock = StepClock()

    def callbacks(cfg, rewind):
        chosen = default_callbacks(cfg, rewind)
        if not diagnostics:
            chosen = [c for c in chosen if not isinstance(c, (Diagnostics, QualityProbe))]
        return [*chosen, clock]

    if not diagnostics:
        without_diagnostics()
    ebmrun.run.default_callbacks = callbacks
    cfg.trainer.max_steps = warmup + iters
    with tempfile.TemporaryDirectory() as run_dir:
        ebmrun.run.train(cfg, Path(run_dir))
    return ((clock.times[-1] - clock.times[warmup - 1]) / iters,
            (clock.cpu[-1] - clock.cpu[warmup - 1]) / iters)


def probe_seconds(cfg) -> dict[str, float]:
    """The quality probe's first and second call on the untrained model, in seconds."""
    import tempfile
    from pathlib import Path

    from ebmrun.callbacks.quality import QualityProbe
    from ebmrun.run import prepare

    with tempfile.TemporaryDirectory() as run_dir:
        run, _ = prepare(cfg, Path(run_dir), None)
        probe = QualityProbe(1, cfg.trainer.quality_samples, cfg.trainer.quality_steps)
        assert probe.applies(run), "the quality probe does not apply to this model/data"
        times, cpu = [], []
        for _ in range(2):
            start, start_cpu = time.perf_counter(), time.process_time()
            probe.measure(run)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        run.logger.close()
    return {"probe_first_s": round(times[0], 3), "probe_s": round(times[1], 3),
            "probe_first_cpu_s": round(cpu[0], 3), "probe_cpu_s": round(cpu[1], 3),
            "quality_samples": cfg.trainer.quality_samples}


def step_rate(cfg, warmup: int, iters: int) -> dict:
    """Images per second of the training step alone (objective + backward + optimizer) on
    real batches: the median of ``iters`` timed steps after ``warmup`` untimed ones (which
    also capture any CUDA graph)."""
    data = load_data(cfg)
    parts = build_components(cfg, data_info_of(data))
    optimizers = parts.objective.configure_optimizers(optim_settings(cfg))
    batches = make_batches(cfg, data)
    train_set = data.train.to(parts.device)
    sync = torch.cuda.synchronize if parts.device.type == "cuda" else (lambda: None)
    updater = captured_if_possible(
        Updater(parts.objective, optimizers, [cfg.trainer.grad_clip] * len(optimizers)),
        cfg.device.capture_step, parts.device)

    times = []
    for i in range(warmup + iters):
        idx = batches.next_indices()
        x = data.to_float(train_set[idx.to(parts.device)])
        y = data.train_labels[idx].to(parts.device) if parts.objective.uses_labels else None
        sync()
        start = time.perf_counter()
        updater(x, i + 1, y)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    s_per_iter = statistics.median(times)
    result = {
        "model": cfg.model.name, "dataset": data.name,
        "images_per_s": round(cfg.trainer.batch_size / s_per_iter, 1),
        "s_per_iter": round(s_per_iter, 5), "batch_size": cfg.trainer.batch_size,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(), "device": str(parts.device),
    }
    if parts.device.type == "cuda":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        # How many sampler loops run as CUDA graphs (0: eager; see ebmrun.samplers.graphed).
        result["cuda_graphs"] = len(parts.sampler.__dict__.get("_graphs", ()))
        result["step_captured"] = getattr(updater, "graph", None) is not None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=deep_ebm")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--loop", action="store_true", help="time the whole training loop")
    parser.add_argument("--no-diagnostics", action="store_true",
                        help="--loop without the default-on diagnostics")
    parser.add_argument("--probe", action="store_true", help="time the quality probe")
    args = parser.parse_args()

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=args.overrides)
    validate_config(cfg)
    if args.probe:
        print(json.dumps({**probe_seconds(cfg), "threads": torch.get_num_threads(),
                          "overrides": args.overrides}))
        return
    if args.loop:
        s_per_iter, cpu_per_iter = loop_seconds_per_step(cfg, args.warmup, args.iters,
                                                         diagnostics=not args.no_diagnostics)
        batch = cfg.trainer.batch_size
        print(json.dumps({"model": cfg.model.name, "loop": True,
                          "diagnostics": not args.no_diagnostics,
                          "images_per_s": round(batch / s_per_iter, 1),
                          "cpu_images_per_s": round(batch / cpu_per_iter, 1),
                          "s_per_iter": round(s_per_iter, 5),
                          "cpu_s_per_iter": round(cpu_per_iter, 5), "iters": args.iters,
                          "threads": torch.get_num_threads(), "overrides": args.overrides}))
        return
    print(json.dumps({**step_rate(cfg, args.warmup, args.iters),
                      "overrides": args.overrides}))


if __name__ == "__main__":
    main()
