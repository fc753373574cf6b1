"""The one test behind "within noise" and "beyond noise", wherever ablate compares variants (sweep
summaries, `report`): Welch's t-test of each variant's test accuracy against the best variant's
(two-sided, unequal variances), the p-values Holm-corrected across the variants compared with the
best, at ALPHA = 0.05; each mean with its 95% confidence interval (Student's t, sample std).
"""

import math
import statistics
from dataclasses import dataclass

ALPHA = 0.05
CONFIDENCE = 0.95


@dataclass
class Comparison:
    """One variant's test accuracies summed up, and how they compare with the best variant's."""

    n: int
    mean: float
    std: float  # sample std (ddof 1); 0 for one value
    ci: tuple[float, float] | None  # 95% confidence interval of the mean; None for one value
    p: float | None = None  # Welch's two-sided p-value against the best; None for the best, or too few values
    p_holm: float | None = None  # Holm-adjusted across the variants compared with the best

    @property
    def verdict(self) -> str:
        if self.p_holm is None:
            return "n=1, noise unknown"
        return "beyond noise" if self.p_holm < ALPHA else "within noise"


def summarize(values: list[float]) -> Comparison:
    from scipy import stats

    n, mean = len(values), statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    ci = None
    if n > 1:
        half = stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) * std / math.sqrt(n)
        ci = (mean - half, mean + half)
    return Comparison(n, mean, std, ci)


def welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of Welch's t-test that `a` and `b` have the same mean (each needs two values).
    Two samples without spread: 1 when their means are equal, else 0."""
    from scipy import stats

    if statistics.stdev(a) == 0 and statistics.stdev(b) == 0:
        return 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values times (m - i + 1), kept
    non-decreasing in that order and at most 1; returned in the order given."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def compare(samples: dict[str, list[float]]) -> tuple[str, dict[str, Comparison]]:
    """The best variant (highest mean) and every variant's Comparison with it."""
    found = {label: summarize(values) for label, values in samples.items() if values}
    best = max(found, key=lambda label: found[label].mean)
    tested = [label for label in found if label != best and found[label].n > 1 and found[best].n > 1]
    for label in tested:
        found[label].p = welch_p(samples[label], samples[best])
    for label, adjusted in zip(tested, holm([found[label].p for label in tested]), strict=True):
        found[label].p_holm = adjusted
    return best, found
