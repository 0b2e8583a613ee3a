"""Paired effects between table rows: Student t intervals, verdicts in words, and why one seed gives none."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from aacn.experiments.effects import effects_markdown, paired_effect, t_quantile_975, table_effects


def test_t_quantiles_match_the_table_and_approach_the_normal():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(2) == 4.303 and t_quantile_975(30) == 2.042
    assert 2.000 < t_quantile_975(50) < 2.021  # between the tabled 40 and 60
    assert 1.960 < t_quantile_975(10_000) < 1.961
    values = [t_quantile_975(df) for df in range(1, 200)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))  # decreasing in df
    with pytest.raises(ValueError, match="positive integer"):
        t_quantile_975(0)


def test_paired_effect_is_the_mean_difference_with_a_t_interval():
    aa = [(0, 80.0), (1, 81.0), (2, 83.0), (3, 99.0)]  # seed 3 has no partner: left out
    plain = [(0, 79.0), (1, 79.5), (2, 80.0)]
    e = paired_effect("AA-X", "X", "attention", aa, plain)
    diffs = [1.0, 1.5, 3.0]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    half = 4.303 * sd / math.sqrt(3)
    assert e.seeds == (0, 1, 2) and e.n == 3 and e.diffs == tuple(diffs)
    assert e.mean == pytest.approx(mean) and e.sd == pytest.approx(sd)
    assert (e.lo, e.hi) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert e.lo < 0 < e.hi and e.short_verdict == "no detectable difference"
    assert e.verdict.startswith("no detectable difference: +1.83 points [") and "(n=3)" in e.verdict


def test_verdicts_in_words():
    helps = paired_effect("AA-X", "X", "attention", [(0, 82.0), (1, 82.5), (2, 83.0)],
                          [(0, 80.0), (1, 80.4), (2, 81.1)])
    assert helps.short_verdict == "helps" and helps.verdict.startswith("helps by 2.00 points [+")
    hurts = paired_effect("AA-X", "X", "attention", [(0, 78.0), (1, 78.5), (2, 79.0)],
                          [(0, 80.0), (1, 80.4), (2, 81.1)])
    assert hurts.short_verdict == "hurts" and hurts.verdict.startswith("hurts by 2.00 points [-")
    one = paired_effect("AA-X", "X", "attention", [(0, 82.0)], [(0, 80.0)])
    assert one.lo is None and one.short_verdict == "no verdict (n=1)"
    assert one.verdict == "+2.00 points from one seed: no interval, no verdict (needs two or more seeds)"
    none = paired_effect("AA-X", "X", "attention", [(0, 82.0)], [(1, 80.0)])
    assert none.n == 0 and "share no finished seed" in none.verdict
    nan = paired_effect("AA-X", "X", "attention", [(0, float("nan")), (1, 1.0)], [(0, 1.0), (1, 1.0)])
    assert nan.seeds == (1,)  # a value that is not a finite number leaves its seed out


@dataclass
class _Run:
    seed: int
    acc: float
    config: dict = field(init=False)
    finished: bool = True

    def __post_init__(self):
        self.config = {"seed": self.seed}

    def values(self):
        return {"test_acc": self.acc}


@dataclass
class _Row:
    label: str
    runs: list


def test_table_effects_pair_attention_with_plain_and_with_no_relative():
    rows = [_Row("WRN-16-2", [_Run(0, 80.0), _Run(1, 81.0)]),
            _Row("AA-WRN-16-2", [_Run(0, 81.0), _Run(1, 83.0)]),
            _Row("AA-NRE-WRN-16-2", [_Run(0, 80.5), _Run(1, 82.0)]),
            _Row("AA-ResNet-34", [_Run(0, 70.0)]),  # no plain ResNet row: nothing to compare with
            _Row("airbench94", [_Run(0, 90.0)])]
    effects = table_effects(rows)
    assert [(e.what, e.changed, e.baseline) for e in effects] == [
        ("attention", "AA-WRN-16-2", "WRN-16-2"),
        ("relative position embeddings", "AA-WRN-16-2", "AA-NRE-WRN-16-2")]
    assert [e.mean for e in effects] == [1.5, 0.75]
    lines = effects_markdown(effects)
    assert lines[0].startswith("| Effect of |") and "| attention | AA-WRN-16-2 − WRN-16-2 | 2 | +1.50 |" in lines[2]
    assert effects_markdown([]) == []


def test_table_effects_pair_augmentation_with_the_no_aug_row_of_the_same_network():
    rows = [_Row("ResNet-34", [_Run(0, 80.0), _Run(1, 82.0), _Run(2, 81.0)]),
            _Row("ResNet-34 (no aug)", [_Run(0, 75.0), _Run(1, 76.0)]),  # seed 2 unfinished: two pairs
            _Row("WRN-16-2", [_Run(0, 84.0)]),
            _Row("WRN-16-2 (no aug)", [])]  # not run yet: no partner
    effects = table_effects(rows)
    assert [(e.what, e.changed, e.baseline, e.seeds) for e in effects] == [
        ("data augmentation", "ResNet-34", "ResNet-34 (no aug)", (0, 1))]
    assert effects[0].mean == 5.5 and effects[0].lo is not None
