"""Samplers: one file per algorithm, all following :class:`ebmrun.samplers.base.Sampler`."""

from ebmrun.samplers.base import EnergyFn, Sampler, SampleResult, energy_and_grad
from ebmrun.samplers.langevin import Langevin

__all__ = ["EnergyFn", "Sampler", "SampleResult", "energy_and_grad", "Langevin"]
