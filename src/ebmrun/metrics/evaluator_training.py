"""Training an :class:`~ebmrun.metrics.evaluator.Evaluator` (deterministic for a seed).

Used by ``scripts/train_evaluator.py`` to make the weights shipped with the package, and by
:func:`~ebmrun.metrics.evaluator.get_evaluator` for a dataset that has a recipe but no
shipped weights (trained once, then cached).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from ebmrun.errors import UserError
from ebmrun.objectives.common import random_shift as shift_images


@dataclass(frozen=True)
class EvaluatorRecipe:
    """How to train the evaluator for one dataset."""

    loader_name: str  # name passed to ebmrun.data.idx.load_idx_dataset
    epochs: int
    max_shift: int  # random translation augmentation, in pixels
    target_accuracy: float  # expected test accuracy; a warning is printed below it
    minutes: int  # rough training time on one CPU thread, for the message before training
    lr: float = 3e-3  # peak of the one-cycle schedule
    batch_size: int = 128


# Fashion-MNIST gets more epochs and smaller shifts: its items are tightly centred and the
# task is harder, so heavy translation costs accuracy within a short budget.
RECIPES: dict[str, EvaluatorRecipe] = {
    "mnist": EvaluatorRecipe("mnist", epochs=3, max_shift=2, target_accuracy=0.985, minutes=4),
    "fashion_mnist": EvaluatorRecipe("fashion_mnist", epochs=4, max_shift=1,
                                     target_accuracy=0.90, minutes=5),
}


def recipe_for(dataset: str) -> EvaluatorRecipe:
    """The recipe of ``dataset``; UserError listing the known ones otherwise."""
    try:
        return RECIPES[dataset]
    except KeyError:
        raise UserError(
            f"no evaluator for dataset {dataset!r}; use one of {sorted(RECIPES)}") from None


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image of ``x`` ``(N, C, H, W)`` by its own integer offset in
    ``[-max_shift, max_shift]`` on both axes, filling with the background value -1
    (:func:`ebmrun.objectives.common.random_shift`, the one implementation)."""
    return x if max_shift <= 0 else shift_images(x, max_shift, generator, fill=-1.0)


def train_evaluator(dataset: str, root: str | None, seed: int = 0):
    """Train an evaluator on the training split of ``dataset``; bit-identical for the same
    ``seed``, torch build and thread count.

    Adam with a one-cycle learning rate and random-shift augmentation. The test accuracy is
    stored on the returned (eval-mode) model and printed.
    """
    from ebmrun.data.idx import load_idx_dataset  # deferred: only needed when training
    from ebmrun.metrics.evaluator import Evaluator  # the model lives with its loader

    recipe = recipe_for(dataset)
    data = load_idx_dataset(name=recipe.loader_name, root=root)
    if data.train_labels is None or data.test_labels is None:
        raise UserError(f"dataset {dataset!r} has no labels; an evaluator needs a labelled set")
    generator = torch.Generator().manual_seed(seed)
    # fork_rng keeps the caller's global RNG untouched; the initialisation draws from it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Evaluator()
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    n = data.train.shape[0]
    steps_per_epoch = n // recipe.batch_size
    total = recipe.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total)
    model.train()
    start = time.time()
    with tqdm(total=total, desc=f"evaluator[{dataset}]", unit="step") as bar:
        for epoch in range(recipe.epochs):
            perm = torch.randperm(n, generator=generator)
            for i in range(steps_per_epoch):
                idx = perm[i * recipe.batch_size:(i + 1) * recipe.batch_size]
                x = random_shift(data.to_float(data.train[idx]), recipe.max_shift, generator)
                loss = F.cross_entropy(model(x), data.train_labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
                if i % 50 == 0:
                    bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
    model.eval()
    model.dataset = dataset
    model.test_accuracy = model.accuracy(data.to_float(data.test), data.test_labels)
    elapsed = time.time() - start
    print(f"evaluator[{dataset}]: test accuracy {model.test_accuracy:.4f} "
          f"after {recipe.epochs} epochs in {elapsed:.0f} s")
    if model.test_accuracy < recipe.target_accuracy:
        print(f"warning: evaluator[{dataset}] is below its target accuracy "
              f"{recipe.target_accuracy:.3f}; its features may be less reliable")
    return model
