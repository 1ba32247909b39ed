"""Offline sample-quality metrics for MNIST-like samples, measured with an :class:`Evaluator`.

``frechet`` says how far the sample distribution is from the real one in the evaluator's
feature space; it has a positive floor even for real images (finite-sample bias), so always
print it next to :func:`real_floor` computed with the same number of images (the median of
several draws: one draw is a noisy estimate). The class
statistics catch mode collapse (few classes present, high KL to uniform) and blurry or
off-manifold samples (low classifier confidence).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ebmrun.errors import UserError
from ebmrun.metrics.evaluator import Evaluator
from ebmrun.metrics.frechet import feature_stats, frechet_distance, frechet_from_stats

# A class counts as "present" when it receives at least this fraction of predictions
# (uniform would be 10%); 2% ignores stray misclassifications of a collapsed sampler.
PRESENT_FRACTION = 0.02
# KL of a one-class histogram: the worst class_kl_uniform, for reading the numbers.
MAX_CLASS_KL = math.log(Evaluator.num_classes)
# Real-vs-real draws whose median is the floor (see real_floor): ~0.8 s of features per
# 1,000 images on one CPU thread, so 10 draws add ~8 s to an evaluation of 1,000 samples.
FLOOR_DRAWS = 10


@dataclass(frozen=True)
class RealFloor:
    """The real-vs-real FD of N images: the ``median`` over ``draws`` disjoint draws, and
    ``sd``, the standard deviation of a single draw's FD."""

    median: float
    sd: float
    draws: int


def _check_images(name: str, x: Tensor) -> None:
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28) or x.shape[0] < 2:
        raise UserError(f"{name} must be a float tensor (N, 1, 28, 28) with N >= 2, got shape "
                        f"{tuple(x.shape)}; save samples as one tensor in [-1, 1]")
    if not torch.is_floating_point(x) or not bool(torch.isfinite(x).all()):
        raise UserError(f"{name} must hold finite floating-point values in [-1, 1]; "
                        "check the sampler output for NaN/inf or convert uint8 with to_float")


def class_stats(logits: Tensor) -> dict[str, float]:
    """Class-balance statistics of predictions.

    Args:
        logits: ``(N, K)`` classifier logits.

    Returns:
        ``classes_present`` (classes with >= 2% of the argmax predictions), ``class_kl_uniform``
        (KL(p || uniform) of the predicted-class histogram p, in nats, 0 = perfectly
        balanced, log K = one class) and ``mean_confidence`` (mean max softmax probability).
    """
    n, k = logits.shape
    probs = logits.double().softmax(dim=1)
    hist = torch.bincount(logits.argmax(dim=1), minlength=k).double() / n
    nonzero = hist[hist > 0]  # 0 log 0 = 0
    kl = float((nonzero * (nonzero * k).log()).sum())
    return {
        "classes_present": int((hist >= PRESENT_FRACTION).sum()),
        "class_kl_uniform": max(kl, 0.0),
        "mean_confidence": float(probs.max(dim=1).values.mean()),
    }


def sample_quality(evaluator: Evaluator, samples: Tensor, reference: Tensor) -> dict:
    """Metrics of ``samples`` against ``reference`` real images.

    Args:
        evaluator: feature extractor / classifier (see :func:`get_evaluator`).
        samples: ``(N, 1, 28, 28)`` float images in ``[-1, 1]``.
        reference: ``(M, 1, 28, 28)`` float images in ``[-1, 1]`` (e.g. the test split).

    Returns:
        dict with ``frechet``, ``classes_present``, ``class_kl_uniform``,
        ``mean_confidence`` and ``n_samples``.
    """
    _check_images("samples", samples)
    _check_images("reference", reference)
    feats, logits = evaluator.features_and_logits(samples)
    ref_feats = evaluator.features(reference)
    out = {"frechet": frechet_distance(feats, ref_feats)}
    out.update(class_stats(logits))
    out["n_samples"] = int(samples.shape[0])
    return out


def real_floor(evaluator: Evaluator, draws: Sequence[Tensor], test: Tensor) -> RealFloor:
    """Fréchet distance of real training images to the test split ``(M, 1, 28, 28)``: the best
    a sampler can score with as many samples, to print beside its FD.

    ``draws``: one or more sets of real training images ``(N, 1, 28, 28)`` (disjoint random
    draws of the same N, see :func:`ebmrun.evaluation.real_image_draws`). One draw is a noisy
    estimate: on MNIST's shipped evaluator, 1,000-image draws of 20 seeds ranged 0.16-0.79
    (median 0.28, sd 0.14), heavy-tailed, so a ratio FD / floor moved by up to 3x with the
    seed of the floor alone. The floor is the median of the draws (the mean of 10 still
    ranged 0.24-0.42 over 5 seeds, the median 0.23-0.38); ``sd`` (0 for one draw) is the
    spread of one draw, about how much a sample set's FD moves with its draw alone."""
    _check_images("test", test)
    if not draws:
        raise UserError("real_floor needs at least one draw of real training images")
    reference = feature_stats(evaluator.features(test))
    values = []
    for images in draws:
        _check_images("train draw", images)
        values.append(frechet_from_stats(*feature_stats(evaluator.features(images)), *reference))
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return RealFloor(median=statistics.median(values), sd=spread, draws=len(values))
