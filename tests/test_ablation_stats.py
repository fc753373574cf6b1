"""An ablation study's statistics (runner.analysis.stats): paired effects with t intervals, the paired
t-test Holm-corrected across a study's effects, the equivalence test (TOST) against a margin, and the
seeds that would decide an undecided effect; checked against scipy's own tests and by simulation."""

import random
import statistics

import numpy as np
import pytest
from scipy import stats as scipy_stats

from runner.analysis import stats

DIFFERENCES = [0.012, 0.004, 0.009, 0.015, 0.007]  # per-seed test accuracy, on - off


def test_the_paired_test_and_interval_match_scipy():
    e = stats.effect(DIFFERENCES)
    on = [0.9 + d for d in DIFFERENCES]
    off = [0.9] * len(DIFFERENCES)
    assert e.p == pytest.approx(scipy_stats.ttest_rel(on, off).pvalue, rel=1e-9)
    low, high = scipy_stats.t.interval(
        0.95, len(DIFFERENCES) - 1, statistics.fmean(DIFFERENCES), scipy_stats.sem(DIFFERENCES)
    )
    assert e.ci == pytest.approx((low, high), rel=1e-9)


def test_tost_is_the_larger_of_the_two_one_sided_p_values():
    margin = 0.02
    e = stats.effect(DIFFERENCES, margin)
    shifted_up = [d + margin for d in DIFFERENCES]  # H0: mean <= -margin
    shifted_down = [d - margin for d in DIFFERENCES]  # H0: mean >= +margin
    above = scipy_stats.ttest_1samp(shifted_up, 0, alternative="greater").pvalue
    below = scipy_stats.ttest_1samp(shifted_down, 0, alternative="less").pvalue
    assert e.p_equivalence == pytest.approx(max(above, below), rel=1e-9)


def test_verdicts():
    judged = stats.judge(
        {
            "helps": stats.effect([0.03, 0.031, 0.029, 0.032, 0.030]),
            "hurts": stats.effect([-0.03, -0.031, -0.029, -0.032, -0.030]),
            "equivalent": stats.effect([0.0005, -0.0004, 0.0002, -0.0001, 0.0003]),
            "undecided": stats.effect([0.01, -0.012, 0.02, -0.015, 0.004]),
        }
    )
    assert {name: e.verdict for name, e in judged.items()} == {
        "helps": "helps",
        "hurts": "hurts",
        "equivalent": "equivalent (within ±0.005)",
        "undecided": "undecided",
    }
    assert judged["undecided"].seeds_needed is not None and judged["undecided"].seeds_needed > 5
    assert all(judged[name].seeds_needed is None for name in ("helps", "hurts", "equivalent"))


def test_a_component_with_no_effect_at_all_is_equivalent_not_a_division_by_zero():
    """Bitwise runs: every per-seed difference is exactly 0."""
    judged = stats.judge({"noop": stats.effect([0.0, 0.0, 0.0]), "real": stats.effect([0.02, 0.03, 0.025])})
    noop = judged["noop"]
    assert (noop.mean, noop.std, noop.p, noop.p_equivalence) == (0.0, 0.0, 1.0, 0.0)
    assert noop.verdict == "equivalent (within ±0.005)" and noop.seeds_needed is None
    constant = stats.judge({"shift": stats.effect([0.01, 0.01, 0.01])})["shift"]  # a difference without spread
    assert constant.p == 0.0 and constant.verdict == "helps"


def test_the_seeds_needed_reach_80_percent_power_by_simulation():
    """For an effect of 1 point with a spread of 1.5 points, the figure the study gives reaches 80%
    power when simulated (and one seed fewer does not reach it by much more than noise)."""
    mean, std = 0.01, 0.015
    n = stats.seeds_needed(mean, std, stats.MARGIN, stats.ALPHA)
    rng = np.random.default_rng(0)

    def power(seeds: int) -> float:
        draws = rng.normal(mean, std, (4000, seeds))
        t = draws.mean(1) / (draws.std(1, ddof=1) / np.sqrt(seeds))
        return float((2 * scipy_stats.t.sf(np.abs(t), seeds - 1) < stats.ALPHA).mean())

    assert 5 < n < 40
    assert power(n) >= 0.78
    assert power(n - 1) < 0.82


def test_false_helps_or_hurts_stay_at_or_below_5_percent_in_2000_aa_studies():
    """A/A studies: three components that change nothing, each measured over 5 seeds whose per-seed
    differences are noise. A false verdict is a `helps` or `hurts`: at most 5% of the verdicts, and a
    study with any (Holm's familywise rate: 1 - (1 - 0.05/3)^3 = 4.9% expected) within the binomial
    noise of 2000 studies above 5%."""
    rng = random.Random(0)
    false_verdicts = false_studies = 0
    for _ in range(2000):
        judged = stats.judge({c: stats.effect([rng.gauss(0, 0.01) for _ in range(5)]) for c in "abc"}, needed=False)
        wrong = sum(e.verdict in ("helps", "hurts") for e in judged.values())
        false_verdicts += wrong
        false_studies += wrong > 0
    print(f"A/A: {false_verdicts / 6000:.4f} of the verdicts and {false_studies / 2000:.4f} of the studies false")
    assert false_verdicts / 6000 <= 0.05
    assert false_studies / 2000 <= 0.05 + 2 * (0.05 * 0.95 / 2000) ** 0.5


def test_the_paired_test_detects_a_known_effect_with_fewer_seeds_than_welchs():
    """Each seed moves both variants alike (its split, batch order and initial weights: a spread of 1
    point); the component adds 0.5 points, with 0.3 points of noise of its own. The seeds each test
    needs to detect it in 80% of 1000 studies (two-sided, at 0.05): the paired test needs far fewer."""
    rng = np.random.default_rng(1)

    def detection(seeds: int) -> tuple[float, float]:
        seed_effect = rng.normal(0.9, 0.01, (1000, seeds))
        off = seed_effect + rng.normal(0, 0.003, (1000, seeds))
        on = seed_effect + 0.005 + rng.normal(0, 0.003, (1000, seeds))
        paired = scipy_stats.ttest_rel(on, off, axis=1).pvalue
        welch = scipy_stats.ttest_ind(on, off, axis=1, equal_var=False).pvalue
        return float((paired < stats.ALPHA).mean()), float((welch < stats.ALPHA).mean())

    rates = {n: detection(n) for n in range(2, 121)}
    paired = next(n for n, (p, _) in rates.items() if p >= 0.8)
    welch = next((n for n, (_, w) in rates.items() if w >= 0.8), None)
    print(f"seeds for 80% power: paired {paired}, Welch {welch}")
    assert paired <= 12 and welch is not None and welch >= 4 * paired


def test_a_grid_whose_variants_ran_the_same_seeds_is_compared_by_the_paired_test():
    samples = {"bn": [0.91, 0.93, 0.92], "plain": [0.90, 0.925, 0.915]}
    best, found = stats.compare(samples, {"bn": [0, 1, 2], "plain": [0, 1, 2]})
    assert best == "bn" and found["plain"].test == stats.PAIRED
    assert found["plain"].p == pytest.approx(scipy_stats.ttest_rel(samples["plain"], samples["bn"]).pvalue, rel=1e-9)
    _, unpaired = stats.compare(samples, {"bn": [0, 1, 2], "plain": [3, 4, 5]})
    assert unpaired["plain"].test == "Welch's t-test"
    assert unpaired["plain"].p == pytest.approx(stats.welch_p(samples["plain"], samples["bn"]))
