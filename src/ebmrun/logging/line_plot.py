"""Line plots now come from :mod:`ebmrun.logging.figures` (matplotlib: real axes, ticks and
legends instead of a hand-drawn 3×5 pixel font). Kept as an import path for
``objectives/code_error.py`` until it imports ``ebmrun.logging.figures`` directly."""

from ebmrun.logging.figures import Series, line_plot

__all__ = ["Series", "line_plot"]
