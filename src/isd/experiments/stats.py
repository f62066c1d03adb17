"""Paired differences between two methods over the seeds or draws they share, and what they say of a claim.

A claim is "A ≥ B on a metric" (the paper's orderings). Each pair is one seed (balanced data) or one draw
(unbalanced data) that both methods ran with; the interval is Student's t over the pairs' differences, so the
noise shared by a seed or a draw (the images, their order, the held-out split) cancels. The verdict: *holds*
when the 95% interval lies above 0, *does not hold* when it lies below, *not resolved at n = N* otherwise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (a table to 30, then Cornish-Fisher, which
    is within 1e-3 there)."""
    if df < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Paired:
    """A − B over n pairs: the mean difference and its 95% interval (None with one pair)."""

    n: int
    mean: float
    low: float | None
    high: float | None
    differences: tuple[float, ...]

    @property
    def verdict(self) -> str:
        if self.low is not None and self.low > 0:
            return "holds"
        if self.high is not None and self.high < 0:
            return "does not hold"
        return f"not resolved at n = {self.n}"

    def pairs_to_resolve(self, most: int = 1000) -> int | None:
        """For planning only: the fewest pairs whose 95% interval would exclude 0 if the mean difference and its
        spread stayed as measured (None when resolved already, with one pair, a zero mean or more than `most`)."""
        if self.n < 2 or self.low is None or self.high is None or not self.low <= 0 <= self.high or self.mean == 0:
            return None
        spread = statistics.stdev(self.differences)
        return next((n for n in range(self.n + 1, most + 1)
                     if t_quantile_975(n - 1) * spread / math.sqrt(n) < abs(self.mean)), None)

    def interval_text(self) -> str:
        if self.low is None or self.high is None:
            return "–"
        return f"[{self.low:+.2f}, {self.high:+.2f}]"


def paired(differences: list[float]) -> Paired:
    n = len(differences)
    if n == 0:
        raise ValueError("no pairs")
    mean = statistics.fmean(differences)
    if n == 1:
        return Paired(1, mean, None, None, tuple(differences))
    half = t_quantile_975(n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return Paired(n, mean, mean - half, mean + half, tuple(differences))


@dataclass(frozen=True)
class PaperClaim:
    better: str  # method (row name) claimed ≥ ...
    worse: str
    metric: str  # a key of result["metrics"], or "rare" (mean 1-NN over the rare classes)
    label: str  # how the metric reads in a sentence
    share: float = 1.0  # A ≥ share × B: the claim is on a fraction of B's value (a student against its teacher)


# Rows whose kNN accuracy no seed can change: the features are fixed (a frozen teacher, the pixels themselves) and
# kNN has no randomness, so a plan runs them once and that one cell stands for every seed of a draw. Their
# linear probe does depend on the seed (its SGD), so it pairs only seed by seed.
SEED_FREE_FLOORS = frozenset({"teacher", "raw-pixels"})
SEED_FREE_METRICS = frozenset({"knn1", "knn20", "knn_weighted", "knn200", "rare"})


def pair_up(rows: list[dict], claim: PaperClaim, value: Callable[[dict, str], float | None]) -> Paired | None:
    """The claim's paired differences over the (seed, draw) both methods have; None when they share none. A
    seed-free row (`SEED_FREE_FLOORS` at a kNN metric) run on one seed of a draw pairs with every seed of it."""
    cells = {(r["method"], r["seed"], r.get("draw")): r for r in rows}
    fixed = _seed_free_cells(rows, claim)
    diffs = []
    for (method, seed, draw), a in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][2] or 0)):
        b = cells.get((claim.worse, seed, draw)) or fixed.get(draw)
        if method != claim.better or b is None:
            continue
        va, vb = value(a, claim.metric), value(b, claim.metric)
        if va is not None and vb is not None:
            diffs.append(va - claim.share * vb)
    return paired(diffs) if diffs else None


def _seed_free_cells(rows: list[dict], claim: PaperClaim) -> dict:
    """Draw -> the one cell of the claim's `worse` row there, when that row is seed-free at the claim's metric."""
    worse = [r for r in rows if r["method"] == claim.worse]
    if claim.metric not in SEED_FREE_METRICS or not worse or any(r.get("floor") not in SEED_FREE_FLOORS
                                                                  for r in worse):
        return {}
    by_draw: dict = {}
    for r in worse:
        by_draw.setdefault(r.get("draw"), []).append(r)
    return {draw: cells[0] for draw, cells in by_draw.items() if len(cells) == 1}
