"""The results of an ablation study (runner.ablation): each component's effect, judged, and what a
researcher takes away: ablation.md, ablation.csv, ablation.tex and the plots.

An effect is the per-seed difference of test accuracy (on - off) between two variants that ran the
same seeds: its mean with a 95% interval, a paired t-test Holm-corrected across the study's effects,
and an equivalence test against the margin (runner.analysis.stats). `write` makes the files from the
study's ablation.json and its runs' metrics.json, at the sweep's end and from `report`.
"""

import csv
import itertools
import statistics
from dataclasses import dataclass
from pathlib import Path

from runner.ablation import Study, planned, run_dir, variant_name
from runner.analysis import stats
from runner.analysis.runs import read_metrics

CSV_COLUMNS = ("component", "design", "effect", "ci_low", "ci_high", "p", "p_holm", "verdict", "seeds_needed")


def accuracies(sweep_dir: Path, variant: str, seeds: list[int], key: str = "test_acc") -> dict[int, float]:
    """Each seed's `key` of a variant's completed runs."""
    found = {}
    for seed in seeds:
        metrics = read_metrics(run_dir(sweep_dir, variant, seed) / "metrics.json")
        if metrics.get("status") == "completed" and metrics.get(key) is not None:
            found[seed] = metrics[key]
    return found


def differences(on: dict[int, float], off: dict[int, float]) -> list[float]:
    """The per-seed differences on - off, over the seeds both completed."""
    return [on[s] - off[s] for s in sorted(on.keys() & off.keys())]


@dataclass
class Row:
    component: str  # its name, or "a × b" for an interaction
    contrast: str  # what is compared: "full-bn → full"
    effect: stats.Effect


def effects(study: Study, sweep_dir: Path) -> list[Row]:
    """Each component's effect in the study's design, judged together (Holm across them)."""
    acc = {name: accuracies(sweep_dir, name, study.seeds) for name in study.variants}
    names = study.names
    rows = []
    if study.design == "leave_one_out":
        for n in names:
            off = variant_name(frozenset(names) - {n}, names)
            rows.append(Row(n, f"{off} → full", stats.effect(differences(acc["full"], acc.get(off, {})), study.margin)))
    elif study.design == "add_one_in":
        for n in names:
            on = variant_name(frozenset({n}), names)
            rows.append(
                Row(n, f"baseline → {on}", stats.effect(differences(acc.get(on, {}), acc["baseline"]), study.margin))
            )
    elif study.design == "path":
        state: frozenset[str] = frozenset()
        for step in study.path:
            before = variant_name(state, names)
            state = state | {step["on"]}
            after = variant_name(state, names)
            rows.append(
                Row(step["on"], f"{before} → {after}", stats.effect(differences(acc[after], acc[before]), study.margin))
            )
    else:
        rows = factorial_rows(study, acc)
    judged = stats.judge({row.component: row.effect for row in rows})
    return [Row(row.component, row.contrast, judged[row.component]) for row in rows]


def factorial_rows(study: Study, acc: dict[str, dict[int, float]]) -> list[Row]:
    """Main effects (mean over the states with the component on, minus off) and two-way interactions
    (how much more a helps with b on than with b off), per seed, over the seeds every state completed."""
    names = study.names
    states = planned("factorial", names)
    seeds = sorted(set.intersection(*(set(acc.get(variant_name(s, names), {})) for s in states)))

    def mean_where(seed: int, condition) -> float:
        return statistics.fmean(acc[variant_name(s, names)][seed] for s in states if condition(s))

    rows = []
    for n in names:
        diffs = [mean_where(s, lambda st, n=n: n in st) - mean_where(s, lambda st, n=n: n not in st) for s in seeds]
        rows.append(Row(n, "off → on, over the other components' states", stats.effect(diffs, study.margin)))
    for a, b in itertools.combinations(names, 2):

        def cell(seed: int, a_on: bool, b_on: bool, a=a, b=b) -> float:
            return mean_where(seed, lambda st: (a in st) == a_on and (b in st) == b_on)

        diffs = [
            (cell(s, True, True) - cell(s, False, True)) - (cell(s, True, False) - cell(s, False, False)) for s in seeds
        ]
        rows.append(
            Row(f"{a} × {b}", f"{a}'s effect with {b} on minus with {b} off", stats.effect(diffs, study.margin))
        )
    return rows


# --- what a researcher takes away --------------------------------------------------------------------


def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def p_text(p: float | None) -> str:
    return "-" if p is None else f"{p:.2g}"


def write(sweep_dir: Path, out: Path) -> list[Row]:
    """ablation.md, ablation.csv, ablation.tex and plots/ablation_*.png in `out` for the study in `sweep_dir`."""
    study = Study.load(sweep_dir)
    rows = effects(study, sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "ablation.csv", study, rows)
    write_markdown(out / "ablation.md", study, sweep_dir, rows)
    write_latex(out / "ablation.tex", study, sweep_dir, rows)
    from runner.analysis import plots

    plots.write_forest(rows, study, out / "plots" / "ablation_effects.png")
    if study.design == "path":
        plots.write_path(path_accuracies(study, sweep_dir), out / "plots" / "ablation_path.png")
    return rows


def write_csv(path: Path, study: Study, rows: list[Row]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            e = row.effect
            low, high = e.ci if e.ci else (None, None)
            writer.writerow([row.component, study.design, e.mean, low, high, e.p, e.p_holm, e.verdict, e.seeds_needed])


def variant_means(study: Study, sweep_dir: Path) -> dict[str, stats.Comparison]:
    found = {}
    for name in study.variants:
        values = list(accuracies(sweep_dir, name, study.seeds).values())
        if values:
            found[name] = stats.summarize(values)
    return found


def path_accuracies(
    study: Study, sweep_dir: Path
) -> list[tuple[str, stats.Comparison | None, stats.Comparison | None]]:
    """Along the path: each step's variant, its validation and its test accuracy."""
    steps, state = [("baseline", frozenset())], frozenset()
    for step in study.path:
        state = state | {step["on"]}
        steps.append((f"+{step['on']}", state))
    found = []
    for label, on in steps:
        name = variant_name(on, study.names)
        val = list(accuracies(sweep_dir, name, study.seeds, "best_val_acc").values())
        test = list(accuracies(sweep_dir, name, study.seeds).values())
        found.append((label, stats.summarize(val) if val else None, stats.summarize(test) if test else None))
    return found


def seeds_text(e: stats.Effect) -> str:
    if e.seeds_needed is not None:
        return str(e.seeds_needed)
    return f"> {stats.MAX_SEEDS}" if e.verdict == "undecided" and e.n > 1 and e.std > 0 else "-"


def write_markdown(path: Path, study: Study, sweep_dir: Path, rows: list[Row]) -> None:
    lines = [
        f"# Ablation: {study.design.replace('_', '-')}",
        "",
        (
            f"Components: {', '.join(study.names)}; seeds {study.seeds[0]}..{study.seeds[-1]} ({len(study.seeds)}); "
            f"equivalence margin ±{study.margin:g} test accuracy. Effect: the mean per-seed difference of test "
            "accuracy (on - off, paired by seed) with its 95% Student t interval; p: the paired t-test, Holm-corrected "
            f"across the {len(rows)} effects; equivalent: two one-sided tests within the margin at {stats.ALPHA}; "
            "seeds needed: for an undecided effect, the seeds that would decide it at 80% power from its observed spread."
        ),
        "",
        "| component | off → on | effect | 95% CI | p (Holm) | verdict | seeds needed |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        e = row.effect
        ci = f"{e.ci[0]:+.4f} – {e.ci[1]:+.4f}" if e.ci else "-"
        lines.append(
            f"| {row.component} | {row.contrast} | {fmt(e.mean)} | {ci} | {p_text(e.p_holm)} | {e.verdict} | "
            f"{seeds_text(e)} |"
        )
    lines += ["", "| variant | components on | n | test acc |", "|---|---|---|---|"]
    for name, c in variant_means(study, sweep_dir).items():
        on = ", ".join(study.variants[name]) or "none"
        lines.append(f"| {name} | {on} | {c.n} | {c.mean:.4f} ± {c.std:.4f} |")
    if study.path:
        lines += ["", "Path (each step chosen on mean validation accuracy):", ""]
        for i, step in enumerate(study.path, 1):
            tried = ", ".join(f"{k} {v:.4f}" for k, v in sorted(step["val_acc"].items(), key=lambda kv: -kv[1]))
            lines.append(f"{i}. +{step['on']} (val acc of the candidates: {tried})")
    path.write_text("\n".join(lines) + "\n")


def tex(text: str) -> str:
    """Text for LaTeX: its special characters escaped."""
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                          ("$", r"\$"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):  # fmt: skip
        text = text.replace(char, escaped)
    return text.replace("×", r"$\times$").replace("→", r"$\to$")


def write_latex(path: Path, study: Study, sweep_dir: Path, rows: list[Row]) -> None:
    """A booktabs table to paste into a paper: each effect as mean ± half its interval in points of
    accuracy, the verdict's significance marked (* p_Holm < 0.05), and the variants' test accuracy,
    the best in bold. Needs \\usepackage{booktabs}."""
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{llrl}",
        r"\toprule",
        r"Component & Off $\to$ on & Effect (pts) & Verdict \\",
        r"\midrule",
    ]
    for row in rows:
        e = row.effect
        half = (e.ci[1] - e.ci[0]) / 2 if e.ci else None
        value = "--" if e.mean is None else f"{100 * e.mean:+.2f}"
        value += f" $\\pm$ {100 * half:.2f}" if half is not None else ""
        star = "$^{*}$" if e.p_holm is not None and e.p_holm < stats.ALPHA else ""
        lines.append(f"{tex(row.component)} & {tex(row.contrast)} & {value}{star} & {tex(e.verdict)} \\\\")
    means = variant_means(study, sweep_dir)
    if means:
        best = max(means, key=lambda n: means[n].mean)
        lines += [r"\midrule", r"Variant & Components on & Test acc. (\%) & \\", r"\midrule"]
        for name, c in means.items():
            half = (c.ci[1] - c.ci[0]) / 2 if c.ci else None
            value = f"{100 * c.mean:.2f}" + (f" $\\pm$ {100 * half:.2f}" if half is not None else "")
            if name == best:
                value = r"\textbf{" + value + "}"
            lines.append(f"{tex(name)} & {tex(', '.join(study.variants[name]) or 'none')} & {value} & \\\\")
    caption = (
        f"Ablation ({tex(study.design.replace('_', '-'))}, {len(study.seeds)} seeds): effect on test accuracy in "
        r"points, mean $\pm$ half the 95\% interval of the per-seed differences; $^{*}$ paired $t$-test, "
        f"Holm-corrected, $p<{stats.ALPHA}$; equivalence margin $\\pm${100 * study.margin:g} points."
    )
    lines += [r"\bottomrule", r"\end{tabular}", f"\\caption{{{caption}}}", r"\end{table}"]
    path.write_text("\n".join(lines) + "\n")


def show(rows: list[Row], out: Path) -> None:
    """The effects as a table on the terminal, and where the files are."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ablation: effect of each component on test accuracy (paired by seed)", title_justify="left")
    for column in ("component", "off → on", "effect", "95% CI", "p (Holm)", "verdict", "seeds needed"):
        table.add_column(
            column, justify="right" if column in ("effect", "95% CI", "p (Holm)", "seeds needed") else "left"
        )
    for row in rows:
        e = row.effect
        ci = f"{e.ci[0]:+.4f} – {e.ci[1]:+.4f}" if e.ci else "-"
        table.add_row(row.component, row.contrast, fmt(e.mean), ci, p_text(e.p_holm), e.verdict, seeds_text(e))
    console = Console() if Console().is_terminal else Console(width=200)
    console.print(table)
    console.print(
        f"Ablation: {out / 'ablation.md'}, {out / 'ablation.csv'}, {out / 'ablation.tex'}; plots: {out / 'plots'}",
        soft_wrap=True,
    )
