"""The one run logger (TensorBoard)."""

from ebmrun.logging.run_logger import RunLogger

__all__ = ["RunLogger"]
