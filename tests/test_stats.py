"""The one stated test (runner.analysis.stats): Welch's t-test against the best variant, Holm-corrected, at
0.05, and 95% confidence intervals, on a fixed table of accuracies against values computed here
by hand from the textbook formulas."""

import math
import statistics

import pytest
from scipy.special import betainc

from runner.analysis import stats

TABLE = {  # test accuracies over seeds
    "adam": [0.912, 0.915, 0.909, 0.918],
    "momentum": [0.905, 0.899, 0.902, 0.907],
    "nesterov": [0.913, 0.910, 0.916],
    "sgd": [0.880],
}
T_975 = {3: 3.182446305284263, 2: 4.302652729911275}  # Student's t quantiles, from tables


def welch_by_hand(a: list[float], b: list[float]) -> float:
    """t = (mean_a - mean_b) / sqrt(va/na + vb/nb), Welch-Satterthwaite degrees of freedom, two-sided
    p = I_{df/(df+t^2)}(df/2, 1/2) (the t distribution's tail through the regularized incomplete beta)."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(betainc(df / 2, 0.5, df / (df + t * t)))


def test_welch_and_holm_against_the_best_match_the_formulas():
    best, found = stats.compare(TABLE)
    assert best == "adam"
    p_momentum = welch_by_hand(TABLE["momentum"], TABLE["adam"])
    p_nesterov = welch_by_hand(TABLE["nesterov"], TABLE["adam"])
    assert found["momentum"].p == pytest.approx(p_momentum, rel=1e-9)
    assert found["nesterov"].p == pytest.approx(p_nesterov, rel=1e-9)
    # Holm with m = 2: the smaller p times 2, the larger times 1 and no less than the smaller's; by hand
    # p_momentum = 0.0079 and p_nesterov = 0.855, so momentum's is doubled and nesterov's stays as it is
    assert found["momentum"].p_holm == pytest.approx(2 * p_momentum, rel=1e-9)
    assert found["nesterov"].p_holm == pytest.approx(p_nesterov, rel=1e-9)
    assert found["momentum"].p_holm < 0.05 and found["momentum"].verdict == "beyond noise"
    assert found["nesterov"].p_holm > 0.05 and found["nesterov"].verdict == "within noise"
    assert found["sgd"].p is None and found["sgd"].verdict == "n=1, noise unknown"


def test_confidence_intervals_use_students_t_and_the_sample_std():
    _, found = stats.compare(TABLE)
    for name in ("adam", "nesterov"):
        values = TABLE[name]
        half = T_975[len(values) - 1] * statistics.stdev(values) / math.sqrt(len(values))
        mean = statistics.fmean(values)
        assert found[name].ci == pytest.approx((mean - half, mean + half), rel=1e-9)
        assert found[name].std == pytest.approx(statistics.stdev(values))
    assert found["sgd"].ci is None and found["sgd"].std == 0


def test_holm_steps_down_and_keeps_the_order():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert stats.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_samples_without_spread():
    assert stats.welch_p([0.9, 0.9], [0.9, 0.9]) == 1.0
    assert stats.welch_p([0.9, 0.9], [0.8, 0.8]) == 0.0
