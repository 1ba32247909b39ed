"""Data-parallel training on several processes with DistributedDataParallel (DDP).

    torchrun --standalone --nproc_per_node=4 -m ebmrun experiment=deep_ebm_mnist device=cuda

torchrun starts one ebmrun process per GPU (or per CPU worker: ``device=cpu`` uses gloo,
CUDA uses nccl, one GPU per local rank). What changes against one process:

- ``trainer.batch_size`` stays the *global* batch: every step draws the same global batch
  on all ranks (same data-order seed) and each rank takes its own contiguous
  ``batch_size / world_size`` items, so N ranks compute the gradient of the same batch that
  one process would; DDP averages the gradients (then clipping and the optimizer step run
  identically everywhere, keeping the weights equal).
- Randomness that must differ does: each rank's sampler generator (and so its replay
  buffer and its MCMC noise) is seeded from ``(seed, rank)``; rank 0 keeps the
  single-process seed.
- Rank 0 alone writes: the run dir (Hydra's ``.hydra/`` too), TensorBoard, checkpoints,
  pictures, evaluation, samples and metrics.json. All ranks use rank 0's run dir name
  (resolved once by rank 0 and broadcast before Hydra starts), so one run leaves one dir.
- Decisions that end or rewind the loop (divergence, the wall-clock budget, Ctrl-C /
  SIGTERM) are agreed by all ranks every step, so no rank waits forever on the others.
- Checkpoints hold rank 0's state, so a run resumes with any number of processes (also
  one): ranks > 0 start from a copy of rank 0's replay buffer with fresh random streams.

For one parameter group the whole ``training_step`` of the objective runs inside DDP's
forward: the objectives call ``model.energy`` (not ``forward``) and the sampler calls it many
times, and DDP only synchronises gradients of work done inside its forward. Objectives with
several groups (EBGAN's ``d`` then ``g``) backward once per group, which one DDP forward
cannot cover: the runner averages each group's gradients itself
(:func:`average_gradients`, one all-reduce per group) before clipping and stepping. Batch
statistics (EBGAN's pulling-away term, BatchNorm in its generator) are computed per rank,
as DDP does for BatchNorm. Objectives that step their own optimizers
(``manual_optimization``) are not supported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import hydra
import hydra.utils
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ebmrun.errors import UserError
from ebmrun.logging import RunLogger


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes outputs (rank 0, or the only process)."""
    return rank() == 0


def launched() -> bool:
    """Whether torchrun started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _backend(device: str) -> str:
    """gloo for CPU training, nccl for CUDA (one GPU per local rank)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "gloo"
    if device != "cuda":
        raise UserError(f"torchrun training runs on device=cpu or device=cuda, not {device}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank >= torch.cuda.device_count():
        raise UserError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} "
                        f"visible) (fix: torchrun --nproc_per_node=<number of GPUs>)")
    torch.cuda.set_device(local_rank)  # device="cuda" now means this rank's GPU
    return "nccl"


def launch_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun); valid before joining."""
    return int(os.environ.get("RANK", "0"))


def start(config_dir: str, argv: list[str]) -> list[str]:
    """Under torchrun (before Hydra starts): join the process group and return the Hydra
    overrides that give every rank rank 0's run dir (ranks > 0 write no ``.hydra/``).
    Without torchrun: nothing to do, ``[]``."""
    if not launched() or dist.is_initialized():
        return []
    if "-m" in argv or "--multirun" in argv:
        raise UserError("torchrun runs one training job on several processes, not a sweep "
                        "(fix: drop -m; sweep with a launcher, e.g. hydra/launcher=joblib)")
    with hydra.initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = hydra.compose("config", overrides=[a for a in argv if not a.startswith("-")],
                            return_hydra_config=True)
    if cfg.task != "train":
        raise UserError(f"torchrun is for task=train; run task={cfg.task} as one process "
                        f"(fix: ebmrun task={cfg.task} ...)")
    objective = hydra.utils.get_object(cfg.model.objective._target_)
    if objective.manual_optimization:  # refused before joining: no rank starts to train
        raise UserError(f"model={cfg.model.name} ({objective.__name__}) steps its own "
                        f"optimizers, which DDP training does not support (fix: train it as one "
                        f"process: ebmrun ... without torchrun)")
    dist.init_process_group(backend=_backend(cfg.device.name))
    # ${now:...} and the random suffix resolve differently in every process: rank 0 decides.
    shared = [str(cfg.hydra.run.dir) if is_main() else None]
    dist.broadcast_object_list(shared, src=0)
    return [f"hydra.run.dir={shared[0]}", *([] if is_main() else ["hydra.output_subdir=null"])]


def stop() -> None:
    """Leave the process group (a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int) -> int:
    """The seed of this rank's random streams: ``seed`` on rank 0 (as in one process),
    a different one on every other rank (CPU generators use only the low 32 bits of a
    seed, so the rank moves those: an odd multiplier keeps them distinct per rank)."""
    return (seed + rank() * 0x9E3779B9) % 2**63


def shard(indices: Tensor) -> Tensor:
    """This rank's contiguous share ``(B / world_size,)`` of a global batch ``(B,)``."""
    size = world_size()
    if size == 1:
        return indices
    per_rank = len(indices) // size
    return indices[rank() * per_rank:(rank() + 1) * per_rank]


class _TrainingStep(nn.Module):
    """``objective.training_step`` as a module forward, so DDP sees the whole step."""

    def __init__(self, objective) -> None:
        super().__init__()
        self.model = objective.model  # registers the parameters DDP synchronises
        self.objective = objective

    def forward(self, x: Tensor, *labels: Tensor) -> dict[str, Tensor]:
        return self.objective.training_step(x, *labels)


def step_function(objective, batch_size: int) -> Callable[[Tensor], dict[str, Tensor]]:
    """What computes one training step's losses on this rank's share ``x`` of the batch:
    ``objective.training_step`` in one process, the same wrapped in DDP otherwise.
    Wrapping broadcasts rank 0's weights and buffers, so call it after loading a checkpoint."""
    size = world_size()
    if size == 1:
        return objective.training_step
    if objective.manual_optimization:
        raise UserError(f"{type(objective).__name__} steps its own optimizers, which DDP "
                        f"training does not support (fix: train it as one process)")
    if batch_size % size:
        raise UserError(f"trainer.batch_size={batch_size} does not split over {size} "
                        f"processes (fix: trainer.batch_size=<a multiple of {size}>)")
    if not any(p.requires_grad for p in objective.model.parameters()):
        return objective.training_step  # nothing to synchronise (fixed energies)
    if len(objective.groups) > 1:
        return objective.training_step  # the runner averages each group's gradients
    device = next(objective.model.parameters()).device
    return DistributedDataParallel(_TrainingStep(objective),
                                   device_ids=[device] if device.type == "cuda" else None)


def average_gradients(params: list[Tensor]) -> None:
    """Replace each gradient by its mean over the ranks (one flat all-reduce)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def agree(reason: str | None, timed_out: bool, signal: int | None
          ) -> tuple[str | None, bool, int | None]:
    """Make this step's stop/rewind decisions global: a divergence ``reason``, the spent
    wall-clock budget, a caught signal. One rank's decision becomes every rank's."""
    if world_size() == 1:
        return reason, timed_out, signal
    diverged, timed_out, signal = _max_over_ranks([reason is not None, timed_out, signal or 0])
    if diverged and reason is None:
        reason = "diverged on another rank"
    return reason, bool(timed_out), signal or None


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is set on any rank (one all-reduce; every rank must call it)."""
    if world_size() == 1:
        return flag
    return bool(_max_over_ranks([flag])[0])


def _max_over_ranks(values: list[int | bool]) -> list[int]:
    """Each value's maximum over the ranks (one all-reduce; every rank must call it)."""
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    flags = torch.tensor([int(v) for v in values], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return [int(v) for v in flags.tolist()]


class _Silent:
    """Stands in for a RunLogger (and its writer) on ranks > 0: every call does nothing."""

    writer = property(lambda self: self)

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def run_logger(run_dir: Path, purge_step: int | None = None) -> "RunLogger | _Silent":
    """The run's TensorBoard logger on rank 0; a silent stand-in on other ranks."""
    return RunLogger(run_dir, purge_step=purge_step) if is_main() else _Silent()


def reseed_restored(generator: torch.Generator) -> None:
    """After loading rank 0's checkpoint state, give ranks > 0 their own random stream
    again (else every rank would draw the same MCMC noise)."""
    if rank() == 0:
        return
    base = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    generator.manual_seed(rank_seed(base))
