"""A whole training step recorded once as a CUDA graph and replayed (``device.capture_step``).

Once the sampler's loop is a graph (:mod:`ebmrun.samplers.graphed`), what is left of a
small model's step on a GPU is launch time: the loss, its backward, clipping, Adam and the
EMA, a few hundred tiny kernels queued one by one from Python. :class:`CapturedStep` wraps
the :class:`~ebmrun.optimization.Updater`: the first :data:`WARMUP_STEPS` steps run eagerly
(lazy initialisation — cuDNN, cuBLAS, the optimizer's state — must not happen inside a
capture), then the step as the Updater runs it (objective, backward, clip, optimizer step,
EMA) is recorded once and every later step is one copy of the batch plus one replay.

What stays outside the graph, so it cannot go stale: the learning rates (schedules run in
Python before each replay and write each group's rate into a device tensor the optimizer
reads), and everything the callbacks do. What makes the graph stale is detected, not
assumed: a checkpoint load or the divergence guard's rollback replaces the optimizer's or
the EMA's state tensors, and the next step records the graph again.

It applies only where a replay is the eager step (:func:`why_not` says why not): on CUDA,
one process, an objective that declares ``capturable_step`` (no host syncs, the same
shapes and the same Python path every step), Adam/AdamW (they can step inside a graph), and
each parameter group updated once per step. Elsewhere the step runs eagerly, unchanged.
Declared by the VAE, the deep EBM's contrastive divergence on images, JEM, EBGAN, the DAE,
the RBM and contrastive learning; tests/test_cuda_graphs.py checks each against the eager
step on a GPU (README, "GPU" says which runs passed where).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ebmrun import distributed as ddp
from ebmrun.optimization import Updater

WARMUP_STEPS = 3  # eager steps before the capture (the PyTorch CUDA-graph recipe uses 3)


def why_not(updater: Updater, device: torch.device) -> str | None:
    """Why this run's step cannot be replayed as a graph, or ``None`` if it can."""
    objective = updater.objective
    if device.type != "cuda":
        return "not on CUDA"
    if ddp.world_size() > 1:
        return "DDP averages gradients between ranks"
    if objective.manual_optimization or not objective.capturable_step:
        return f"{type(objective).__name__} does not declare capturable_step"
    for optimizer in updater.optimizers:
        if "capturable" not in optimizer.defaults:
            return (f"{type(optimizer).__name__} cannot step inside a CUDA graph "
                    f"(Adam and AdamW can)")
    return None


def captured_if_possible(updater: Updater, enabled: bool, device: torch.device
                         ) -> Updater | CapturedStep:
    """``updater`` wrapped in a :class:`CapturedStep` where ``enabled``
    (``device.capture_step``) and :func:`why_not` finds nothing against it; else as is."""
    if enabled and why_not(updater, device) is None:
        return CapturedStep(updater)
    return updater


def set_capturable(optimizer: torch.optim.Optimizer, on: bool) -> None:
    """Adam's ``capturable``: its step counters live on the parameters' device (no host
    reads), which a graph needs; off again for a CPU run or a checkpoint. Optimizers
    without the option are left alone."""
    if "capturable" not in optimizer.defaults:
        return
    for group in optimizer.param_groups:
        group["capturable"] = on
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if on and torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(param.device, torch.float32)


def tensor_addresses(state) -> list[int]:
    """``data_ptr`` of every tensor in a nested dict/list ``state`` (e.g. an objective's
    ``state_dict``, which hands out its live tensors), in a fixed order."""
    if torch.is_tensor(state):
        return [state.data_ptr()]
    if isinstance(state, dict):
        return [p for key in sorted(state, key=str) for p in tensor_addresses(state[key])]
    if isinstance(state, (list, tuple)):
        return [p for item in state for p in tensor_addresses(item)]
    return []


class CapturedStep:
    """Callable like the :class:`Updater` it wraps (and forwards every other attribute to)."""

    def __init__(self, updater: Updater) -> None:
        self.updater = updater
        self.eager_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False
        for optimizer in updater.optimizers:
            set_capturable(optimizer, True)

    def __getattr__(self, name: str):
        if name == "updater":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.updater, name)

    def __call__(self, x: Tensor, step: int = 0, y: Tensor | None = None) -> dict[str, Tensor]:
        if self.failed:
            return self.updater(x, step, y)
        if self.eager_steps < WARMUP_STEPS:
            self.eager_steps += 1
            return self._on_side_stream(lambda: self.updater(x, step, y))
        if self.graph is None or self._tensors() != self.recorded_tensors:
            if not self._capture(x, step, y):
                return self.updater(x, step, y)
        self.updater.apply_schedules(step)
        for lr, group in zip(self.lrs, self._groups(), strict=True):
            lr.fill_(group["lr"])
        self.static_x.copy_(x)
        if y is not None:
            self.static_y.copy_(y)
        self.graph.replay()
        # Copies: the next replay overwrites the graph's outputs, and callbacks keep them.
        return {k: v.detach().clone() if torch.is_tensor(v) else v
                for k, v in self.static_out.items()}

    def _groups(self) -> list[dict]:
        return [g for optimizer in self.updater.optimizers for g in optimizer.param_groups]

    def _tensors(self) -> tuple[int, ...]:
        """Addresses of the state a graph reads and writes: parameters, optimizer state, EMA
        weights, the objective's own state (replay buffer, persistent chains). A load that
        replaces any of them makes the recorded graph stale."""
        ptrs = [p.data_ptr() for g in self._groups() for p in g["params"]]
        for optimizer in self.updater.optimizers:
            ptrs += [v.data_ptr() for state in optimizer.state.values()
                     for v in state.values() if torch.is_tensor(v)]
        if self.updater.ema is not None:
            ptrs += [v.data_ptr() for v in self.updater.ema.shadow.values()]
        return tuple(ptrs + tensor_addresses(self.updater.objective.state_dict()))

    @staticmethod
    def _on_side_stream(fn):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), warnings.catch_warnings():
            # Adam warns that capturable=True runs slower uncaptured: these steps are few.
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            out = fn()
        torch.cuda.current_stream().wait_stream(stream)
        return out

    def _capture(self, x: Tensor, step: int, y: Tensor | None) -> bool:
        """Record the step; ``False`` (and eager from now on, with a warning) where the
        recording shows a replay would not be the eager step."""
        updater, generator = self.updater, self.updater.objective.generator
        for optimizer in updater.optimizers:
            set_capturable(optimizer, True)  # a checkpoint load may have turned it off
        self.static_x = x.clone()
        self.static_y = y.clone() if y is not None else None
        groups = self._groups()
        floats = [group["lr"] for group in groups]
        self.lrs = [torch.tensor(float(lr), device=x.device) for lr in floats]
        for group, lr in zip(groups, self.lrs, strict=True):
            group["lr"] = lr  # the optimizer reads the rate from this tensor in the graph
        rng = generator.get_state()
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(generator)
        updater.schedules_outside = True
        try:
            for optimizer in updater.optimizers:
                optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = updater(self.static_x, step, self.static_y)
            repeated = [i for i, n in updater.updates_this_step.items() if n > 1]
            if repeated:
                raise RuntimeError(f"group {updater.objective.groups[repeated[0]]} is updated "
                                   f"{updater.updates_this_step[repeated[0]]} times per step "
                                   f"(its learning rate changes between them)")
        except RuntimeError as error:
            self.failed = True
            warnings.warn(f"could not record the training step as a CUDA graph "
                          f"({str(error).splitlines()[0][:200]}); running it eagerly "
                          f"(device.capture_step=false silences this)", stacklevel=3)
            return False
        finally:
            updater.schedules_outside = False
            for group, lr in zip(groups, floats, strict=True):
                group["lr"] = lr  # Python floats again for schedules, logs and checkpoints
            generator.set_state(rng)  # a capture draws no numbers: nothing moved
        self.graph, self.static_out = graph, out
        self.recorded_tensors = self._tensors()
        return True
