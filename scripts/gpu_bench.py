"""Every GPU measurement of the GPU issue in one command, printed as one JSON table.

    python scripts/gpu_bench.py --out gpu.json [--sections bench,sampler,torchebm,tests,quality]

Sections (each one's result is written to ``--out`` as soon as it is done, so a run that
hits a time limit keeps what it measured; a section that fails records its error and the
rest still run):

- ``bench``: ``scripts/bench.py``'s training-step rate (30 timed steps after 5 warm-up steps,
  each experiment's own batch and sampler) for every experiment whose data is at hand:
  ``eager`` (``device.cuda_graphs=false device.capture_step=false``, the before),
  ``graphs`` (sampler loops as graphs only) and ``default`` (the shipped ``device=cuda``:
  the whole training step as a graph too where the family declares it), plus the
  experiment's entries in :data:`EXTRA_VARIANTS` (e.g. the deep EBM compiled, larger
  batches).
- ``sampler``: milliseconds per Langevin step of the deep EBM's CNN at batch 128 and 1,024,
  eager vs graph vs graph of the compiled net (``compile="default"``).
- ``torchebm``: ``scripts/bench_torchebm.py`` (needs ``torchebm==0.8.9`` importable).
- ``tests``: ``pytest tests/test_cuda_graphs.py`` (the CUDA half: replay == eager, same
  generator state, 300 training steps end at the eager loss, captured training steps end
  at the eager weights); ``--tests EXPR`` selects with ``pytest -k``.
- ``quality``: ``experiment=deep_ebm_mnist`` trained ``--quality-steps`` steps from the same
  seed with graphs off and on, each then scored by ``task=eval`` (the shipped evaluator,
  1,000 samples): FD, FD/floor, classes, confidence, and both runs' wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from ebmrun.cli import CONFIG_DIR

sys.path.insert(0, str(Path(__file__).parent))
from bench import step_rate  # noqa: E402  (a sibling script)

REPO = Path(__file__).resolve().parents[1]
DEVICE = "cuda"  # a dry run of the plumbing may set "cpu"
EXPERIMENTS = ("deep_ebm_mnist", "deep_ebm_shortrun_mnist", "jem_mnist", "drl_mnist",
               "ebgan_mnist", "dae_mnist", "vae_mnist", "vae_binarized_mnist", "rbm_mnist",
               "contrastive_mnist", "sparse_coding_mnist", "lista_mnist",
               "score_matching_toy2d", "nce_toy2d", "deep_ebm_toy2d")


VARIANTS = {"eager": ["device.cuda_graphs=false", "device.capture_step=false"],
            "graphs": ["device.capture_step=false"], "default": []}
COMPILED = ["model.net.compile=default"]
EXTRA_VARIANTS = {
    "deep_ebm_mnist": {"compiled": COMPILED,
                       "compiled_batch512": [*COMPILED, "trainer.batch_size=512"]},
    "deep_ebm_shortrun_mnist": {"compiled": COMPILED},
    "deep_ebm_toy2d": {"compiled": COMPILED},
}
# Training overrides of the quality check's variants (each run is then scored by the same
# default task=eval).
QUALITY_VARIANTS = {"eager": VARIANTS["eager"], "default": [], "compiled": COMPILED}


def config(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


def bench(experiments: list[str]) -> list[dict]:
    rows = []
    for name in experiments:
        row: dict = {"experiment": name}
        variants = {**VARIANTS, **EXTRA_VARIANTS.get(name, {})}
        for label, extra in variants.items():
            try:
                cfg = config([f"experiment={name}", f"device={DEVICE}", *extra])
                result = step_rate(cfg, warmup=5, iters=30)
                row[f"{label}_images_per_s"] = result["images_per_s"]
                row[f"{label}_ms"] = round(1000 * result["s_per_iter"], 3)
                row.setdefault("batch", result["batch_size"])  # the experiment's own
                row[f"{label}_peak_mb"] = result.get("peak_cuda_mb")
                row[f"{label}_captured"] = result.get("cuda_graphs")
                row[f"{label}_step_captured"] = result.get("step_captured")
            except Exception as error:  # noqa: BLE001 - one row's failure must not end the table
                row[f"{label}_error"] = f"{type(error).__name__}: {error}"[:300]
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
        for label in [v for v in variants if v != "eager"]:
            if "eager_images_per_s" in row and f"{label}_images_per_s" in row:
                row[f"{label}_speedup"] = round(row[f"{label}_images_per_s"]
                                                / row["eager_images_per_s"], 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def sampler() -> list[dict]:
    from ebmrun.models.deep_ebm import DeepEnergy
    from ebmrun.samplers import Langevin

    torch.manual_seed(0)
    net = DeepEnergy((1, 28, 28)).cuda()
    compiled = DeepEnergy((1, 28, 28), compile="default").cuda()
    compiled.load_state_dict(net.state_dict())
    rows = []
    for batch in (128, 1024):
        x0 = torch.rand(batch, 1, 28, 28, device="cuda") * 2 - 1
        row: dict = {"batch": batch, "steps": 60}
        finals = {}
        for label, graphs, model in (("eager", False, net), ("graphs", True, net),
                                     ("compiled_graphs", True, compiled)):
            chain = Langevin(steps=60, box=[-1.0, 1.0])
            chain.cuda_graphs = graphs
            gen = torch.Generator(device="cuda").manual_seed(0)
            finals[label] = chain.sample(model.energy, x0, generator=gen).x
            chain.sample(model.energy, x0, generator=gen)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(10):
                chain.sample(model.energy, x0, generator=gen)
            torch.cuda.synchronize()
            row[f"{label}_ms_per_step"] = round((time.perf_counter() - start) / 600 * 1000, 4)
            row[f"{label}_captured"] = len(chain.__dict__.get("_graphs", ()))
        for label in ("graphs", "compiled_graphs"):
            row[f"{label}_speedup"] = round(row["eager_ms_per_step"]
                                            / row[f"{label}_ms_per_step"], 2)
            # The same seed, start and weights: the chains' first run ends at the same states.
            row[f"{label}_max_abs_diff_vs_eager"] = float(
                (finals[label] - finals["eager"]).abs().max())
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def run(command: list[str], timeout: int = 600) -> tuple[str, float]:
    """``command``'s standard output and wall seconds (an error with its output if it fails)."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])}... exited {done.returncode}: "
                           f"{(done.stdout + done.stderr)[-1500:]}")
    return done.stdout, time.perf_counter() - start


def torchebm() -> dict:
    output, _ = run([sys.executable, "scripts/bench_torchebm.py", "--device", "cuda"])
    return json.loads(output.strip().splitlines()[-1])


def tests(select: str) -> dict:
    output, seconds = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_cuda_graphs.py", *(["-k", select] if select else [])])
    return {"summary": output.strip().splitlines()[-1], "seconds": round(seconds, 1)}


def quality(steps: int, variants: list[str]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            extra = QUALITY_VARIANTS[variant]
            train_dir, eval_dir = Path(tmp) / f"train-{variant}", Path(tmp) / f"eval-{variant}"
            _, train_s = run([sys.executable, "-m", "ebmrun", "experiment=deep_ebm_mnist",
                              f"device={DEVICE}", *extra,
                              f"trainer.max_steps={steps}", "trainer.progress=false",
                              f"hydra.run.dir={train_dir}"])
            _, eval_s = run([sys.executable, "-m", "ebmrun", "task=eval", f"ckpt={train_dir}",
                             f"device={DEVICE}", "eval.ood=[noise]",  # scored alike
                             "trainer.progress=false", f"hydra.run.dir={eval_dir}"])
            metrics = json.loads((eval_dir / "metrics.json").read_text())
            row = {"variant": variant, "steps": steps,
                   "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
                   **{k: v for k, v in metrics.items()
                      if k.startswith("samples/") and isinstance(v, (int, float))}}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_bench.json"))
    parser.add_argument("--sections", default="bench,sampler,torchebm,tests,quality")
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS),
                        help="comma-separated experiments for the bench section")
    parser.add_argument("--quality-steps", type=int, default=300)
    parser.add_argument("--quality-variants", default="eager,default",
                        help=f"comma-separated, from: {', '.join(QUALITY_VARIANTS)}")
    parser.add_argument("--tests", default="", help="pytest -k expression for the tests section")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_bench: no CUDA GPU here (this script measures the GPU path)")
    table: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d")}
    sections = {"bench": lambda: bench(args.experiments.split(",")), "sampler": sampler,
                "torchebm": torchebm, "tests": lambda: tests(args.tests),
                "quality": lambda: quality(args.quality_steps,
                                           args.quality_variants.split(","))}
    for name in args.sections.split(","):
        start = time.perf_counter()
        try:
            table[name] = sections[name]()
        except Exception as error:  # noqa: BLE001 - keep the other sections' numbers
            table[name] = {"error": f"{type(error).__name__}: {error}"[:2000],
                           "trace": traceback.format_exc()[-2000:]}
        table[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
        args.out.write_text(json.dumps(table, indent=1))
    print(json.dumps(table))


if __name__ == "__main__":
    main()
