"""Calibration of a classifier's confidence: expected calibration error (Guo et al. 2017).

Predictions are put in ``bins`` equal-width bins of their confidence (max softmax
probability) over (0, 1]; ECE is the bin-size-weighted mean of |accuracy − mean
confidence| over the bins. 0 = the confidence is the probability of being right.
"""

from __future__ import annotations

import torch
from torch import Tensor


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = 15) -> float:
    """ECE of class probabilities ``probs`` ``(N, K)`` against ``labels`` ``(N,)``.

    Bin b holds the confidences in (b/bins, (b+1)/bins]; empty bins count zero.
    """
    if probs.dim() != 2 or labels.shape != probs.shape[:1] or bins < 1:
        raise ValueError(f"expected probs (N, K), labels (N,) and bins >= 1, got "
                         f"{tuple(probs.shape)}, {tuple(labels.shape)}, {bins}")
    confidence, predicted = probs.double().max(dim=1)
    correct = (predicted == labels.to(predicted.device)).double()
    # ceil(c * bins) - 1: the bin whose upper edge is the first >= c (c = 1 -> last bin).
    which = (confidence * bins).ceil().long().clamp_(1, bins) - 1
    n = torch.bincount(which, minlength=bins).double()
    sum_conf = torch.bincount(which, weights=confidence, minlength=bins)
    sum_correct = torch.bincount(which, weights=correct, minlength=bins)
    gap = (sum_correct - sum_conf).abs()  # n_b · |acc_b − conf_b|
    return float(gap.sum() / max(len(labels), 1))
