"""How fast inference approaches the optimal sparse code: ISTA, FISTA and learned encoders.

On held-out items, for a dictionary W and λ:

- z* = FISTA run for ``optimal_iters`` iterations (the reference optimum; the report
  includes ``sparse/optimal_check``, the code error of FISTA at half as many iterations,
  which bounds how far z* itself still is from the true optimum);
- code error of an estimate z: Σᵢ‖zᵢ − zᵢ*‖² / Σᵢ‖zᵢ*‖² over all held-out signals (a ratio
  of sums, so items with tiny codes cannot dominate);
- energy gap: (Ē(z) − Ē(z*)) / Ē(z*), Ē the mean of E(y, z) = ½‖y − Wz‖² + λ‖z‖₁.

Both are computed for ISTA and FISTA after every iteration 1 … ``iters`` and for each
learned encoder (LISTA with T layers). For each encoder, ``fista_iters_to_match`` is the
smallest number of FISTA iterations whose code error is at most the encoder's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ebmrun.logging.figures import Series, line_plot
from ebmrun.models.sparse_coding import SparseCoding
from ebmrun.models.sparse_inference import SOLVERS, fista_iterates
from ebmrun.objectives.base import EvalReport

# Iteration counts that also get a flat metric (the table holds every iteration).
REPORTED = (1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1000, 2000)
# The names code_error_report gives its metrics (patterns): sparse/*, <solver>/code_error_<k>,
# and per encoder <name>/code_error_T<depth>, energy_gap_T<depth>, <solver>_iters_to_match_T<depth>.
CODE_ERROR_METRICS = ("sparse/*", *(f"{name}/code_error_*" for name in SOLVERS), "*/code_error_T*",
                      "*/energy_gap_T*", "*/*_iters_to_match_T*")
# A named family of learned encoders: [(layers, signal rows (B, n) -> codes (B, m)), ...].
Encoders = dict[str, Sequence[tuple[int, Callable[[Tensor], Tensor]]]]


class _EnergyOf:
    """E(y, z) per row in float64 via the Gram form ½‖y‖² − zᵀWᵀy + ½zᵀGz + λ‖z‖₁, which
    costs one ``(B, m) × (m, m)`` product (like an iteration) instead of two with W."""

    def __init__(self, y: Tensor, weight: Tensor, lam: float) -> None:
        w = weight.double()
        self.half_y2 = 0.5 * y.double().pow(2).sum(1)
        self.c = y.double() @ w
        self.gram = w.T @ w
        self.lam = lam

    def __call__(self, z: Tensor) -> Tensor:
        z = z.double()
        return (self.half_y2 - (z * self.c).sum(1) + 0.5 * (z * (z @ self.gram)).sum(1)
                + self.lam * z.abs().sum(1))


@torch.no_grad()
def code_error_report(coder: SparseCoding, test: Tensor, *, batch_size: int, iters: int,
                      optimal_iters: int, encoders: Encoders | None = None) -> EvalReport:
    """The curves, flat metrics, tables and figures (see the module docstring) for items
    ``test`` ``(N, *item_shape)``, processed ``batch_size`` items at a time."""
    encoders = encoders or {}
    weight, lam = coder.weight.detach(), float(coder.lam)
    lipschitz = coder.lipschitz(warm=False)
    f64 = {"dtype": torch.float64}
    err = {name: torch.zeros(iters, **f64) for name in SOLVERS}
    energy = {name: torch.zeros(iters, **f64) for name in SOLVERS}
    enc_err = {name: torch.zeros(len(layers), **f64) for name, layers in encoders.items()}
    enc_energy = {name: torch.zeros(len(layers), **f64) for name, layers in encoders.items()}
    norm2 = e_star = half_err = nonzeros = sq_err = 0.0
    rows_total = 0
    for chunk in test.split(batch_size):
        y = coder.signals(chunk)
        energy_of = _EnergyOf(y, weight, lam)
        for k, z in enumerate(fista_iterates(y, weight, lam, lipschitz), start=1):
            if k == max(optimal_iters // 2, 1):
                half = z
            if k == optimal_iters:
                z_star = z
                break
        norm2 += float(z_star.double().pow(2).sum())
        e_star += float(energy_of(z_star).sum())
        half_err += float((half - z_star).double().pow(2).sum())
        nonzeros += float((z_star != 0).sum())
        sq_err += float((y - coder.decode(z_star)).double().pow(2).sum())
        rows_total += y.shape[0]
        for name, solver in SOLVERS.items():
            for k, z in enumerate(solver(y, weight, lam, lipschitz), start=1):
                err[name][k - 1] += (z - z_star).double().pow(2).sum().cpu()
                energy[name][k - 1] += energy_of(z).sum().cpu()
                if k == iters:
                    break
        for name, layers in encoders.items():
            for i, (_, encode) in enumerate(layers):
                z = encode(y)
                enc_err[name][i] += (z - z_star).double().pow(2).sum().cpu()
                enc_energy[name][i] += energy_of(z).sum().cpu()
    norm2 = max(norm2, 1e-30)
    mean_e_star = e_star / rows_total

    def scores(sum_err: Tensor, sum_energy: Tensor) -> tuple[list[float], ...]:
        """(code errors, mean energies, energy gaps) from the accumulated sums."""
        mean_energy = sum_energy / rows_total
        return ((sum_err / norm2).tolist(), mean_energy.tolist(),
                ((mean_energy - mean_e_star) / abs(mean_e_star)).tolist())

    report = EvalReport(metrics={
        "sparse/lipschitz": lipschitz, "sparse/energy_optimal": mean_e_star,
        "sparse/nonzeros": nonzeros / rows_total, "sparse/optimal_check": half_err / norm2,
        "sparse/recon_mse": sq_err / (rows_total * coder.signal_dim)})
    table: list[dict] = []
    curves: dict[str, list[float]] = {}
    gap_series: list[Series] = []
    for name in SOLVERS:
        errors, energies, gaps = scores(err[name], energy[name])
        curves[name] = errors
        table += [{"method": name, "iterations": k, "code_error": e, "energy": en,
                   "energy_gap": g} for k, (e, en, g) in enumerate(zip(errors, energies, gaps), 1)]
        report.metrics.update({f"{name}/code_error_{k}": errors[k - 1] for k in REPORTED
                               if k <= iters})
        gap_series.append(Series(name.upper(), range(1, iters + 1), gaps))
    error_series = [Series(name.upper(), range(1, iters + 1), curves[name]) for name in SOLVERS]
    matches: list[dict] = []
    for name, layers in encoders.items():
        errors, energies, gaps = scores(enc_err[name], enc_energy[name])
        depths = [depth for depth, _ in layers]
        for depth, e, en, g in zip(depths, errors, energies, gaps, strict=True):
            table.append({"method": name, "iterations": depth, "code_error": e, "energy": en,
                          "energy_gap": g})
            report.metrics[f"{name}/code_error_T{depth}"] = e
            report.metrics[f"{name}/energy_gap_T{depth}"] = g
            row = {"method": name, "layers": depth, "code_error": e}
            for solver, curve in curves.items():
                k = next((i for i, c in enumerate(curve, 1) if c <= e), None)
                row[f"{solver}_iters_to_match"] = k  # None: not within `iters`
                if k is not None:
                    report.metrics[f"{name}/{solver}_iters_to_match_T{depth}"] = float(k)
            matches.append(row)
        label = name.upper().replace("_", " ")
        error_series.append(Series(label, depths, errors, markers=True))
        gap_series.append(Series(label, depths, gaps, markers=True))
    report.tables["code_error"] = table
    if matches:
        report.tables["lista_vs_fista"] = matches
    axis = "iterations (ISTA, FISTA) / layers (LISTA)" if encoders else "iterations"
    report.figures["code_error"] = line_plot(
        error_series, log_x=True, log_y=True, x_label=axis,
        y_label="code error  sum|z-z*|^2 / sum|z*|^2  (held-out)")
    report.figures["energy_gap"] = line_plot(
        gap_series, log_x=True, log_y=True, x_label=axis,
        y_label="energy gap  (E(z) - E(z*)) / E(z*)  (held-out)")
    return report
