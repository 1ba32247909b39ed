"""ebmrun: a config-driven experiment runner for energy-based models."""

__version__ = "0.1.0"
