"""RunLogger: everything a run shows in TensorBoard goes through here.

Events are written straight into the run dir, so ``tensorboard --logdir outputs`` lists
every run (and every job of a sweep) side by side under its path.

- Scalar names go through :func:`ebmrun.logging.tags.canonical` (one name per quantity in
  every family) and the custom-scalars layout (multi-line charts) follows the tags logged.
- HParams: each run writes its session (hparams + status) but no experiment summary, so
  TensorBoard derives the metric columns from the scalars of *all* runs under the logdir and
  fills each run's cells with the last value of its own scalars. Final metrics are therefore
  the last points of the training curves; :meth:`final_metrics` adds the ones that have no
  curve (e.g. ``perf/wall_time_s``) at the last step, never at step 0.

What the runner calls: ``start_session(run_hparams(cfg, sampler_used=...))`` once a run
starts; ``scalars(outputs, step, prefix="train/")`` / ``("eval/")``; ``histograms`` with
the objective's histograms; ``reference_lines`` for constants such as EBGAN's margin;
``final_metrics({"perf/wall_time_s": ..., "perf/images_per_s": ...}, step)`` at the end.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import custom_scalars
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from ebmrun.logging import tags as tag_scheme

HParamValue = float | int | str | bool


def image_grid(images: Tensor, value_range: tuple[float, float], nrow: int = 8) -> Tensor:
    """``(N, C, H, W)`` images in ``value_range`` -> one ``(3|1, H', W')`` grid in [0, 1]."""
    from torchvision.utils import make_grid  # here: torchvision is slow to import (outputs.py)

    low, high = value_range
    images = ((images.detach().float().cpu() - low) / (high - low)).clamp_(0, 1)
    return make_grid(images, nrow=nrow, padding=2, pad_value=0.5)


def hparam_value(value: Any) -> HParamValue:
    """A config value as TensorBoard takes it: numbers and bools as they are, the rest as
    text (lists ``[16, 32]``, ``None`` as ``null``, the way the YAML reads)."""
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Number):
        return float(value) if not isinstance(value, int) else value
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(hparam_value(v)) for v in value) + "]"
    return str(value)


class RunLogger:
    """Scalars, image grids, figures, histograms, text and hparams for one run.

    Args:
        log_dir: the run dir.
        purge_step: when resuming from step ``s``, events at steps >= ``s`` written by the
            interrupted process are discarded, so curves continue without duplicates.
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step,
                                    flush_secs=30)
        self.last_step: dict[str, int] = {}  # tag -> step of its last scalar
        self._layout: dict = {}
        self._layout_tags = 0  # how many tags the current layout was built from
        self._references: dict[str, float] = {}
        # Tags held back while constant (tags.QUIET_IF_CONSTANT): tag -> [(step, value)].
        self._held: dict[str, list[tuple[int, float]]] = {}

    # --- scalars -------------------------------------------------------------------------
    def scalars(self, values: Mapping[str, float | Tensor], step: int, prefix: str = "") -> None:
        """Log ``values`` at ``step`` under ``prefix`` + their canonical names; adds
        ``energy/gap`` when both energies are there, and the reference lines."""
        clean = {tag_scheme.canonical(k): float(v.detach()) if isinstance(v, Tensor)
                 else float(v) for k, v in values.items()}
        if prefix == "train/":
            clean = tag_scheme.with_gap({**self._references, **clean})
        for name, value in clean.items():
            tag = f"{prefix}{name}"
            if tag_scheme.quiet_if_constant(tag) and self._hold(tag, step, value):
                continue
            self.writer.add_scalar(tag, value, step)
            self.last_step[tag] = step
        self._update_layout(step)

    def _hold(self, tag: str, step: int, value: float) -> bool:
        """Keep back a constant-so-far value; on the first change write the held points and
        go on logging ``tag`` normally. Returns whether ``value`` was held."""
        held = self._held.get(tag)
        if held is None and tag in self.last_step:  # it changed before: log as usual
            return False
        if held is None or held[0][1] == value:
            self._held.setdefault(tag, []).append((step, value))
            return True
        for old_step, old_value in self._held.pop(tag):
            self.writer.add_scalar(tag, old_value, old_step)
        return False

    def reference_lines(self, values: Mapping[str, float]) -> None:
        """Constants drawn beside the training curves they bound (logged with every
        ``train/`` call), e.g. ``{"energy/margin": m}`` for EBGAN's hinge."""
        self._references = {tag_scheme.canonical(k): float(v) for k, v in values.items()}

    def _update_layout(self, step: int) -> None:
        """(Re)write the custom-scalars layout when a new chart applies. TensorBoard reads
        the layout's last point, so a later, larger layout replaces an earlier one."""
        if len(self.last_step) == self._layout_tags:  # no new tag, no new chart
            return
        self._layout_tags = len(self.last_step)
        layout = tag_scheme.layout(self.last_step)
        if layout != self._layout:
            self.writer.file_writer.add_summary(custom_scalars(layout), step)
            self._layout = layout

    # --- pictures, histograms, text -------------------------------------------------------
    def images(self, name: str, images: Tensor, step: int, value_range: tuple[float, float],
               nrow: int = 8) -> None:
        self.writer.add_image(name, image_grid(images, value_range, nrow), step)

    def image(self, name: str, image: Tensor, step: int) -> None:
        """One ``(C, H, W)`` picture in [0, 1] (e.g. from :mod:`ebmrun.logging.figures`)."""
        self.writer.add_image(name, image, step)

    def histogram(self, name: str, values: Tensor, step: int) -> None:
        values = values.detach().float().cpu()
        if values.numel() and torch.isfinite(values).all():
            self.writer.add_histogram(tag_scheme.canonical(name), values, step)

    def histograms(self, values: Mapping[str, Tensor], step: int) -> None:
        """Each histogram (canonical names), plus ``energy/data_vs_samples``: the two energy
        histograms overlaid on one axis, where their separation can be read."""
        canonical = {tag_scheme.canonical(k): v for k, v in values.items()}
        for name, tensor in canonical.items():
            self.histogram(name, tensor, step)
        pair = {k: canonical[f"energy/{k}"] for k in ("data", "samples")
                if f"energy/{k}" in canonical}
        if len(pair) == 2:
            from ebmrun.logging.figures import energy_histograms

            self.image("energy/data_vs_samples", energy_histograms(pair), step)

    def text(self, name: str, text: str, step: int = 0, code: bool = True) -> None:
        """Text in the Text tab. ``code``: indented by four spaces, so Markdown shows it as a
        code block (YAML keeps its layout); otherwise a paragraph that wraps (one-line
        notes and warnings, which a code block shows on one scrolling line)."""
        if code:
            text = "    " + text.replace("\n", "\n    ")
        self.writer.add_text(name, text, step)

    # --- HParams -------------------------------------------------------------------------
    def start_session(self, hparams: Mapping[str, Any]) -> None:
        """This run's row in the HParams tab (see :func:`ebmrun.logging.hparams.run_hparams`).
        No experiment summary is written: TensorBoard then builds the columns from every
        run's hparams and scalars instead of taking one run's list."""
        _, start, _ = hparams_summaries({k: hparam_value(v) for k, v in hparams.items()}, {})
        self.writer.file_writer.add_summary(start)

    def final_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """End the HParams session with ``metrics`` (tag -> number; other values ignored).

        A metric whose tag was logged at ``step`` (default: the last step logged) is
        already the last point of its curve; the others are written at ``step``, so no
        ``final/*`` one-dot charts at step 0 appear. The HParams cells read these last
        points.
        """
        if step is None:
            step = max(self.last_step.values(), default=0)
        values = {}
        for name, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (numbers.Number, Tensor)):
                continue
            tag = final_tag(name)
            if self.last_step.get(tag) != step:
                values[tag] = value
        self.scalars(values, step)
        _, _, end = hparams_summaries({}, {})  # SessionEndInfo(STATUS_SUCCESS)
        self.writer.file_writer.add_summary(end, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def final_tag(name: str) -> str:
    """The tag of a final metric: ``final/eval/x`` and ``eval/x`` -> ``eval/x``; a training
    output ``final/energy_sample`` -> ``train/energy/samples`` (``final/buffer/age_mean`` ->
    ``train/buffer/age_mean``); tags with a known group prefix (``perf/``, ``grad/``,
    ``quality/``, ``lr/``, ``train/``) stay."""
    name = name.removeprefix("final/")
    if name.split("/", 1)[0] in ("eval", "train", "perf", "grad", "quality", "lr"):
        return name
    return "train/" + tag_scheme.canonical(name)
