"""Training LISTA encoders to regress optimal sparse codes (Gregor & LeCun 2010).

    loss = Σ_T mean_i ‖f_T(yᵢ) − zᵢ*‖²,   zᵢ* = FISTA(yᵢ; W, λ) with ``target_iters`` iterations

summed over the networks of every depth T in ``model.net.depths`` (they share nothing, so
each is trained on its own loss; the FISTA targets are computed once per batch for all).
The dictionary is frozen while LISTA trains. It comes from a sparse-coding checkpoint
(``dictionary=<run dir or last.pt>``, loaded when training starts), or, with
``dictionary=null``, is learned in the same run during the first ``dictionary_steps``
steps (exactly as ``model=sparse_coding`` does); the encoders are then initialised from
it as ISTA (see :mod:`ebmrun.models.lista`) and trained for the remaining steps.
"""

from __future__ import annotations

from collections.abc import Generator

import torch
from torch import Tensor, nn

from ebmrun.checkpoint import load_checkpoint
from ebmrun.errors import UserError
from ebmrun.models.lista import LISTA
from ebmrun.models.sparse_coding import atom_images
from ebmrun.objectives.base import DataInfo, EvalReport, Objective, OptimSettings, make_optimizer
from ebmrun.objectives.code_error import CODE_ERROR_METRICS, code_error_report
from ebmrun.objectives.common import interleave_rows, random_shift
from ebmrun.objectives.sparse_coding import (check_solver, dictionary_update, infer,
                                             init_atoms_from_data, training_signals)
from ebmrun.samplers.base import SampleResult, Sampler


class LISTAObjective(Objective):
    """Regress FISTA codes with LISTA networks (see the module docstring).

    Args:
        model: a :class:`LISTA`.
        sampler: unused (the runner injects one into every objective).
        dictionary: run dir or ``last.pt`` of a ``model=sparse_coding`` run; ``null``:
            learn the dictionary first in this run.
        dictionary_steps: steps of dictionary learning when ``dictionary`` is null.
        inference / dictionary_iters / dictionary_lr: the dictionary phase's inference and
            step size (``dictionary_lr: null``: ``optim.lr``).
        target_iters: FISTA iterations for the regression targets z*.
        lr / betas: LISTA's optimizer settings (``null``: ``optim.lr`` / ``optim.betas``).
        shift: translate each training image by a random offset of up to ``shift`` pixels
            (filled with the data's low value) before its targets are computed. New
            (y, z*) pairs for free: the untied 5-layer network otherwise fits the 60,000
            digits (train error 0.02, test 0.035); with 1-pixel shifts both meet at ~0.03.
        patches_per_image: random patches per image (with ``model.net.patch_size``).
        eval_iters / optimal_iters: ``task=eval`` curves, as for ``model=sparse_coding``.
    """

    train_metrics = ("loss", "dictionary/*", "code_error_T*", "target_nonzeros")
    eval_metrics = CODE_ERROR_METRICS

    generates_new_samples = False
    uses_sampler = False
    # The networks, then the dictionary while it is learned in this run. Their schedules
    # are config (conf/model/lista.yaml: warm-up + cosine for the networks).
    groups = ("lista", "dictionary")

    def __init__(self, model: nn.Module, sampler: Sampler, data: DataInfo,
                 generator: torch.Generator, dictionary: str | None = None,
                 dictionary_steps: int = 1000, inference: str = "fista",
                 dictionary_iters: int = 100, dictionary_lr: float | None = 1e-3,
                 target_iters: int = 100, lr: float | None = 0.1,
                 betas: list[float] | None = None, shift: int = 0, patches_per_image: int = 16, eval_iters: int = 300,
                 optimal_iters: int = 1000) -> None:
        super().__init__(model, data, generator)
        if not isinstance(model, LISTA):
            raise ValueError("the lista objective needs model.net to be "
                             "ebmrun.models.lista.LISTA")
        if min(dictionary_iters, target_iters, patches_per_image, eval_iters,
               optimal_iters) < 1 or dictionary_steps < 0 or shift < 0:
            raise ValueError("the iteration counts and patches_per_image must be >= 1, "
                             "dictionary_steps and shift >= 0")
        if shift and not data.is_image:
            raise ValueError("shift needs images (fix: model.objective.shift=0)")
        self.shift = int(shift)
        self.dictionary = dictionary
        self.dictionary_steps = int(dictionary_steps) if dictionary is None else 0
        if dictionary is not None:  # a frozen dictionary gets no optimizer (nor its state)
            self.groups = ("lista",)
        self.solver = check_solver(inference)
        self.dictionary_iters, self.target_iters = int(dictionary_iters), int(target_iters)
        self.lr, self.dictionary_lr, self.betas = lr, dictionary_lr, betas
        self.patches_per_image = int(patches_per_image)
        self.eval_iters, self.optimal_iters = int(eval_iters), int(optimal_iters)
        self.steps_done = 0
        self._lipschitz: float | None = None  # of the frozen dictionary, once LISTA trains
        self.name = "lista" if model.nets[0].tied else "lista_untied"

    def configure_optimizers(self, settings: OptimSettings) -> list[torch.optim.Optimizer]:
        """``[LISTA optimizer]`` plus the dictionary's when it is learned in this run;
        loads ``dictionary`` first."""
        if self.dictionary is not None:
            self._load_dictionary(self.dictionary)
            self.model.init_from_dictionary()

        optimizers = [make_optimizer(self.model.lista_parameters(), settings, self.lr,
                                     self.betas)]
        if "dictionary" in self.groups:
            optimizers.append(make_optimizer([self.model.coder.weight], settings,
                                             self.dictionary_lr, self.betas))
        return optimizers

    @torch.no_grad()
    def _load_dictionary(self, path: str) -> None:
        ckpt = load_checkpoint(path)
        shape = tuple(ckpt.get("data_info", {}).get("item_shape", ()))
        if shape != tuple(self.data.item_shape):
            raise UserError(f"the dictionary {ckpt['path']} was learned on items of shape "
                            f"{list(shape)}, this run's data has {list(self.data.item_shape)} "
                            f"(fix: train LISTA on the dictionary's dataset)")
        state = ckpt["model"]
        prefix = "coder." if any(k.startswith("coder.") for k in state) else ""
        coder_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        try:  # W, λ and the stored examples: model.net.lam does not apply
            self.model.coder.load_state_dict(coder_state)
        except RuntimeError as exc:
            detail = str(exc).strip().splitlines()[-1].strip()[:160]
            raise UserError(f"the dictionary {ckpt['path']} does not fit this LISTA ({detail}) "
                            f"(fix: the same model.net.n_atoms, patch_size and n_examples as "
                            f"the sparse_coding run)") from None

    def training_step(self, x: Tensor) -> Generator[tuple[str, Tensor], None, dict[str, Tensor]]:
        coder = self.model.coder
        if self.dictionary is None and int(coder.n_stored) == 0:  # the very first step
            init_atoms_from_data(coder, training_signals(coder, x, self.patches_per_image,
                                                         self.generator), self.generator)
        coder.remember(x)
        self.steps_done += 1
        if self.steps_done <= self.dictionary_steps:
            return (yield from self._dictionary_step(x))
        return (yield from self._lista_step(x))

    def _dictionary_step(self, x: Tensor
                         ) -> Generator[tuple[str, Tensor], None, dict[str, Tensor]]:
        coder = self.model.coder
        y = training_signals(coder, x, self.patches_per_image, self.generator)
        stats, _ = yield from dictionary_update(coder, y, self.solver, self.dictionary_iters,
                                                group="dictionary")
        return {"loss": stats["loss"],
                **{f"dictionary/{k}": v for k, v in stats.items() if k != "loss"}}

    def _lista_step(self, x: Tensor) -> Generator[tuple[str, Tensor], None, dict[str, Tensor]]:
        """Every network's regression loss towards the batch's FISTA codes (one group)."""
        coder = self.model.coder
        if not bool(self.model.initialised):  # the dictionary phase just ended
            self._lipschitz = self.model.init_from_dictionary()
        if self._lipschitz is None:
            self._lipschitz = coder.lipschitz(warm=False)
        if self.shift:
            x = random_shift(x, self.shift, self.generator, self.data.value_range[0])
        y = training_signals(coder, x, self.patches_per_image, self.generator)
        z_star = infer(coder, y, "fista", self.target_iters, self._lipschitz)
        norm2 = z_star.pow(2).sum().clamp_min(1e-12)
        out: dict[str, Tensor] = {}
        loss = z_star.new_zeros(())
        for net in self.model.nets:
            sq = (net(y) - z_star).pow(2).sum(1)
            loss = loss + sq.mean()
            out[f"code_error_T{net.depth}"] = sq.detach().sum() / norm2
        yield "lista", loss
        out["loss"] = loss.detach()
        out["target_nonzeros"] = (z_star != 0).sum(1).float().mean()
        return out

    def _items(self, z: Tensor) -> Tensor:
        coder = self.model.coder
        return coder.items(coder.decode(z)).clamp(*self.data.value_range)

    @torch.no_grad()
    def generate(self, n: int, *, steps: int | None = None, generator: torch.Generator,
                 snapshot_every: int = 0) -> SampleResult:
        """Reconstructions ``(n, *item)`` of the stored examples by the deepest network
        (``steps`` is ignored: the depth is fixed); with ``snapshot_every`` > 0 the chain
        shows the input, then the decoded code after each layer."""
        x = self.model.coder.example_batch(n)
        layers = self.model.nets[-1].layers(self.model.coder.signals(x))
        chain = [x] + [self._items(z) for z in layers] if snapshot_every > 0 else []
        return SampleResult(x=self._items(layers[-1]), chain=chain,
                            stats={"nonzeros": float((layers[-1] != 0).sum(1).float().mean())})

    def energy(self, x: Tensor) -> Tensor:
        """E(x, z) ``(B,)`` at the deepest network's code (see :meth:`LISTA.energy`)."""
        return self.model.energy(x)

    def evaluate(self, test: Tensor, settings, generator: torch.Generator) -> EvalReport:
        """ISTA/FISTA curves plus every LISTA depth, and FISTA iterations to match each."""
        encoders = {self.name: [(net.depth, net) for net in self.model.nets]}
        return code_error_report(self.model.coder, test, batch_size=settings.batch_size,
                                 iters=self.eval_iters, optimal_iters=self.optimal_iters,
                                 encoders=encoders)

    @torch.no_grad()
    def visuals(self, generator: torch.Generator) -> dict[str, Tensor]:
        coder = self.model.coder
        if not self.data.is_image:
            return {}
        out = {"dictionary_atoms": atom_images(coder.weight, coder.signal_shape,
                                               self.data.value_range)}
        if int(coder.n_stored) > 0:
            x = coder.example_batch(min(32, int(coder.n_stored)))
            out["reconstructions"] = interleave_rows(x, self.generate(
                len(x), generator=generator).x)
        return out

    def state_dict(self) -> dict:
        return {"steps_done": self.steps_done}

    def load_state_dict(self, state: dict) -> None:
        self.steps_done = int(state["steps_done"])
