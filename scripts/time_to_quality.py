"""Time to quality: minutes of training until samples from noise reach a given FD.

    python scripts/time_to_quality.py --ours experiment=deep_ebm_shortrun_mnist \
        --minutes 30 --reference-minutes 45 --multiple 5 --eval-every 2.5 --threads 2

Runs, back to back on the same machine, the straightforward reference of the deep-EBM
family (``scripts/reference/deep_ebm_straightforward.py``, its own code: replay buffer,
256 Langevin steps from uniform noise for samples) and then ebmrun with the given
overrides. Each is paused every ``--eval-every`` minutes of training clock to draw
``--n`` samples from noise (ebmrun: ``task=sample`` defaults) and score them with the
offline evaluator (Fréchet distance to the MNIST test split; ``floor`` is the same metric
for ``--n`` real training images). Sampling and scoring are not counted. Prints one JSON
object: both FD curves, each side's minutes until FD <= multiple x floor (null: not within
its budget), ours' minutes until it matches the reference's final FD, and the speed-up.

``--clock cpu`` counts process CPU time instead of wall time: on a shared machine with
``--threads 1`` that is the honest stand-in for a quiet machine's wall clock.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch

from ebmrun.data.idx import load_idx_dataset
from ebmrun.ema import EMA, maybe_applied
from ebmrun.errors import UserError
from ebmrun.metrics.evaluator import get_evaluator
from ebmrun.metrics.real_floor import real_floor
from ebmrun.metrics.sample_quality import reference_stats, sample_quality

REFERENCE = Path(__file__).resolve().parent / "reference" / "deep_ebm_straightforward.py"


class Ours:
    """ebmrun's training loop step by step: the runner's own updater, per-group settings
    and schedules (so every ``optim.schedule`` and ``optim.ema`` runs as in ``ebmrun``)."""

    def __init__(self, overrides: list[str]) -> None:
        from hydra import compose, initialize_config_dir

        from ebmrun.build import (build_components, data_info_of, load_data, make_batches,
                                  optim_settings, validate_config)
        from ebmrun.cli import CONFIG_DIR
        from ebmrun.optimization import Schedule, Updater, check_groups, group_settings
        from ebmrun.run import total_steps

        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            self.cfg = compose("config", overrides=overrides)
        validate_config(self.cfg)
        self.data = load_data(self.cfg)
        self.parts = build_components(self.cfg, data_info_of(self.data))
        objective = self.parts.objective
        optimizers = objective.configure_optimizers(optim_settings(self.cfg))
        check_groups(self.cfg, objective.groups)
        settings = [group_settings(self.cfg, group) for group in objective.groups]
        self.batches = make_batches(self.cfg, self.data)
        # The step budget of the config places warm-up and cosine as in the runner.
        total = total_steps(self.cfg, self.batches.batches_per_epoch)
        self.schedules = [Schedule(o, s, total) for o, s in zip(optimizers, settings)]
        # optim.ema: samples come from the weights' moving average, as in task=sample.
        self.ema = EMA(self.parts.model, self.cfg.optim.ema) if self.cfg.optim.ema else None
        self.updater = Updater(objective, optimizers, [s.grad_clip for s in settings],
                               self.schedules, ema=self.ema)
        self.train_set = self.data.train.to(self.parts.device)
        self.epoch = self.batches.epoch
        self.steps_done = 0

    def step(self) -> None:
        x = self.data.to_float(self.train_set[self.batches.next_indices().to(self.parts.device)])
        if self.batches.epoch != self.epoch:  # an epoch ended: per-epoch schedules
            self.epoch = self.batches.epoch
            for schedule in self.schedules:
                schedule.epoch_end()
        self.steps_done += 1
        self.updater(x, step=self.steps_done)

    def samples(self, n: int, seed: int) -> torch.Tensor:
        generator = torch.Generator(device=self.parts.device).manual_seed(seed)
        chunks = []
        with maybe_applied(self.ema):
            for start in range(0, n, 500):
                chunks.append(self.parts.objective.generate(
                    min(500, n - start), generator=generator).x.float().cpu())
        return torch.cat(chunks)


class Reference:
    """The reference script's own functions, driven one step at a time."""

    def __init__(self, root: str, seed: int) -> None:
        spec = importlib.util.spec_from_file_location("deep_ebm_straightforward", REFERENCE)
        self.ref = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.ref)
        self.model, self.sampler, self.optimizer, self.scheduler = self.ref.setup(seed)
        self.loader = self.ref.make_loader(root)
        self.batches = self.ref.endless(self.loader)
        self.done = 0

    def step(self) -> None:
        self.ref.training_step(self.model, self.sampler, self.optimizer, next(self.batches)[0])
        self.done += 1
        if self.done % len(self.loader) == 0:  # the script steps StepLR after each full epoch
            self.scheduler.step()

    def samples(self, n: int, seed: int) -> torch.Tensor:
        with torch.random.fork_rng():  # scoring must not change the training random stream
            torch.manual_seed(seed)
            start = torch.rand((n, *self.ref.IMG_SHAPE)) * 2 - 1
            return self.ref.generate_samples(self.model, start, steps=256, step_size=10)


def race(name: str, contestant, minutes: float, every: float, clock, target: float,
         score, n: int, out: Path | None, stop_at_target: bool) -> dict:
    """Train for ``minutes`` of ``clock``, scoring ``n`` samples every ``every`` minutes
    (and at the end); ``stop_at_target``: stop once FD <= ``target``."""
    curve, spent, steps, reached = [], 0.0, 0, None
    next_eval = every
    while spent < minutes:
        start = clock()
        while spent + (clock() - start) / 60 < min(next_eval, minutes):
            contestant.step()
            steps += 1
        spent += (clock() - start) / 60
        samples = contestant.samples(n, seed=steps)
        metrics = score(samples)
        point = {"minutes": round(spent, 2), "steps": steps, "fd": round(metrics["frechet"], 2),
                 "classes": metrics["classes_present"],
                 "confidence": round(metrics["mean_confidence"], 3)}
        curve.append(point)
        print(f"{name}: {json.dumps(point)}", file=sys.stderr, flush=True)
        if out is not None:
            torch.save(samples, out / f"{name}_step{steps}.pt")
        next_eval += every
        if metrics["frechet"] <= target and reached is None:
            reached = point["minutes"]
            if stop_at_target:
                break
    return {"curve": curve, "minutes_to_target": reached, "final_fd": curve[-1]["fd"],
            "steps": steps}


def first_below(curve: list[dict], fd: float) -> float | None:
    return next((p["minutes"] for p in curve if p["fd"] <= fd), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ours", nargs="+", default=["experiment=deep_ebm_shortrun_mnist"],
                        help="ebmrun overrides (model/experiment and settings)")
    parser.add_argument("--minutes", type=float, default=30.0, help="ebmrun's budget")
    parser.add_argument("--reference-minutes", type=float, default=45.0)
    parser.add_argument("--skip-reference", action="store_true",
                        help="only ebmrun (e.g. the reference curve is known)")
    parser.add_argument("--skip-ours", action="store_true",
                        help="only the reference (e.g. ours runs in another process)")
    parser.add_argument("--multiple", type=float, default=5.0, help="target: FD <= multiple x floor")
    parser.add_argument("--eval-every", type=float, default=2.5, help="minutes between scores")
    parser.add_argument("--n", type=int, default=1000, help="samples per score")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default=None, help="data root (default: $EBMRUN_DATA_DIR)")
    parser.add_argument("--out", type=Path, default=None, help="save every scored sample set")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.root or os.environ.get("EBMRUN_DATA_DIR") or "data"
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)

    evaluator = get_evaluator("mnist", root)
    data = load_idx_dataset("mnist", root)
    test = data.to_float(data.test)
    reference = reference_stats(evaluator, test)
    floor = real_floor(evaluator, data, args.n, reference).median
    target = args.multiple * floor
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def score(samples: torch.Tensor) -> dict:
        return sample_quality(evaluator, samples, reference)

    result = {"floor": round(floor, 3), "multiple": args.multiple, "target_fd": round(target, 2),
              "clock": args.clock, "threads": args.threads, "n": args.n, "ours_overrides": args.ours}
    # Built first: a config mistake shows now, not after the reference's long run.
    try:
        ours_run = Ours(args.ours + [f"seed={args.seed}", f"device.threads={args.threads}"])
    except UserError as error:  # a config mistake: one line, exit 2, as ebmrun itself
        print(f"time_to_quality.py: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if not args.skip_reference:
        result["reference"] = race("reference", Reference(root, args.seed),
                                   args.reference_minutes, args.eval_every, clock, target, score,
                                   args.n, args.out, stop_at_target=False)
    if args.skip_ours:
        print(json.dumps(result))
        return
    ours = race("ours", ours_run, args.minutes, args.eval_every, clock, target, score, args.n,
                args.out, stop_at_target=True)  # the target is far below the reference's FD
    result["ours"] = ours
    if "reference" in result:
        ref_fd = result["reference"]["final_fd"]
        matched = first_below(ours["curve"], ref_fd)
        result["ours_minutes_to_reference_final_fd"] = matched
        result["speedup_vs_reference"] = (round(args.reference_minutes / matched, 2)
                                          if matched else None)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
