"""Conditional samples by rejection from p(x) (ebmrun.conditional): exact on a joint whose
p(x | y) is known, rows kept together, and a label the model never draws refused."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ebmrun.conditional import refine, rejection_samples, rows_by_label, select_rows
from ebmrun.errors import UserError
from ebmrun.samplers.base import SampleResult
from ebmrun.samplers.langevin import Langevin

MEANS = torch.tensor([-2.0, 0.0, 3.0])   # p(x | y) = N(mu_y, 1), 1-D
PRIOR = torch.tensor([0.6, 0.3, 0.1])     # p(y): label 2 is rare


class GaussianJoint:
    """p(x, y) = p(y) N(x; mu_y, 1): ``generate`` draws exact x ~ p(x) (the mixture), as a
    perfect sampler would; ``class_energies`` are −log p(x, y) up to a constant."""

    def __init__(self, prior: Tensor = PRIOR) -> None:
        self.prior = prior

    def generate(self, n: int, *, steps: int | None, generator: torch.Generator,
                 snapshot_every: int) -> SampleResult:
        y = torch.multinomial(self.prior, n, replacement=True, generator=generator)
        x = (MEANS[y] + torch.randn(n, generator=generator)).unsqueeze(1)
        start = torch.zeros_like(x)
        return SampleResult(x=x, stats={"energy": torch.ones(3) * n},
                            chain=[start, x], chain_traces={"energy": x.repeat(1, 3)})

    def class_energies(self, x: Tensor) -> Tensor:
        return 0.5 * (x - MEANS) ** 2 - self.prior.clamp(min=1e-30).log()

    sampler = Langevin(step_size=0.01, noise_std=2 ** 0.5 * 0.1, grad_clip=None, steps=1)

    def conditional_energy(self, labels: Tensor):
        return lambda x: 0.5 * ((x[:, 0] - MEANS[labels]) ** 2)


def test_kept_samples_follow_each_conditional_density() -> None:
    """Kept x of label y have mean mu_y and variance 1 (3,000 per label: SE 0.018 / 0.026),
    in the order of the asked labels, although the chains ran p(x), where label 2 is 10 %."""
    labels = torch.tensor([2, 0, 1]).repeat_interleave(3000)
    result, chains = rejection_samples(GaussianJoint(), labels, steps=None,
                                       generator=torch.Generator().manual_seed(0),
                                       snapshot_every=1, batch_size=1000)
    assert result.x.shape == (9000, 1)
    for label in (0, 1, 2):
        x = result.x[labels == label, 0].double()
        assert x.mean() == pytest.approx(float(MEANS[label]), abs=0.08), label
        assert x.var() == pytest.approx(1.0, abs=0.1), label
    # label 2 needs ~3,000 / 0.1 chains; the other labels fill from the same chains
    assert 25_000 <= chains <= 36_000 and chains % 1000 == 0
    # the chains' other records follow the kept rows: snapshot, traces
    assert torch.equal(result.chain[-1], result.x)
    assert torch.equal(result.chain_traces["energy"][:, 0], result.x[:, 0])


def test_only_the_kept_chains_are_held_while_a_rare_label_fills(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Label 2 (10 % of p(x)) needs ~3,000 chains for its 300 samples; the states and
    snapshots held for the end are those of the 900 kept chains, not of all of them."""
    import ebmrun.conditional as conditional

    held_rows: list[int] = []

    def recording_select_rows(results: list[SampleResult], rows: Tensor) -> SampleResult:
        held_rows.append(sum(len(r.x) for r in results))
        return select_rows(results, rows)

    monkeypatch.setattr(conditional, "select_rows", recording_select_rows)
    labels = torch.tensor([2, 0, 1]).repeat_interleave(300)
    result, chains = conditional.rejection_samples(
        GaussianJoint(), labels, steps=None, generator=torch.Generator().manual_seed(0),
        snapshot_every=1, batch_size=1000)
    assert chains >= 3000 and result.x.shape == (900, 1)
    assert held_rows[-1] == 900  # the last call assembles the kept rows


def test_select_rows_keeps_each_chains_records_together() -> None:
    batches = [GaussianJoint().generate(4, steps=None, generator=torch.Generator()
                                        .manual_seed(seed), snapshot_every=1)
               for seed in (1, 2)]
    picked = select_rows(batches, torch.tensor([5, 0, 7]))
    whole = torch.cat([b.x for b in batches])
    assert torch.equal(picked.x, whole[[5, 0, 7]])
    assert torch.equal(picked.chain[1], picked.x) and picked.chain[0].abs().sum() == 0
    assert torch.equal(picked.chain_traces["energy"][:, 2], picked.x[:, 0])
    assert torch.equal(picked.stats["energy"], torch.ones(3) * 4)  # mean of the batches'


def test_a_label_the_model_never_draws_is_refused_early() -> None:
    """Refused after two batches (an optimistic pace of 200 chains per 3 samples: 667 for
    10 samples), not after the 400-chain budget; a label at 5 % of p(x) (1,000 chains for
    its 50 samples, limit 2,000) is sampled."""
    never = GaussianJoint(torch.tensor([0.5, 0.5, 0.0]))
    with pytest.raises(UserError, match=r"label 2 got 0 of 10 samples in 200 chains from "
                                        r"p\(x\), on course for at least 667 chains \(limit "
                                        r"400\).*sample.label_method=chains"):
        rejection_samples(never, torch.tensor([0, 2]).repeat_interleave(10), steps=None,
                          generator=torch.Generator().manual_seed(0), snapshot_every=0,
                          batch_size=100)
    rare = GaussianJoint(torch.tensor([0.55, 0.4, 0.05]))
    labels = torch.tensor([0, 2]).repeat_interleave(50)
    result, chains = rejection_samples(rare, labels, steps=None,
                                       generator=torch.Generator().manual_seed(0),
                                       snapshot_every=0, batch_size=100)
    assert result.x.shape == (100, 1) and 600 <= chains < 20 * 100


def test_refinement_runs_the_sampler_on_each_rows_label() -> None:
    """label_refine_steps: Langevin on E(x, y) = (x − mu_y)² / 2 from the kept rows keeps
    each label's N(mu_y, 1) (exact start, matching target: 2,000 rows, SE 0.03 / 0.04) while
    moving every row; the last snapshot is the refined state; no score of the old states."""
    joint, labels = GaussianJoint(), torch.tensor([0, 2]).repeat_interleave(2000)
    generator = torch.Generator().manual_seed(1)
    kept, _ = rejection_samples(joint, labels, steps=None, generator=generator,
                                snapshot_every=1, batch_size=1000)
    refined = refine(joint, kept, labels, steps=50, generator=generator)
    assert refined is not kept and (refined.x != kept.x).all()
    for label in (0, 2):
        x = refined.x[labels == label, 0].double()
        assert x.mean() == pytest.approx(float(MEANS[label]), abs=0.12), label
        assert x.var() == pytest.approx(1.0, abs=0.15), label
    assert torch.equal(refined.chain[-1], refined.x) and len(refined.chain) == 3
    assert refined.score is None and torch.equal(refined.chain_traces["energy"],
                                                 kept.chain_traces["energy"])
    assert refine(joint, kept, labels, steps=0, generator=generator) is kept


def test_rows_by_label_fills_each_row_with_its_label_in_order() -> None:
    x = torch.arange(7.0).reshape(7, 1, 1, 1)
    labels = torch.tensor([2, 0, 2, 2, 0, 2, 1])
    rows = rows_by_label(x, labels, num_classes=4, per_row=3, blank=-1.0).flatten()
    # row 0: items 1, 4; row 1: item 6; row 2: the first three of 0, 2, 3, 5; row 3 empty
    assert rows.tolist() == [1, 4, -1, 6, -1, -1, 0, 2, 3, -1, -1, -1]
