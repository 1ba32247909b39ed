"""Optional Inception FID through torchmetrics (``eval.inception_fid=true``).

Never a hard requirement: torchmetrics is not a dependency and its Inception weights are
downloaded on first use, which is impossible offline. Where either is missing the user gets
one line saying so; the offline evaluator's ``samples/frechet`` is always available.
"""

from __future__ import annotations

from torch import Tensor

from ebmrun.errors import UserError


def inception_fid(samples: Tensor, reference: Tensor) -> float:
    """FID between ``samples`` and ``reference`` ``(N, C, H, W)`` images in [-1, 1]."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError:
        raise UserError("eval.inception_fid=true needs torchmetrics with its image extra "
                        "(fix: pip install 'torchmetrics[image]', or eval.inception_fid=false "
                        "and read samples/frechet)") from None
    try:
        fid = FrechetInceptionDistance(feature=2048, normalize=True)
    except Exception as exc:  # weights not cached and no network
        raise UserError(f"Inception weights for FID are not available ({type(exc).__name__}) "
                        f"(fix: run once with internet so torchmetrics caches them, or "
                        f"eval.inception_fid=false)") from None

    def rgb01(x: Tensor) -> Tensor:
        x = (x.float().clamp(-1, 1) + 1) / 2
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    fid.update(rgb01(reference), real=True)
    fid.update(rgb01(samples), real=False)
    return float(fid.compute())
