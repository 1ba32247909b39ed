"""Samplers: one file per algorithm, all following :class:`ebmrun.samplers.base.Sampler`.

Pick one with ``sampler=<name>`` (``conf/sampler/<name>.yaml``); :data:`SAMPLERS` maps the
config names to the classes.
"""

from ebmrun.samplers.annealed_langevin import AnnealedLangevin
from ebmrun.samplers.base import EnergyFn, Sampler, SampleResult
from ebmrun.samplers.energy_eval import energy_and_grad
from ebmrun.samplers.dae_chain import DenoisingChain
from ebmrun.samplers.gibbs import BlockGibbs
from ebmrun.samplers.hmc import HMC
from ebmrun.samplers.langevin import Langevin
from ebmrun.samplers.mala import MALA
from ebmrun.samplers.nuts import NUTS
from ebmrun.samplers.metropolis import MetropolisSampler, StepSizeAdapter
from ebmrun.samplers.replica_exchange import ReplicaExchange
from ebmrun.samplers.rw_metropolis import RandomWalkMetropolis
from ebmrun.samplers.underdamped_langevin import UnderdampedLangevin

SAMPLERS: dict[str, type[Sampler]] = {
    "langevin": Langevin,
    "mala": MALA,
    "hmc": HMC,
    "rw_metropolis": RandomWalkMetropolis,
    "annealed_langevin": AnnealedLangevin,
    "replica_exchange": ReplicaExchange,
    "dae_chain": DenoisingChain,
    "underdamped_langevin": UnderdampedLangevin,
    "nuts": NUTS,
}

# Samplers that need a model's structure, not only its energy (block Gibbs needs the RBM's
# conditionals): configured in conf/sampler/ too, but outside the energy-only contract tests.
STRUCTURED_SAMPLERS: dict[str, type[Sampler]] = {"gibbs": BlockGibbs}

__all__ = ["EnergyFn", "Sampler", "SampleResult", "energy_and_grad", "Langevin", "MALA", "HMC",
           "RandomWalkMetropolis", "AnnealedLangevin", "ReplicaExchange", "DenoisingChain",
           "MetropolisSampler", "StepSizeAdapter", "SAMPLERS", "BlockGibbs",
           "STRUCTURED_SAMPLERS", "UnderdampedLangevin", "NUTS"]
