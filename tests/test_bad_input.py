"""The bad-input matrix: every user mistake is one line on stderr, exit code 2, no
traceback, and nothing half-written left behind.

Placeholders in the cases are filled from the ``fixtures`` fixture: ``{ckpt}`` a finished
tiny deep-EBM run, ``{ebgan}`` a finished EBGAN run, ``{trunc}`` a truncated checkpoint,
``{junk}`` a random file named .pt, ``{code}`` a checkpoint whose pickle would run code,
``{toy}`` a tiny deep-EBM run on 2-D points, ``{empty}`` an empty folder, ``{file}`` a plain file (not a directory), ``{missing}`` a path
that does not exist.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ebmrun.run import train
from conftest import TINY, _find_data_root, compose_config, run_cli

CASES: list[tuple[str, list[str], str]] = [
    # config groups and keys
    ("unknown model", ["model=nope"], "unknown model 'nope'"),
    ("unknown sampler", ["sampler=nope"], "unknown sampler 'nope'"),
    ("unknown dataset", ["dataset=nope"], "unknown dataset 'nope'"),
    ("unknown device option", ["device=tpu"], "unknown device 'tpu'"),
    ("unknown experiment", ["experiment=nope"], "unknown experiment 'nope'"),
    ("unknown task", ["task=fly"], "unknown task 'fly'"),
    ("unknown top-level key", ["trainer.max_stepz=3"], "trainer.max_stepz"),
    ("unknown model key", ["+model.objective.nope=1"], "unknown key model.objective.nope"),
    ("unknown sampler key", ["+sampler.nope=1"], "unknown key sampler.nope"),
    # wrong types
    ("lr not a number", ["optim.lr=abc"], "optim.lr='abc' has the wrong type"),
    ("batch size not an int", ["trainer.batch_size=1.5"], "trainer.batch_size"),
    ("model value wrong type", ["model.objective.alpha=abc"], "model.objective.alpha"),
    ("sampler value wrong type", ["sampler.step_size=abc"], "sampler.step_size"),
    ("list expected", ["model.net.conv_channels=7"], "model.net.conv_channels"),
    # out-of-range values
    ("zero batch size", ["trainer.batch_size=0"], "trainer.batch_size=0 is invalid"),
    ("negative batch size", ["trainer.batch_size=-5"], "trainer.batch_size=-5 is invalid"),
    ("zero lr", ["optim.lr=0"], "optim.lr=0"),
    ("negative lr", ["optim.lr=-1e-3"], "optim.lr=-0.001 is invalid"),
    ("negative steps", ["trainer.max_steps=-1"], "trainer.max_steps=-1 is invalid"),
    ("no budget at all", ["trainer.max_steps=null"], "never end"),
    ("unknown optimizer", ["optim.name=rmsprop"], "optim.name=rmsprop is invalid"),
    ("one beta", ["optim.betas=[0.5]"], "optim.betas"),
    ("zero threads", ["device.threads=0"], "device.threads=0 is invalid"),
    ("negative sampler steps", ["sampler.steps=-3"], "sampler steps must be >= 0"),
    ("adaptation for the whole run", ["sampler=mala", "sampler.adapt_steps=3"],
     "adapt_steps=3 must be < steps=3"),
    ("drawn chain length below K", ["model.objective.chain_steps_max=2"],
     "chain_steps_max must be above sampler.steps (3)"),
    ("bad divergence policy", ["trainer.on_divergence=panic"], "trainer.on_divergence"),
    ("bad ood set", ["eval.ood=[cats]"], "eval.ood"),
    ("sweep resume without -m", ["sweep.resume=true"], "sweep.resume=true resumes a multirun"),
    # the user's own callbacks (trainer.callbacks)
    ("callback not importable", ["+trainer.callbacks.x._target_=nope.Nope"],
     "trainer.callbacks.x._target_=nope.Nope cannot be imported"),
    ("callback that is no Callback", ["+trainer.callbacks.x._target_=ebmrun.ema.EMA"],
     "is not a Callback"),
    ("callback not a node", ["+trainer.callbacks.x=3"], "trainer.callbacks.x=3 is not a callback"),
    ("callback key misspelt", ["+trainer.callbacks.x._target_=ebmrun.callbacks.pictures.Pictures",
                               "+trainer.callbacks.x.evry=3"],
     "did you mean trainer.callbacks.x.every?"),
    # checkpoints
    ("sample without ckpt", ["task=sample"], "task=sample needs a checkpoint"),
    ("sample.n = 0", ["task=sample", "ckpt={ckpt}", "sample.n=0"], "sample.n=0 is invalid"),
    ("missing checkpoint", ["task=sample", "ckpt={missing}"], "checkpoint not found"),
    ("truncated checkpoint", ["task=sample", "ckpt={trunc}"], "truncated or corrupt"),
    ("random file named .pt", ["task=sample", "ckpt={junk}"], "truncated or corrupt"),
    ("pickle that runs code", ["task=sample", "ckpt={code}"], "refusing to load"),
    ("other family's checkpoint", ["task=sample", "ckpt={ebgan}", "model=deep_ebm"],
     "does not match the configured model"),
    ("incompatible config", ["task=sample", "ckpt={ckpt}", "model.net.conv_hidden=7"],
     "does not match the configured model"),
    ("resume a finished run", ["resume={ckpt}"], "already finished"),
    ("resume from nowhere", ["resume={missing}"], "checkpoint not found"),
    ("ckpt with task=train", ["ckpt={ckpt}"], "task=train would ignore it"),
    ("resume as another family", ["resume={ebgan}", "model=deep_ebm"],
     "continues a ebgan run, not deep_ebm"),
    ("eval without ckpt", ["task=eval"], "task=eval needs a checkpoint"),
    ("label for a family without E(x, y)", ["task=sample", "ckpt={ckpt}", "sample.label=3"],
     "has no class-conditional energy E(x, y)"),
    ("compose with weights that do not fit", ["task=sample", "ckpt={ckpt}",
                                              "compose.weights=[1,1]"],
     "compose.weights has 2 weights for 1 energies"),
    ("compose models of other items", ["task=sample", "ckpt={ckpt}", "compose.ckpts=[{toy}]"],
     "models items of shape (2,)"),
    ("jem on points without labels", ["model=jem", "dataset=toy2d"],
     "jem needs (C, H, W) images"),
    # data and devices
    ("data root missing offline", ["dataset.root={missing}", "dataset.download=false"],
     "missing MNIST/raw"),
    ("image folder without images", ["dataset=image_folder", "dataset.path={empty}"],
     "no image files"),
    ("unknown toy density", ["dataset=toy2d", "dataset.name=blobs"], "blobs"),
    ("cuda without CUDA", ["device=cuda"], "device=cuda"),
    ("mps without MPS", ["device=mps"], "device=mps"),
    ("batch larger than the data", ["dataset=toy2d", "dataset.n_train=10"],
     "trainer.batch_size=16 is larger than the 10 training items"),
    ("argument without =", ["train"], "(fix: ebmrun task=train)"),
    # output
    ("unwritable output dir", ["hydra.run.dir={file}/run"], "cannot write the run dir"),
]
if torch.cuda.is_available():  # the GPU-less cases do not apply on a GPU machine
    CASES = [c for c in CASES if c[0] != "cuda without CUDA"]


class RunsCode:
    """Unpickling this would call os.system: a checkpoint must never do that."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("bad_input")
    with pytest.MonkeyPatch.context() as patch:  # configs read the data root from the env
        patch.setenv("EBMRUN_DATA_DIR", str(_find_data_root()))
        train(compose_config(TINY), base / "deep_ebm")
        train(compose_config(["model=ebgan", *[o for o in TINY if "objective" not in o]]),
              base / "ebgan")
        train(compose_config([*TINY, "dataset=toy2d"]), base / "toy")
    data = (base / "deep_ebm" / "last.pt").read_bytes()
    (base / "trunc.pt").write_bytes(data[: len(data) // 2])
    (base / "junk.pt").write_bytes(os.urandom(4096))
    torch.save({"model": RunsCode()}, base / "code.pt")
    (base / "empty").mkdir()
    (base / "file").write_text("not a directory")
    return {"ckpt": str(base / "deep_ebm"), "ebgan": str(base / "ebgan"),
            "trunc": str(base / "trunc.pt"), "junk": str(base / "junk.pt"),
            "code": str(base / "code.pt"), "empty": str(base / "empty"),
            "file": str(base / "file"), "missing": str(base / "does-not-exist"),
            "toy": str(base / "toy")}


def test_the_matrix_is_big_enough() -> None:
    assert len(CASES) >= 30 and len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "args", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(name: str, args: list[str], expected: str, fixtures: dict[str, str],
                   tmp_path: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in Path(fixtures["ckpt"]).iterdir()}
    result = run_cli([*TINY, *[a.format(**fixtures) for a in args]], tmp_path)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ebmrun: error: "), result.stderr[-2000:]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    # nothing half-made: no run dir, no temp files, no code run, the used run untouched
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not leftovers, leftovers
    assert {p: p.stat().st_mtime_ns for p in Path(fixtures["ckpt"]).iterdir()} == before
