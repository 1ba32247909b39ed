"""Offline sample-quality metrics: a cached CNN evaluator, Fréchet distance in its feature
space, and class-balance statistics of its predictions."""

from ebmrun.metrics.evaluator import Evaluator, get_evaluator
from ebmrun.metrics.frechet import feature_stats, frechet_distance, frechet_from_stats
from ebmrun.metrics.sample_quality import class_stats, reference_stats, sample_quality

__all__ = ["Evaluator", "get_evaluator", "feature_stats", "frechet_distance",
           "frechet_from_stats", "class_stats", "reference_stats", "sample_quality"]
