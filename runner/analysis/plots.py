"""Plots of a comparison (matplotlib, written as PNG), the variants in the summary table's order:
validation accuracy and train loss per epoch for each variant with a ± sample std band over seeds,
final test accuracy with error bars, and for a tuned sweep, how each tuned parameter moved the
trials' validation accuracy."""

from pathlib import Path

import numpy as np


def _curves(variant, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Epochs, mean and sample std of `key` over the variant's completed runs (up to the shortest
    history): the std of summary.md (ddof 1; 0 for one run)."""
    histories = [r.metrics.get("history") or [] for r in variant.completed()]
    length = min((len(h) for h in histories), default=0)
    if length == 0:
        return None
    values = np.array([[e[key] if e[key] is not None else np.nan for e in h[:length]] for h in histories], dtype=float)
    std = np.nanstd(values, axis=0, ddof=1) if len(histories) > 1 else np.zeros(length)
    return np.arange(1, length + 1), np.nanmean(values, axis=0), std


def accuracy_range(low: float, high: float) -> tuple[float, float]:
    """The test accuracy axis: from 0 when the values reach down there, else zoomed to the values with
    a margin of a quarter of their spread (at least 0.01), which the title then states."""
    margin = max(0.01, (high - low) / 4)
    return max(0.0, low - margin), min(1.0, high + margin)


def write_plots(variants: list, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key, title, name in (
        ("val_acc", "validation accuracy", "val_acc.png"),
        ("train_loss", "train loss", "train_loss.png"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for v in variants:
            curve = _curves(v, key)
            if curve is None:
                continue
            epochs, mean, std = curve
            (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=f"{v.label} (n={len(v.completed())})")
            ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(title)
        ax.set_title(f"{title} per epoch (mean ± sample std over seeds)")
        ax.grid(alpha=0.3)
        if ax.lines:  # every run of every variant failed: an empty plot, and no legend to warn about
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)

    stats = [(v.label, *v.stat("test_acc")) for v in variants if v.stat("test_acc")[0] is not None]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(stats) + 2), 4.5))
    title = "final test accuracy (mean ± sample std over seeds)"
    if stats:  # points with error bars, not bars: a bar's length would start from the axis' zoomed bottom
        labels, means, stds = zip(*stats)
        ax.errorbar(range(len(stats)), means, yerr=stds, fmt="o", capsize=4, color="tab:blue")
        for i, (m, s) in enumerate(zip(means, stds)):
            ax.annotate(f"{m:.4f}", (i, m + s), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=8)
        ax.set_xticks(range(len(stats)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(stats) - 0.5)
        bottom, top = accuracy_range(min(m - s for m, s in zip(means, stds)), max(m + s for m, s in zip(means, stds)))
        ax.set_ylim(bottom, top)
        title += f"\naxis from {bottom:.3f} to {top:.3f}, not from 0: read the gaps on its scale" if bottom > 0 else ""
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "test_acc.png", dpi=120)
    plt.close(fig)
    written.append(out / "test_acc.png")
    return written


def trial_score(trial) -> float | None:
    """What a trial reached: its best validation accuracy, or for a pruned trial the last it reported."""
    if trial.value is not None:
        return trial.value
    reported = trial.intermediate_values
    return reported[max(reported)] if reported else None


def write_sensitivity(studies: dict, out: Path) -> list[Path]:
    """plots/sensitivity_<key>.png for each tuned key: each trial's validation accuracy against the
    value it drew, one colour per variant (filled: completed, hollow: pruned, star: the chosen value),
    on a log axis for a log-scale key, with the choices side by side for a categorical one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    keys = sorted({k for study in studies.values() for t in study.trials for k in t.distributions})
    written = []
    for key in keys:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        dist = next(t.distributions[key] for s in studies.values() for t in s.trials if key in t.distributions)
        choices = list(dist.choices) if isinstance(dist, CategoricalDistribution) else None
        for i, (label, study) in enumerate(studies.items()):
            color = f"C{i % 10}"
            trials = [t for t in study.trials if key in t.params and trial_score(t) is not None]
            shift = 0.08 * (i - (len(studies) - 1) / 2)  # categorical: the variants side by side
            xs = {t.number: choices.index(t.params[key]) + shift if choices else t.params[key] for t in trials}
            for state, face in ((TrialState.COMPLETE, color), (TrialState.PRUNED, "none")):
                chosen = [t for t in trials if t.state == state]
                ax.scatter([xs[t.number] for t in chosen], [trial_score(t) for t in chosen], s=30, facecolors=face,
                           edgecolors=color, label=label if state == TrialState.COMPLETE else None)  # fmt: skip
            complete = [t for t in trials if t.state == TrialState.COMPLETE]
            if complete:
                best = max(complete, key=lambda t: t.value)
                ax.scatter(
                    [xs[best.number]], [best.value], s=160, marker="*", color=color, edgecolors="black", zorder=3
                )
        if choices:
            ax.set_xticks(range(len(choices)), [str(c) for c in choices])
        elif getattr(dist, "log", False):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("best validation accuracy")
        ax.set_title(
            f"{key}: each trial (hollow: pruned, at the epoch it stopped; 0: diverged; star: chosen)", fontsize=9
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"sensitivity_{key}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def write_forest(rows: list, study, path: Path) -> Path:
    """An ablation study's effects with their 95% intervals (a forest plot), in points of test accuracy:
    the zero line, the equivalence margin shaded, each effect coloured by its verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    colors = {"helps": "tab:green", "hurts": "tab:red", "undecided": "tab:gray"}
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.5))
    ax.axvspan(-100 * study.margin, 100 * study.margin, color="0.9", label=f"±{100 * study.margin:g} pts (margin)")
    ax.axvline(0, color="0.4", linewidth=0.8)
    for y, row in enumerate(reversed(rows)):
        e = row.effect
        color = colors.get(e.verdict, "tab:blue")  # equivalent: blue
        if e.mean is None:  # no seed to pair: the verdict alone, at zero
            ax.annotate(e.verdict, (0, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
            continue
        low, high = e.ci if e.ci else (e.mean, e.mean)
        ax.plot([100 * low, 100 * high], [y, y], color=color, linewidth=2)
        ax.plot(100 * e.mean, y, "o", color=color)
        ax.annotate(e.verdict, (100 * high, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [row.component for row in reversed(rows)])
    ax.set_xlabel("effect on test accuracy (points): on - off, per seed, mean and 95% interval")
    ax.set_title(f"{study.design.replace('_', '-')}, {len(study.seeds)} seeds (Holm-corrected verdicts)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18 - 0.6 / max(1, len(rows))), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_path(steps: list, path: Path) -> Path:
    """An ablation path: validation and test accuracy (mean ± sample std over seeds) after each step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(steps))
    for index, label in ((1, "validation accuracy (chooses each step)"), (2, "test accuracy")):
        points = [(i, s[index].mean, s[index].std) for i, s in enumerate(steps) if s[index] is not None]
        if points:
            xs, means, stds = (np.array(v) for v in zip(*points, strict=True))
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
    ax.set_xticks(x, [s[0] for s in steps])
    ax.set_ylabel("accuracy")
    ax.set_title("ablation path: from the baseline, the best component first")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
