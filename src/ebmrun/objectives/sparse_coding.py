"""Dictionary learning for sparse coding: alternate inference and a dictionary step.

    z  = argmin_z ½‖y − Wz‖² + λ‖z‖₁       (ISTA or FISTA, ``iters`` iterations, no grad)
    W ← W − η ∇_W ½‖y − Wz‖²               (codes fixed; Adam by default)
    W ← W / ‖columns‖                       (unit-norm atoms, after every update)

The renormalisation must follow every optimizer step, so ``training_step`` is a generator:
it yields the loss, the runner steps W, then the atoms are renormalised. Sparse coding reconstructs, it does not sample:
``generate`` returns reconstructions of the fixed examples the model keeps (the first
training items seen), and ``energy(x)`` is min_z E(x, z) approximated by FISTA.
"""

from __future__ import annotations

from collections.abc import Generator

import torch
from torch import Tensor, nn

from ebmrun.models.sparse_coding import SparseCoding, atom_images
from ebmrun.models.sparse_inference import SOLVERS, run
from ebmrun.objectives.base import DataInfo, EvalReport, Objective, OptimSettings, make_optimizer
from ebmrun.objectives.code_error import CODE_ERROR_METRICS, code_error_report
from ebmrun.objectives.common import interleave_rows
from ebmrun.samplers.base import SampleResult, Sampler


def check_solver(name: str) -> str:
    if name not in SOLVERS:
        raise ValueError(f"unknown inference {name!r} (choose from: {', '.join(SOLVERS)})")
    return name


@torch.no_grad()
def infer(coder: SparseCoding, y: Tensor, solver: str, iters: int,
          lipschitz: float | None = None) -> Tensor:
    """Codes ``(B, m)`` of signal rows ``y`` ``(B, n)`` after ``iters`` solver iterations."""
    lipschitz = coder.lipschitz() if lipschitz is None else lipschitz
    return run(SOLVERS[solver](y, coder.weight, coder.lam, lipschitz), iters)


@torch.no_grad()
def init_atoms_from_data(coder: SparseCoding, y: Tensor, generator: torch.Generator) -> None:
    """Set the atoms to signal rows of ``y`` ``(B, n)`` drawn in proportion to their norm
    (blank patches are never picked) plus a little noise, then normalise.

    Random Gaussian atoms are far from every digit: with a large λ many of them are never
    used, get no gradient and stay dead. Noise keeps atoms drawn from the same row apart
    (identical atoms would get identical codes and updates forever).
    """
    weights = y.norm(dim=1) + 1e-12
    rows = torch.multinomial(weights, coder.n_atoms, replacement=True, generator=generator)
    atoms = y[rows] / weights[rows, None]
    noise = torch.randn(atoms.shape, generator=generator, device=y.device, dtype=y.dtype)
    coder.weight.copy_((atoms + 0.05 * noise / atoms.shape[1] ** 0.5).T)
    coder.normalise_()


def dictionary_update(coder: SparseCoding, y: Tensor, solver: str, iters: int,
                      group: str = "loss"
                      ) -> Generator[tuple[str, Tensor], None, tuple[dict[str, Tensor], Tensor]]:
    """One dictionary-learning update on signal rows ``y`` ``(B, n)``: yields ``(group,
    loss)`` for the runner's step on W, renormalises the atoms after it, and returns the
    scalars to log (energy etc. *before* the update) and the codes ``(B, m)``."""
    lipschitz = coder.lipschitz()
    z = infer(coder, y, solver, iters, lipschitz)
    sq_err = 0.5 * (y - coder.decode(z)).pow(2).sum(1)  # grad flows to W only
    yield group, sq_err.mean()
    coder.normalise_()  # after every optimizer step: unit-norm atoms
    sq_err = sq_err.detach()
    energy = sq_err + coder.lam * z.abs().sum(1)
    stats = {"loss": energy.mean(), "energy": energy.mean(), "recon_error": sq_err.mean(),
             "recon_mse": 2 * sq_err.mean() / y.shape[1],
             "nonzeros": (z != 0).sum(1).float().mean(),
             "atoms_used": (z != 0).any(0).float().mean(),
             "lipschitz": torch.tensor(lipschitz)}
    return stats, z


def training_signals(coder: SparseCoding, x: Tensor, patches_per_image: int,
                     generator: torch.Generator) -> Tensor:
    """Rows to learn from: whole items, or random patches of each image."""
    if coder.patch_size is None:
        return coder.signals(x)
    return coder.random_patches(x, patches_per_image, generator)


class SparseCodingObjective(Objective):
    """Dictionary learning with ISTA/FISTA inference (see the module docstring).

    Args:
        model: a :class:`SparseCoding`.
        sampler: unused (the runner injects one into every objective).
        inference: ``fista`` | ``ista`` (training and ``generate``; ``energy`` uses FISTA).
        iters: inference iterations per batch (and for ``generate`` / ``energy``).
        lr / betas: the dictionary's optimizer settings (``null``: ``optim.lr`` / ``betas``).
        init_from_data: start the atoms from the first batch's signals (else: Gaussian).
        patches_per_image: random patches per image per step (with ``model.net.patch_size``).
        eval_iters: ``task=eval``: ISTA/FISTA curves for 1 … eval_iters iterations.
        optimal_iters: FISTA iterations for the reference optimal codes z*.
    """

    train_metrics = ("loss", "atoms_used", "energy", "lipschitz", "nonzeros", "recon_error",
                     "recon_mse")
    eval_metrics = CODE_ERROR_METRICS

    generates_new_samples = False
    uses_sampler = False

    def __init__(self, model: nn.Module, sampler: Sampler, data: DataInfo,
                 generator: torch.Generator, inference: str = "fista", iters: int = 100,
                 lr: float | None = 1e-3, betas: list[float] | None = None,
                 init_from_data: bool = True, patches_per_image: int = 16,
                 eval_iters: int = 300, optimal_iters: int = 1000) -> None:
        super().__init__(model, data, generator)
        if not isinstance(model, SparseCoding):
            raise ValueError("the sparse_coding objective needs model.net to be "
                             "ebmrun.models.sparse_coding.SparseCoding")
        if min(iters, patches_per_image, eval_iters, optimal_iters) < 1:
            raise ValueError("iters, patches_per_image, eval_iters and optimal_iters must be >= 1")
        self.solver = check_solver(inference)
        self.iters, self.patches_per_image = int(iters), int(patches_per_image)
        self.lr, self.betas, self.init_from_data = lr, betas, bool(init_from_data)
        self.eval_iters, self.optimal_iters = int(eval_iters), int(optimal_iters)
        self._last_codes: Tensor | None = None

    def configure_optimizers(self, settings: OptimSettings) -> list[torch.optim.Optimizer]:
        return [make_optimizer([self.model.weight], settings, self.lr, self.betas)]

    def training_step(self, x: Tensor) -> Generator[tuple[str, Tensor], None, dict[str, Tensor]]:
        y = training_signals(self.model, x, self.patches_per_image, self.generator)
        if int(self.model.n_stored) == 0 and self.init_from_data:  # the very first step
            init_atoms_from_data(self.model, y, self.generator)
        self.model.remember(x)
        stats, self._last_codes = yield from dictionary_update(self.model, y, self.solver,
                                                               self.iters)
        return stats

    def reconstruct(self, x: Tensor, iters: int, snapshot_every: int = 0
                    ) -> tuple[Tensor, list[Tensor], Tensor]:
        """Items ``x`` → (reconstructions, snapshots every ``snapshot_every`` iterations
        (first: ``x`` itself), final codes ``(B·P, m)``); clamped to the data range."""
        y = self.model.signals(x)
        chain = [x] if snapshot_every > 0 else []
        solver = SOLVERS[self.solver](y, self.model.weight, self.model.lam,
                                      self.model.lipschitz(warm=False))
        for k, z in enumerate(solver, start=1):
            if snapshot_every > 0 and (k % snapshot_every == 0 or k == iters):
                chain.append(self._items(z))
            if k >= iters:
                break
        return self._items(z), chain, z

    def _items(self, z: Tensor) -> Tensor:
        return self.model.items(self.model.decode(z)).clamp(*self.data.value_range)

    @torch.no_grad()
    def generate(self, n: int, *, steps: int | None = None, generator: torch.Generator,
                 snapshot_every: int = 0) -> SampleResult:
        """Reconstructions ``(n, *item)`` of the stored examples after ``steps`` (default
        ``iters``) inference iterations — not new samples; the chain shows the input, then
        the reconstruction every ``snapshot_every`` iterations."""
        x = self.model.example_batch(n)
        recon, chain, z = self.reconstruct(x, max(steps or self.iters, 1), snapshot_every)
        return SampleResult(x=recon, chain=chain,
                            stats={"nonzeros": float((z != 0).sum(1).float().mean())})

    def energy(self, x: Tensor) -> Tensor:
        """min_z E(x, z) ``(B,)`` by ``iters`` FISTA iterations (see
        :meth:`SparseCoding.energy`)."""
        return self.model.energy(x, self.iters)

    def evaluate(self, test: Tensor, settings, generator: torch.Generator) -> EvalReport:
        """ISTA/FISTA code error and energy gap vs iterations on ``test`` (tables, plot)."""
        return code_error_report(self.model, test, batch_size=settings.batch_size,
                                 iters=self.eval_iters, optimal_iters=self.optimal_iters)

    @torch.no_grad()
    def visuals(self, generator: torch.Generator) -> dict[str, Tensor]:
        """The atoms (each min–max scaled) and input/reconstruction rows of the examples."""
        if not self.data.is_image:
            return {}
        out = {"dictionary_atoms": atom_images(self.model.weight, self.model.signal_shape,
                                               self.data.value_range)}
        if int(self.model.n_stored) > 0:
            x = self.model.example_batch(min(32, int(self.model.n_stored)))
            out["reconstructions"] = interleave_rows(x, self.reconstruct(x, self.iters)[0])
        return out

    def histograms(self) -> dict[str, Tensor]:
        if self._last_codes is None:
            return {}
        z = self._last_codes
        return {"codes/nonzero_values": z[z != 0], "atoms/usage": (z != 0).float().mean(0)}
