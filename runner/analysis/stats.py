"""The tests behind "within noise" and "beyond noise", wherever ablate compares variants (sweep
summaries, `report`): each variant's test accuracy against the best variant's, two-sided, by the
paired t-test where every variant ran the same seeds (two or more: seed s gives every variant the
same split, batch order and initial weights, so the per-seed differences are paired), else by
Welch's t-test (unequal variances); the p-values Holm-corrected across the variants compared with
the best, at ALPHA = 0.05; each mean with its 95% confidence interval (Student's t, sample std).
An ablation study's effects (runner.analysis.ablation) take the paired test, an equivalence test
against a margin, and the seeds that would decide an undecided effect.
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
    p: float | None = None  # two-sided p-value against the best; None for the best, or too few values
    p_holm: float | None = None  # Holm-adjusted across the variants compared with the best
    test: str = "Welch's t-test"  # or "the paired t-test", where every variant ran the same seeds

    @property
    def verdict(self) -> str:
        if self.p_holm is None:
            return "n=1, noise unknown"
        return "beyond noise" if self.p_holm < ALPHA else "within noise"


def t_quantile(q: float, df: float) -> float:
    """Student's t distribution's quantile (scipy.special: the summary at a sweep's end does without
    scipy.stats' import, about 1 s on 2 cores)."""
    from scipy import special

    return float(special.stdtrit(df, q))


def t_cdf(x: float, df: float) -> float:
    """Student's t distribution's cumulative probability at `x`."""
    from scipy import special

    return float(special.stdtr(df, x))


def summarize(values: list[float]) -> Comparison:
    n, mean = len(values), statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    ci = None
    if n > 1:
        half = t_quantile((1 + CONFIDENCE) / 2, n - 1) * std / math.sqrt(n)
        ci = (mean - half, mean + half)
    return Comparison(n, mean, std, ci)


def welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of Welch's t-test that `a` and `b` have the same mean (each needs two values).
    Two samples without spread: 1 when their means are equal, else 0."""
    if statistics.stdev(a) == 0 and statistics.stdev(b) == 0:
        return 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    return 2 * t_cdf(-abs(t), df)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values times (m - i + 1), kept
    non-decreasing in that order and at most 1; returned in the order given."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


PAIRED = "the paired t-test"


def same_seeds(seeds: dict[str, list[int]] | None, labels) -> bool:
    """Whether every variant of `labels` ran the same two or more seeds, each once."""
    if not seeds:
        return False
    sets = [seeds.get(label, []) for label in labels]
    return all(len(s) == len(set(s)) for s in sets) and len({frozenset(s) for s in sets}) == 1 and len(sets[0]) > 1


def compare(
    samples: dict[str, list[float]], seeds: dict[str, list[int]] | None = None
) -> tuple[str, dict[str, Comparison]]:
    """The best variant (highest mean) and every variant's Comparison with it. `seeds`: each value's
    seed, in the order of `samples`; where every variant ran the same seeds, the paired t-test."""
    found = {label: summarize(values) for label, values in samples.items() if values}
    best = max(found, key=lambda label: found[label].mean)
    tested = [label for label in found if label != best and found[label].n > 1 and found[best].n > 1]
    paired = same_seeds(seeds, found)
    for label in tested:
        if paired:
            by_seed = dict(zip(seeds[best], samples[best], strict=True))
            found[label].p = paired_p([v - by_seed[s] for s, v in zip(seeds[label], samples[label], strict=True)])
            found[label].test = PAIRED
        else:
            found[label].p = welch_p(samples[label], samples[best])
    for label, adjusted in zip(tested, holm([found[label].p for label in tested]), strict=True):
        found[label].p_holm = adjusted
    return best, found


# --- paired comparisons: the same seeds on both sides ------------------------------------------------
#
# Seed s gives every variant the same split, batch order and (where shapes agree) initial weights, so
# the per-seed differences of two variants are paired: their spread is the variants' own, without the
# seed's, and a paired t-test needs far fewer seeds than Welch's.

MARGIN = 0.005  # the equivalence margin on test accuracy: |effect| below it is "no effect worth a sentence"
POWER = 0.8
MAX_SEEDS = 1000  # a seeds-needed figure beyond this is "more than 1000"


@dataclass
class Effect:
    """What switching one component on does to test accuracy, from its per-seed differences (on - off)."""

    n: int  # seeds both sides completed; 0 when no seed did (a variant whose every run failed)
    mean: float | None  # None without a paired seed
    std: float  # sample std of the differences; 0 for one value
    ci: tuple[float, float] | None  # 95% Student t interval of the mean difference
    p: float | None  # paired t-test, two-sided; None for one seed
    p_equivalence: float | None  # two one-sided tests against +-margin; None for one seed
    margin: float = MARGIN
    p_holm: float | None = None  # Holm-adjusted across the study's components
    seeds_needed: int | None = None  # for an undecided effect: the seeds that decide it at 80% power

    @property
    def verdict(self) -> str:
        if self.n == 0:
            return "no paired seeds"
        if self.p_holm is not None and self.p_holm < ALPHA:
            return "helps" if self.mean > 0 else "hurts"
        if self.p_equivalence is not None and self.p_equivalence < ALPHA:
            return f"equivalent (within ±{self.margin:g})"
        return "undecided"


def paired_p(differences: list[float]) -> float:
    """Two-sided p-value of the paired t-test that the mean difference is 0. Differences without
    spread (bitwise runs): 1 when they are all 0, else 0."""
    mean, std = statistics.fmean(differences), statistics.stdev(differences)
    if std == 0:
        return 1.0 if mean == 0 else 0.0
    t = mean / (std / math.sqrt(len(differences)))
    return 2 * t_cdf(-abs(t), len(differences) - 1)


def equivalence_p(differences: list[float], margin: float) -> float:
    """p-value of the two one-sided tests (TOST) that the mean difference lies within +-margin: the
    larger of the two one-sided p-values. Differences without spread: 0 when their mean lies inside
    the margin, else 1."""
    mean, std = statistics.fmean(differences), statistics.stdev(differences)
    if std == 0:
        return 0.0 if abs(mean) < margin else 1.0
    se, df = std / math.sqrt(len(differences)), len(differences) - 1
    above = t_cdf(-(mean + margin) / se, df)  # H0: mean <= -margin
    below = t_cdf((mean - margin) / se, df)  # H0: mean >= +margin
    return max(above, below)


def effect(differences: list[float], margin: float = MARGIN) -> Effect:
    """The mean per-seed difference with its 95% interval, its paired test and its equivalence test."""
    if not differences:
        return Effect(0, None, 0.0, None, None, None, margin)
    summary = summarize(differences)
    if summary.n < 2:
        return Effect(summary.n, summary.mean, 0.0, None, None, None, margin)
    return Effect(
        summary.n,
        summary.mean,
        summary.std,
        summary.ci,
        paired_p(differences),
        equivalence_p(differences, margin),
        margin,
    )


def judge(effects: dict[str, Effect], needed: bool = True) -> dict[str, Effect]:
    """Holm's adjustment across the components, then (`needed`), for each one still undecided, the
    seeds that would decide it at 80% power from its observed mean and spread."""
    tested = [name for name, e in effects.items() if e.p is not None]
    for name, adjusted in zip(tested, holm([effects[name].p for name in tested]), strict=True):
        effects[name].p_holm = adjusted
    for e in effects.values():
        if needed and e.verdict == "undecided" and e.n > 1:
            e.seeds_needed = seeds_needed(e.mean, e.std, e.margin, ALPHA / max(1, len(tested)))
    return effects


def seeds_needed(mean: float, std: float, margin: float, alpha: float, power: float = POWER) -> int | None:
    """The fewest seeds at which, were the true mean difference `mean` and its spread `std`, the
    study would decide with probability `power`: the paired t-test at level `alpha` (Holm's first
    step: ALPHA over the effects) where |mean| reaches the margin, else the equivalence test at
    ALPHA (the noncentral t). None when the spread is 0 (nothing to decide) or more than MAX_SEEDS
    would be needed."""
    import numpy as np
    from scipy import stats

    if std == 0:
        return None
    for n in (np.arange(2, 51), np.arange(51, MAX_SEEDS + 1)):  # most answers lie in the first range
        se, df = std / np.sqrt(n), n - 1
        if abs(mean) >= margin:
            crit = stats.t.ppf(1 - alpha / 2, df)
            reach = stats.nct.sf(crit, df, abs(mean) / se) + stats.nct.cdf(-crit, df, abs(mean) / se)
        else:
            crit = stats.t.ppf(1 - ALPHA, df)
            reach = stats.nct.cdf(-crit, df, (mean - margin) / se) - stats.nct.cdf(crit, df, (mean + margin) / se)
        enough = np.flatnonzero(reach >= power)
        if len(enough):
            return int(n[enough[0]])
    return None
