"""Comparisons of many runs: one row per run (summary.csv), one row per variant (summary.md),
plots (plots/*.png) and a table on the terminal.

A variant is a set of runs that differ only in `seed`. Runs are told apart by the choices
and values that differ between them, so runs of different sweeps can be compared too.
Written at the end of every sweep (runner.cli.app.SweepSummary) and by `report PATH ...`.
"""

import argparse
import csv
import os
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from runner import GROUPS, provenance
from runner.ablation import STUDY_FILE
from runner.analysis import stats
from runner.analysis.runs import Run, ended_under, follows_a_choice, same

RUN_COLUMNS = (
    "status",
    "test_acc",
    "test_loss",
    "best_val_acc",
    "final_train_loss",
    "epochs",
    "train_seconds",
    "num_params",
)


@dataclass
class Variant:
    label: str
    runs: list[Run] = field(default_factory=list)

    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.metrics["status"] == "completed"]

    def stat(self, key: str) -> tuple[float | None, float | None]:
        """Mean and sample std over the completed runs (std 0 for one run)."""
        values = [getattr(r, key) if key == "final_train_loss" else r.metrics[key] for r in self.completed()]
        values = [v for v in values if v is not None]
        if not values:
            return None, None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    def statuses(self) -> str:
        counts: dict[str, int] = {}
        for r in self.runs:
            counts[r.metrics["status"]] = counts.get(r.metrics["status"], 0) + 1
        return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def distinguishing_keys(runs: list[Run]) -> list[str]:
    """The choices that differ between runs, and the values that differ among runs of the same choices
    (so `model=plain,bn` is labelled by `model`, not by the model.batch_norm it implies: a key that
    follows a choice, runner.analysis.runs). The seed tells the runs of a variant apart, not variants;
    a key that some runs lack (they were made before ablate had it) tells no runs apart."""
    keys = sorted(set.intersection(*(set(r.values) for r in runs))) if runs else []
    differing = [k for k in keys if k != "seed" and len({same(r.values.get(k)) for r in runs}) > 1]
    labels = [g for g in GROUPS if g in differing]
    labels += [k for k in differing if "." in k and not follows_a_choice(k, runs)]
    return labels


def variants(runs: list[Run]) -> tuple[list[str], list[Variant]]:
    keys = distinguishing_keys(runs)
    groups: dict[str, Variant] = {}
    for run in runs:
        label = ",".join(f"{k}={run.values.get(k)}" for k in keys) or "all runs"
        groups.setdefault(label, Variant(label)).runs.append(run)
    return keys, list(groups.values())


def _pm(mean: float | None, std: float | None, digits: int = 4) -> str:
    return "-" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_csv(path: Path, keys: list[str], runs: list[Run]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", *keys, "seed", *RUN_COLUMNS])
        for r in runs:
            cells = [r.final_train_loss if c == "final_train_loss" else r.metrics.get(c) for c in RUN_COLUMNS]
            writer.writerow([str(r.dir), *(r.values.get(k) for k in keys), r.metrics.get("seed"), *cells])


def variant_rows(found: list[Variant]) -> tuple[list[str], list[list[str]], str]:
    """The per-variant table: best first by mean test accuracy, each with its 95% confidence interval
    and its distance to the best, judged by runner.analysis.stats (the paired t-test where every
    variant ran the same seeds, else Welch's); and the test it used."""
    scored = {v.label: [r for r in v.completed() if r.metrics.get("test_acc") is not None] for v in found}
    samples = {label: [r.metrics["test_acc"] for r in runs] for label, runs in scored.items()}
    seeds = {label: [r.metrics.get("seed") for r in runs] for label, runs in scored.items()}
    best, comparisons = stats.compare(samples, seeds) if any(samples.values()) else (None, {})
    ranked = sorted(found, key=lambda v: -comparisons[v.label].mean if v.label in comparisons else 1)
    header = [
        "variant",
        "n",
        "test acc",
        "95% CI",
        "Δ to best",
        "best val acc",
        "final train loss",
        "seconds",
        "params",
        "runs",
    ]
    rows = []
    for v in ranked:
        c = comparisons.get(v.label)
        if c is None:
            delta, ci = "-", "-"
        else:
            ci = f"{c.ci[0]:.4f} – {c.ci[1]:.4f}" if c.ci else "-"
            gap = c.mean - comparisons[best].mean
            p = f"p={c.p_holm:.2g}, " if c.p_holm is not None else ""
            delta = "best" if v.label == best else f"{gap:+.4f}, {p}{c.verdict}"
        seconds = v.stat("train_seconds")[0]
        params = v.runs[0].metrics.get("num_params") if v.runs else None
        rows.append(
            [
                v.label,
                str(len(v.completed())),
                _pm(*v.stat("test_acc")),
                ci,
                delta,
                _pm(*v.stat("best_val_acc")),
                _pm(*v.stat("final_train_loss")),
                "-" if seconds is None else f"{seconds:.1f}",
                "-" if params is None else f"{params:,}",
                v.statuses() or "no run (no trial completed)",
            ]
        )
    test = stats.PAIRED if any(c.test == stats.PAIRED for c in comparisons.values()) else "Welch's t-test"
    return header, rows, test


def write_markdown(path: Path, header: list[str], rows: list[list[str]], sources: list[Path], test: str) -> None:
    paired = " (every variant ran the same seeds: the differences are paired by seed)" if test == stats.PAIRED else ""
    lines = [
        "# Summary",
        "",
        (
            f"Runs from: {', '.join(str(s) for s in sources)}. Mean ± std (sample) and the 95% confidence interval "
            f"of the mean over the completed runs of each variant. Δ to best: p is {test} against the best "
            f"variant{paired}, Holm-corrected across the variants; 'beyond noise' when p < {stats.ALPHA}, else "
            "'within noise'."
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [f"**{c}**" if "best" in row and i == 0 else c for i, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def short(value) -> str:
    """A tuned value for the table: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def studies(sweep_dir: Path, found: list[Variant]) -> dict:
    """For a tuned sweep (runner.tune): each variant's Optuna study, from the sweep's study.db."""
    import optuna

    from runner.tune import STUDY_FILE

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(sweep_dir / STUDY_FILE).resolve()}"
    return {v.label: optuna.load_study(study_name=v.label, storage=storage) for v in found}


def study_names(sweep_dir: Path) -> list[str]:
    """The variants of a tuned sweep, one study each in its study.db, in the order they were tuned."""
    import optuna

    from runner.tune import STUDY_FILE

    return optuna.get_all_study_names(f"sqlite:///{(sweep_dir / STUDY_FILE).resolve()}")


ENDED = {"complete": "completed", "fail": "failed"}  # Optuna's trial states, as the runs' statuses say it


def tuning_columns(sweep_dir: Path, tuned: dict) -> dict[str, list[str]]:
    """Each variant's tuned values (its best trial's) and how its trials ended: each trial's run
    status (completed, pruned, diverged, ...), or its state in the study where it left no run."""
    from runner.tune import trial_status

    columns = {}
    for label, study in tuned.items():
        ended = [
            trial_status(sweep_dir / "tune" / study.study_name / f"trial-{t.number}") or ENDED.get(t.state.name.lower(), t.state.name.lower())
            for t in study.trials
        ]  # fmt: skip
        counts = {s: ended.count(s) for s in sorted(set(ended))}
        best = study.best_trial if any(t.value is not None for t in study.trials) else None
        columns[label] = [
            ", ".join(f"{k}={short(v)}" for k, v in best.params.items()) if best else "-",
            ", ".join(f"{n} {s}" for s, n in counts.items()) or "-",
        ]
    return columns


def importances(tuned: dict) -> dict[str, dict[str, float]]:
    """Each variant's tuned keys by importance, from its study: fANOVA (Optuna's
    FanovaImportanceEvaluator, seed 0: the share of the validation accuracy's variance over the search
    space that each key explains, from a random forest fit to the trials; Optuna's default, and it
    uses every trial, where PED-ANOVA looks at the top quantile, one trial of eight). A study with fewer
    than two completed trials, or whose trials all scored the same (no variance to explain: every
    trial diverged), has none."""
    import optuna

    found = {}
    for label, study in tuned.items():
        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(completed) < 2 or not completed[0].params or len({t.value for t in completed}) < 2:
            continue
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        found[label] = {
            k: float(v) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()
        }
    return found


def importance_lines(found: dict[str, dict[str, float]]) -> list[str]:
    """The importances as markdown lines, under the table."""
    if not found:
        return []
    lines = [
        "",
        "Importance of each tuned key (fANOVA over each variant's trials, Optuna's FanovaImportanceEvaluator):",
        "",
    ]
    for label, keys in found.items():
        lines.append(f"- {label}: " + ", ".join(f"{k} {v:.2f}" for k, v in keys.items()))
    return lines


def build_report(
    paths: list[Path], out: Path, quiet: bool = False, tuned: Path | None = None, by_folder: bool = False
) -> Path | None:
    """summary.csv, summary.md and plots/ in `out` for the runs under `paths`; prints the table.
    `tuned`: the sweep directory of a tuned sweep, whose final runs `paths` are. `by_folder`: each
    variant named by the folder of its runs (an ablation study's `full-bn/seed=0`), as a tuned
    sweep's are, not by the values that differ."""
    runs = ended_under(paths)
    if not runs and tuned is None:
        print(f"report: no run directory (with metrics.json) under {', '.join(map(str, paths))}", file=sys.stderr)
        return None
    out.mkdir(parents=True, exist_ok=True)
    keys, found = variants(runs)
    if tuned is not None or by_folder:  # labelled by what the command varied, not by the values each variant chose
        found = [
            Variant(name, [r for r in runs if r.dir.parent.name == name])
            for name in dict.fromkeys(r.dir.parent.name for r in runs)
        ]
        if tuned is not None:  # variants with no final runs
            found += [Variant(name) for name in study_names(tuned) if name not in {v.label for v in found}]
    write_csv(out / "summary.csv", keys, runs)
    header, rows, test = variant_rows(found)
    tuned_studies = studies(tuned, found) if tuned is not None else {}
    if tuned_studies:
        columns = tuning_columns(tuned, tuned_studies)
        header = [header[0], "tuned", "trials", *header[1:]]
        rows = [[row[0], *columns[row[0]], *row[1:]] for row in rows]
    write_markdown(out / "summary.md", header, rows, paths, test)
    made = provenance.how_to_reproduce(runs[0].dir) if runs else None
    if made:
        with open(out / "summary.md", "a") as f:
            f.write(
                f"\nMade with {made}. Again, run by run: `rerun {paths[0] if len(paths) == 1 else '<run or sweep directory>'}`.\n"
            )
    extra = importance_lines(importances(tuned_studies)) if tuned_studies else []
    if extra:
        with open(out / "summary.md", "a") as f:
            f.write("\n".join(extra) + "\n")
    from runner.analysis import plots

    by_label = {v.label: v for v in found}
    ranked = [by_label[row[0]] for row in rows]  # the table's order, best first
    plots.write_plots(ranked, out / "plots")
    plots.write_sensitivity(
        {v.label: tuned_studies[v.label] for v in ranked if v.label in tuned_studies}, out / "plots"
    )
    if not quiet:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{len(runs)} runs, {len(found)} variants", title_justify="left")
        for column in header:
            table.add_column(column, justify="left" if column in ("variant", "runs", "Δ to best") else "right")
        for row in rows:
            table.add_row(*row, style="bold green" if "best" in row else None)
        console = Console() if Console().is_terminal else Console(width=200)
        console.print(table)
        for line in extra[1:]:
            console.print(line, soft_wrap=True)
        console.print(f"Summary: {out / 'summary.md'}, {out / 'summary.csv'}; plots: {out / 'plots'}", soft_wrap=True)
        if made:
            console.print(f"Made with {made}", soft_wrap=True, markup=False)  # a command holds [brackets]
        logdir = paths[0] if len(paths) == 1 else os.path.commonpath([str(p.resolve()) for p in paths])
        console.print(f"TensorBoard: {tensorboard_command()} --logdir {logdir}", soft_wrap=True)
    return out


def is_tuned(sweep_dir: Path) -> bool:
    """A tuned sweep's directory (runner.tune): its study, trials and final runs."""
    return all((sweep_dir / name).exists() for name in ("final", "tune", "study.db"))


def report_sweep(sweep_dir: Path, out: Path) -> Path | None:
    """The summary of one sweep; of a tuned sweep, its final runs, with its studies; of an ablation
    study, its effects too (runner.analysis.ablation)."""
    if is_tuned(sweep_dir):
        return build_report([sweep_dir / "final"], out, tuned=sweep_dir)
    study = (sweep_dir / STUDY_FILE).exists()
    written = build_report([sweep_dir], out, by_folder=study)
    if study:
        from runner.analysis import ablation

        ablation.show(ablation.write(sweep_dir, out), out)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="report", description="Compare runs: summary.csv, summary.md and plots of the runs under the PATHs."
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run or sweep directories (searched recursively)")
    parser.add_argument("--out", type=Path, help="where to write (default: the PATH when there is one, else ./report)")
    args = parser.parse_args(argv)
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        print(f"report: PATH={missing[0]} does not exist; allowed: run or sweep directories", file=sys.stderr)
        return 2
    out = args.out or (args.paths[0] if len(args.paths) == 1 else Path("report"))
    if len(args.paths) == 1:
        return 0 if report_sweep(args.paths[0], out) else 1
    return 0 if build_report(args.paths, out) else 1


def tensorboard_command() -> str:
    """`tensorboard` when it is on the PATH, else the one installed beside this Python (.venv/bin/tensorboard)."""
    beside = Path(sys.executable).parent / "tensorboard"
    if shutil.which("tensorboard") == str(beside) or not beside.exists():
        return "tensorboard"
    return os.path.relpath(beside) if beside.is_relative_to(Path.cwd()) else str(beside)
