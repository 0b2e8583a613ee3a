"""Paired effects between rows of a table: what attention, its relative embeddings or data augmentation
changes, with uncertainty.

Two rows that differ in one thing (``AA-WRN-16-2`` against ``WRN-16-2``; ``AA-WRN-16-2`` against
``AA-NRE-WRN-16-2``; ``WRN-16-2`` against ``WRN-16-2 (no aug)``) are trained with the same seeds, and a seed
fixes the split, the initialisation of the shared layers' random stream, the batch order and the augmentation.
The effect is therefore measured per seed as the difference of the two runs' test accuracies, and summarised
over the ``n`` seed pairs:

- ``mean``: the mean difference, in accuracy points;
- ``sd``: its sample standard deviation;
- ``[lo, hi]``: the 95% confidence interval of the mean, ``mean ± t(0.975, n-1) * sd / sqrt(n)`` (Student t);
- a verdict in words: ``helps by`` / ``hurts by`` when the interval excludes 0, else ``no detectable
  difference``. With fewer than two pairs there is no interval and no verdict, and :attr:`Effect.verdict` says
  why instead.

The interval says how precisely the mean difference is known from these seeds: it does not make two scales or
two data sets comparable, and a "no detectable difference" with a wide interval is a statement about ``n``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aacn.experiments.labels import AA, AA_NRE, NO_AUG

__all__ = ["Effect", "t_quantile_975", "paired_effect", "table_effects", "effects_markdown", "COMPARISONS"]

# Two-sided 95% quantiles of Student's t (t at 0.975) for 1..30 degrees of freedom, then 40, 60, 120 and inf.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
_Z975 = 1.960

def _with_attention(label: str) -> bool:
    return label.startswith(AA) and not label.startswith(AA_NRE)


# (what the difference measures, the label of the row a changed row is compared with, or None where the row is
# not a changed row of that comparison)
COMPARISONS = (
    ("attention", lambda label: label[len(AA):] if _with_attention(label) else None),
    ("relative position embeddings", lambda label: AA_NRE + label[len(AA):] if _with_attention(label) else None),
    ("data augmentation", lambda label: None if label.endswith(NO_AUG) else label + NO_AUG),
)


def t_quantile_975(df: int) -> float:
    """Student's t quantile at 0.975 for ``df >= 1`` degrees of freedom (tabled to 3 decimals; between table
    entries above 30, linear in ``1/df``)."""
    if not isinstance(df, int) or df < 1:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df!r}")
    if df in _T975:
        return _T975[df]
    keys = sorted(_T975) + [math.inf]
    upper = next(k for k in keys if k > df)
    lower = max(k for k in keys if k < df)
    t_low, t_up = _T975[lower], _T975.get(upper, _Z975)
    x, x_low, x_up = 1 / df, 1 / lower, (0.0 if upper == math.inf else 1 / upper)
    return t_up + (t_low - t_up) * (x - x_up) / (x_low - x_up)


@dataclass(frozen=True)
class Effect:
    """The paired difference ``changed - baseline`` of one metric over seeds (accuracy points)."""

    changed: str  # row label, e.g. "AA-WRN-16-2"
    baseline: str  # row label, e.g. "WRN-16-2"
    what: str  # what the difference measures, e.g. "attention"
    seeds: tuple[int, ...]  # the paired seeds
    diffs: tuple[float, ...]
    mean: float | None
    sd: float | None
    lo: float | None
    hi: float | None

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def short_verdict(self) -> str:
        """``helps``, ``hurts``, ``no detectable difference`` or ``no verdict (n=1)``."""
        if self.lo is None or self.hi is None:
            return f"no verdict (n={self.n})"
        return "helps" if self.lo > 0 else "hurts" if self.hi < 0 else "no detectable difference"

    @property
    def verdict(self) -> str:
        """One line in words: ``helps by x [lo, hi]``, ``hurts by ...``, ``no detectable difference ...``, or why
        there is no verdict."""
        if self.n == 0:
            return "no verdict: the two rows share no finished seed"
        if self.lo is None or self.hi is None or self.mean is None:
            return f"{self.mean:+.2f} points from one seed: no interval, no verdict (needs two or more seeds)"
        interval = f"[{self.lo:+.2f}, {self.hi:+.2f}]"
        if self.lo > 0:
            return f"helps by {self.mean:.2f} points {interval} (n={self.n})"
        if self.hi < 0:
            return f"hurts by {-self.mean:.2f} points {interval} (n={self.n})"
        return f"no detectable difference: {self.mean:+.2f} points {interval} (n={self.n})"


def paired_effect(changed: str, baseline: str, what: str, changed_runs: Sequence[tuple[int, float]],
                  baseline_runs: Sequence[tuple[int, float]]) -> Effect:
    """The effect of ``changed`` against ``baseline`` from ``(seed, value)`` pairs of each row; seeds present in
    only one row are left out. Values that are not finite numbers are left out with their seed."""
    def by_seed(runs: Sequence[tuple[int, float]]) -> dict[int, float]:
        return {s: float(v) for s, v in runs if isinstance(v, (int, float)) and math.isfinite(float(v))}

    a, b = by_seed(changed_runs), by_seed(baseline_runs)
    seeds = tuple(sorted(set(a) & set(b)))
    diffs = tuple(a[s] - b[s] for s in seeds)
    n = len(diffs)
    mean = sum(diffs) / n if n else None
    sd = lo = hi = None
    if n >= 2 and mean is not None:
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
        half = t_quantile_975(n - 1) * sd / math.sqrt(n)
        lo, hi = mean - half, mean + half
    return Effect(changed, baseline, what, seeds, diffs, mean, sd, lo, hi)


def table_effects(rows: Sequence[Any], metric: str = "test_acc") -> list[Effect]:
    """Every comparison of :data:`COMPARISONS` between rows of one table (objects with ``label`` and ``runs``,
    each run with ``config["seed"]`` and ``values()``), in row order; rows without a partner are skipped."""
    by_label = {row.label: row for row in rows if getattr(row, "runs", None)}
    effects = []
    for row in rows:
        for what, baseline_of in COMPARISONS:
            partner = by_label.get(baseline_of(row.label) or "") if row.label in by_label else None
            if partner is None:
                continue
            effects.append(paired_effect(row.label, partner.label, what, _seed_values(row, metric),
                                         _seed_values(partner, metric)))
    return effects


def _seed_values(row: Any, metric: str) -> list[tuple[int, float]]:
    return [(run.config.get("seed"), run.values().get(metric)) for run in row.runs
            if getattr(run, "finished", True) and isinstance(run.config.get("seed"), int)]


def effects_markdown(effects: Sequence[Effect]) -> list[str]:
    """Markdown lines: a table of the paired effects (n, mean, sd, 95% CI, verdict), then a note."""
    if not effects:
        return []
    lines = ["| Effect of | Rows | n | Mean (points) | SD | 95% CI | Verdict |", "|---|---|--:|--:|--:|--:|---|"]
    for e in effects:
        mean = "—" if e.mean is None else f"{e.mean:+.2f}"
        sd = "—" if e.sd is None else f"{e.sd:.2f}"
        ci = "—" if e.lo is None else f"[{e.lo:+.2f}, {e.hi:+.2f}]"
        lines.append(f"| {e.what} | {e.changed} − {e.baseline} | {e.n} | {mean} | {sd} | {ci} | "
                     f"{e.short_verdict} |")
    lines += ["", "Paired by seed: test accuracy of the first row minus the second, per seed; the interval is "
              "mean ± t(0.975, n−1)·SD/√n. With one seed there is no interval and no verdict.", ""]
    return lines
