"""A sampler's whole K-step loop recorded once as a CUDA graph and replayed.

Small energies are kernel-launch bound on a GPU: one Langevin step of the deep EBM's CNN
is a few dozen tiny kernels whose launches cost more than their arithmetic (≈ 2 ms per step
at batch 128 *and* at 1,024 on an H200). A CUDA graph records the kernels of all K steps
(energy, input gradient, clamp, noise, box) once and replays them with one launch, so the
per-kernel CPU cost is paid once per shape instead of once per step.

What is replayed is exactly what :meth:`Sampler.run_loop` does eagerly: the same Python
code runs during capture, so there is no second implementation to keep in step. The random
stream stays the run's: the sampler's seeded CUDA generator is registered with the graph,
each replay draws the numbers an eager run would have drawn from the generator's current
state and advances it the same way (tests/test_cuda_graphs.py compares both on a GPU).

A loop is captured only when that is safe, otherwise it runs eagerly with the same results:
the states are on CUDA, the sampler declares :attr:`Sampler.capturable` (no host syncs in
``step``), ``sampler.cuda_graphs`` is on (``device.cuda_graphs``), no snapshots or
per-chain traces are asked for, the energy runs without autocast, and the energy function
is a module or a module's bound method (a stable identity to cache the graph under; a
lambda made afresh per call would be recaptured every time). One graph per (energy, mode,
shape, steps, generator, sampler settings), at most :data:`MAX_GRAPHS` per sampler.
"""

from __future__ import annotations

import inspect
import warnings
from collections import OrderedDict
from dataclasses import dataclass, is_dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # base imports this module: no runtime import back
    from ebmrun.samplers.base import EnergyFn, Loop, Sampler

MAX_GRAPHS = 8  # per sampler; the oldest is dropped (its memory pool freed) beyond this


def energy_module(energy_fn) -> nn.Module | None:
    """The module behind ``energy_fn`` (a module or its bound method), else ``None``."""
    if isinstance(energy_fn, nn.Module):
        return energy_fn
    owner = getattr(energy_fn, "__self__", None) if inspect.ismethod(energy_fn) else None
    return owner if isinstance(owner, nn.Module) else None


def same_cuda_device(generator_device: torch.device, tensor_device: torch.device) -> bool:
    """Whether a generator serves tensors on ``tensor_device``: ``torch.Generator("cuda")``
    reports ``cuda`` without an index (the current device) while tensors say ``cuda:0``."""
    return generator_device.type == "cuda" and generator_device.index in (
        None, tensor_device.index)


def settings_of(sampler: Sampler) -> tuple:
    """The sampler's plain settings (step size, noise, clip, box, ...): baked into a graph
    as Python numbers, so a change must give another graph."""
    plain = (bool, int, float, str, type(None), tuple)
    return tuple(sorted((k, v if isinstance(v, plain) else repr(v))
                        for k, v in vars(sampler).items()
                        if not k.startswith("_") and (isinstance(v, plain) or is_dataclass(v))))


def graph_key(sampler: Sampler, energy_fn: EnergyFn, x0: Tensor, steps: int,
              generator: torch.Generator | None, snapshot_every: int) -> tuple | None:
    """The cache key of this call's graph, or ``None`` when the loop must run eagerly."""
    from ebmrun.samplers.energy_eval import autocast_dtype_for

    if not (x0.is_cuda and sampler.capturable and sampler.cuda_graphs and steps > 0):
        return None
    if torch.cuda.is_current_stream_capturing():  # inside a recorded training step: the
        return None                               # eager loop becomes part of that graph
    if snapshot_every > 0 or sampler.record_chains:
        return None
    if autocast_dtype_for(sampler.autocast, x0.device) is not None:
        return None
    module = energy_module(energy_fn)
    # Modules may opt out (e.g. the deep EBM's own torch.compile with CUDA graphs inside).
    if module is None or not getattr(module, "graph_capturable", True):
        return None
    if generator is not None and not (same_cuda_device(generator.device, x0.device)
                                      and hasattr(torch.cuda.CUDAGraph,
                                                  "register_generator_state")):
        return None
    return (energy_fn, module.training, tuple(x0.shape), x0.dtype, x0.device, steps,
            id(generator), settings_of(sampler))


@dataclass
class CapturedLoop:
    """One recorded loop: copy the start into ``x0``, replay, read ``loop``'s tensors."""

    graph: torch.cuda.CUDAGraph
    x0: Tensor      # static input (B, ...)
    loop: Loop      # static outputs: final x, traces, state


def capture(sampler: Sampler, energy_fn: EnergyFn, x0: Tensor, steps: int,
            generator: torch.Generator | None) -> CapturedLoop:
    """Record ``sampler.run_loop`` for ``x0``'s shape; the generator ends where it began."""
    device = x0.device
    static_x0 = x0.detach().clone()
    rng = generator.get_state() if generator is not None else torch.cuda.get_rng_state(device)

    def rewind() -> None:  # the random stream back to where this call found it
        if generator is not None:
            generator.set_state(rng)
        else:
            torch.cuda.set_rng_state(rng, device)

    # Warm up on a side stream: lazy initialisation (cuDNN handles, autograd's streams)
    # must not happen inside a capture. Two steps suffice; their random draws are undone.
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        sampler.run_loop(energy_fn, static_x0, min(steps, 2), generator)
    torch.cuda.current_stream(device).wait_stream(side)
    rewind()
    graph = torch.cuda.CUDAGraph()
    if generator is not None:
        graph.register_generator_state(generator)
    try:
        # thread_local: TensorBoard's writer thread may run while we capture.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            loop = sampler.run_loop(energy_fn, static_x0, steps, generator)
    finally:  # a capture draws no numbers, but a failed one must not leave them moved
        rewind()
    return CapturedLoop(graph=graph, x0=static_x0, loop=loop)


def replay_or_none(sampler: Sampler, energy_fn: EnergyFn, x0: Tensor, steps: int,
                   generator: torch.Generator | None, snapshot_every: int) -> Loop | None:
    """The loop's result through a (cached or new) CUDA graph, or ``None`` when this call
    must run eagerly (see the module docstring for when)."""
    key = graph_key(sampler, energy_fn, x0, steps, generator, snapshot_every)
    if key is None:
        return None
    cache: OrderedDict = sampler.__dict__.setdefault("_graphs", OrderedDict())
    captured = cache.get(key)
    if captured is None:
        try:
            captured = cache[key] = capture(sampler, energy_fn, x0, steps, generator)
        except RuntimeError as error:  # e.g. an energy that syncs with the host
            sampler.cuda_graphs = False  # the generator is untouched: eager gives the same run
            warnings.warn(f"{type(sampler).__name__}: could not record its loop as a CUDA "
                          f"graph ({str(error).splitlines()[0][:200]}); running eagerly "
                          f"(device.cuda_graphs=false silences this)", stacklevel=3)
            return None
        while len(cache) > MAX_GRAPHS:
            cache.popitem(last=False)
    cache.move_to_end(key)
    captured.x0.copy_(x0)
    captured.graph.replay()
    # The outputs are the graph's static memory, overwritten by the next replay: copy them.
    from ebmrun.samplers.base import Loop

    loop = captured.loop
    return Loop(x=loop.x.clone(), traces={k: v.clone() for k, v in loop.traces.items()},
                state=loop.state)
