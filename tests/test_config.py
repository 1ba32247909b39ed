"""Every config option composes and builds; bad input becomes one clear UserError."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ebmrun.build import (build_components, data_info_of, load_data, validate_config)
from ebmrun.cli import CONFIG_DIR, preflight
from ebmrun.errors import UserError
from ebmrun.objectives.base import DataInfo

from conftest import compose_config

GROUPS = ("model", "sampler", "dataset", "device", "experiment")
# Options whose config needs something only a user can give (a folder of images).
NEEDS_INPUT = {("dataset", "image_folder"): ["dataset.path=/nonexistent"]}
# Devices this CPU-only test machine cannot build (their availability check is tested below).
NOT_HERE = {"cuda": not torch.cuda.is_available(),
            "mps": not (torch.backends.mps.is_available())}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


ALL_OPTIONS = [(g, o) for g in GROUPS for o in options(g)]


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert options(group), f"conf/{group}/ is empty"


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS)
def test_every_option_composes_and_validates(group: str, option: str) -> None:
    cfg = compose_config([f"{group}={option}", *NEEDS_INPUT.get((group, option), [])])
    validate_config(cfg)
    assert cfg.model.name and cfg.dataset._target_


# (model, item shape) pairs a model's default config refuses, with the expected message.
UNSUPPORTED = {("ebgan", (2,)): r"model.net: ebgan arch=conv needs \(C, H, W\) images",
               ("jem", (2,)): r"model.net: jem needs \(C, H, W\) images"}


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("item_shape", [(1, 28, 28), (3, 32, 32), (2,)])
def test_every_model_builds_for_every_data_shape(model: str, item_shape: tuple) -> None:
    cfg = compose_config([f"model={model}", "device=cpu"])
    box = (-1.0, 1.0)
    if (model, item_shape) in UNSUPPORTED:
        with pytest.raises(UserError, match=UNSUPPORTED[model, item_shape]):
            build_components(cfg, DataInfo(item_shape, box, box))
        return
    parts = build_components(cfg, DataInfo(item_shape, box, box))
    x = torch.rand(3, *item_shape) * 2 - 1
    assert parts.model.energy(x).shape == (3,)


@pytest.mark.parametrize("dataset", [d for d in options("dataset")
                                     if d in ("mnist", "fashion_mnist", "toy2d")])
def test_datasets_with_local_data_load(dataset: str, data_root: Path) -> None:
    data = load_data(compose_config([f"dataset={dataset}"]))
    info = data_info_of(data)
    assert len(data.train) > 1000 and info.box[0] < info.box[1]


@pytest.mark.parametrize("device", [d for d in ("cuda", "mps") if NOT_HERE[d]])
def test_unavailable_device_is_a_user_error(device: str) -> None:
    cfg = compose_config([f"device={device}"])
    with pytest.raises(UserError, match=f"device={device}.*not available.*device=cpu"):
        build_components(cfg, DataInfo((2,), (-1.0, 1.0), (-1.0, 1.0)))


BAD_INPUT = [
    (["model=nope"], r"unknown model 'nope' \(choose from: .*deep_ebm"),
    (["sampler=nope"], r"unknown sampler 'nope'"),
    (["dataset=nope"], r"unknown dataset 'nope'"),
    (["device=tpu"], r"unknown device 'tpu'"),
    (["experiment=nope"], r"unknown experiment 'nope'"),
    (["trainer.max_stepz=3"], r"unknown key trainer.max_stepz"),
    (["nonsense=1"], r"nonsense"),
    (["trainer.max_steps=abc"], r"trainer.max_steps"),
    (["optim.lr=fast"], r"optim.lr"),
    (["trainer.batch_size=0"], r"trainer.batch_size=0 is invalid.*positive"),
    (["trainer.batch_size=-4"], r"trainer.batch_size=-4 is invalid"),
    (["optim.lr=0"], r"optim.lr=0.0 is invalid"),
    (["optim.lr=-1e-3"], r"optim.lr=-0.001 is invalid"),
    (["trainer.max_steps=-1"], r"trainer.max_steps=-1 is invalid"),
    (["sample.n=0"], r"sample.n=0 is invalid"),
    (["optim.name=rmsprop"], r"optim.name=rmsprop is invalid"),
    (["sampler.step_sise=1"], r"unknown key sampler.step_sise"),
    (["sampler.step_size=big"], r"sampler.step_size='big' has the wrong type: expected float"),
    (["model.net.conv_hidden=1.5"], r"model.net.conv_hidden=1.5 has the wrong type"),
    (["+model.objective.alpah=0.1"], r"unknown key model.objective.alpah"),
    (["task=fly"], r"unknown task 'fly' \(choose from: train, sample"),
    (["task=sample"], r"task=sample needs a checkpoint \(fix: ckpt="),
    (["task=sample", "ckpt=/no/such/run"], r"checkpoint not found: /no/such/run"),
    (["resume=/no/such/run"], r"checkpoint not found"),
    (["trainer.max_steps=null"], r"never end"),
    (["dataset=toy2d", "dataset.name=blob"], None),  # caught when the data loads (below)
]


@pytest.mark.parametrize(("overrides", "pattern"), [c for c in BAD_INPUT if c[1]])
def test_bad_input_is_one_clear_line(overrides: list[str], pattern: str) -> None:
    with pytest.raises(UserError, match=pattern) as info:
        preflight(overrides)
    assert "\n" not in str(info.value)


def test_unknown_toy_density_names_the_choices() -> None:
    with pytest.raises(UserError, match="blob.*8gaussians"):
        load_data(compose_config(["dataset=toy2d", "dataset.name=blob"]))


def test_missing_data_root_names_files_and_fix(tmp_path: Path) -> None:
    cfg = compose_config([f"dataset.root={tmp_path}", "dataset.download=false"])
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.*dataset.root") as info:
        load_data(cfg)
    assert "\n" not in str(info.value)
