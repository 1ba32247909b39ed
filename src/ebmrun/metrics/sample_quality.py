"""Offline sample-quality metrics for MNIST-like samples, measured with an :class:`Evaluator`.

``frechet`` says how far the sample distribution is from the real one in the evaluator's
feature space; it has a positive floor even for real images (finite-sample bias), so always
print it next to the real-vs-real floor of the same number of images
(:mod:`ebmrun.metrics.real_floor`). The class statistics catch mode collapse (few classes
present, high KL to uniform) and blurry or off-manifold samples (low classifier confidence).
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
from ebmrun.metrics.frechet import feature_stats, frechet_from_stats

# A class counts as "present" when it receives at least this fraction of predictions
# (uniform would be 10%); 2% ignores stray misclassifications of a collapsed sampler.
PRESENT_FRACTION = 0.02
# KL of a one-class histogram: the worst class_kl_uniform, for reading the numbers.
MAX_CLASS_KL = math.log(Evaluator.num_classes)


@dataclass(frozen=True)
class FrechetDraws:
    """The FD of ``draws`` image sets of one size: their ``median`` and ``sd``, the standard
    deviation of one draw's FD (0 for one draw)."""

    median: float
    sd: float
    draws: int

    @classmethod
    def of(cls, values: Sequence[float]) -> FrechetDraws:
        """The median and spread of one FD per draw."""
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(median=statistics.median(values), sd=spread, draws=len(values))


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


def sample_quality(evaluator: Evaluator, samples: Tensor, reference: tuple[Tensor, Tensor],
                   draws: int = 1) -> dict:
    """Metrics of ``samples`` against real images.

    Args:
        evaluator: feature extractor / classifier (see :func:`get_evaluator`).
        samples: ``(draws * N, 1, 28, 28)`` float images in ``[-1, 1]``: ``draws`` sets of N.
        reference: the real images' feature statistics, :func:`reference_stats` of e.g. the
            test split (computed once: 10,000 images take ~8 s on one CPU thread).
        draws: how many sets of N ``samples`` holds. One set's FD is a noisy estimate on
            this evaluator (two draws of 1,000 samples of one EBGAN checkpoint scored 0.49
            and 0.85; real images vary as much, see :mod:`ebmrun.metrics.real_floor`), so
            with ``draws`` > 1 ``frechet`` is the median over the sets.

    Returns:
        dict with ``frechet``, ``classes_present``, ``class_kl_uniform``, ``mean_confidence``
        (these three over all samples) and ``n_samples`` (N); with ``draws`` > 1 also
        ``frechet_sd`` (the spread of one set's FD) and ``sample_draws``.
    """
    _check_images("samples", samples)
    if draws < 1 or len(samples) % draws:
        raise UserError(f"{len(samples)} samples do not split into {draws} equal draws; "
                        "pass draws * n samples")
    n = len(samples) // draws
    feats, logits = evaluator.features_and_logits(samples)
    fds = FrechetDraws.of([frechet_from_stats(*feature_stats(one), *reference)
                           for one in feats.split(n)])
    out: dict = {"frechet": fds.median}
    if draws > 1:
        out.update(frechet_sd=fds.sd, sample_draws=draws)
    out.update(class_stats(logits))
    out["n_samples"] = n
    return out


def reference_stats(evaluator: Evaluator, reference: Tensor) -> tuple[Tensor, Tensor]:
    """Feature mean ``(F,)`` and covariance ``(F, F)`` of ``reference`` ``(M, 1, 28, 28)``
    images in [-1, 1], computed once and passed to :func:`sample_quality` and
    :func:`ebmrun.metrics.real_floor.real_floor`."""
    _check_images("reference", reference)
    return feature_stats(evaluator.features(reference))
