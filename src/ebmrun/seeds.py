"""The random streams of a run, each derived from ``cfg.seed`` by its own named offset.

Separate streams keep one use of randomness from shifting another's numbers: drawing a
picture or evaluating never changes what training draws next, so pictures on or off give
the same weights, and resumed runs stay bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stream:
    """``seed(run_seed, index)`` = ``run_seed * stride + offset + index``."""

    offset: int
    stride: int = 1

    def seed(self, run_seed: int, index: int = 0) -> int:
        return run_seed * self.stride + self.offset + index


MODEL_INIT = Stream(0)           # torch's global generator: weight initialisation
SAMPLER = Stream(1)              # objective/sampler generator (negatives, replay buffer)
DATA_ORDER = Stream(2)           # the batch order of every epoch
EVALUATION = Stream(7)           # samples and noise drawn by evaluation
QUALITY = Stream(11)             # the quality probe: the same draw at every probe step
PICTURES = Stream(0, 1_000_003)  # one per picture step: index = the step
FINAL_SAMPLES = Stream(0)        # the samples written after training (as task=sample draws)


# A run that the health watch restarts (``trainer.health_restarts``) trains its next attempt
# as seed + RESTART_STRIDE: a fresh initialisation, data order and noise, and a seed the user
# can type to run that attempt alone (seed 7 -> 1000007 -> 2000007).
RESTART_STRIDE = 1_000_000


def restart_seed(run_seed: int) -> int:
    """The seed of the attempt after one trained with ``run_seed``."""
    return run_seed + RESTART_STRIDE
