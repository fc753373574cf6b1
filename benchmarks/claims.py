"""The measured tables of docs/claims.md and docs/speed.md, each written into its page by this script
from the runs or the benchmark that measured it, with what made it: the commit (and whether its tree
had changes), the machine, the date and the exact command.

    .venv/bin/python benchmarks/claims.py --list               # the tables, their pages and commands
    .venv/bin/python benchmarks/claims.py NAME [NAME ...]      # measure again, rewrite those tables
    .venv/bin/python benchmarks/claims.py NAME --from DIR ...  # rewrite from runs made already (one DIR per command)
    .venv/bin/python benchmarks/claims.py --all                # every table this machine can measure (hours)

A table sits in its page between `<!-- claims.py NAME -->` and `<!-- /claims.py -->`; the script
writes what lies between them and nothing else. A sweep's or a study's table is read from its runs
(their summary.md or ablation.json, and the provenance.json of each run: the commit, the machine,
the date and the command are the runs' own); a benchmark's is its printed output, with the commit
and machine this script ran it on. Runs go to outputs/claims/NAME-<date>-<time>/.
"""

import argparse
import datetime
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner import provenance  # the checkout's runner, also when run from elsewhere

SHORT = ["data.train_size=10000", "data.val_fraction=0.05"]  # the claims' shortened Fashion-MNIST


@dataclass
class Table:
    """One table of a page: the commands that measure it and how it is written from their output."""

    name: str
    page: str  # under docs/
    commands: list[list[str]]  # argv after `run` (a sweep or a study), or a benchmark: ["benchmarks/x.py", ...]
    kind: str  # sweep | tuned | study | benchmark
    columns: list[str] = field(default_factory=list)  # a sweep's: the summary's columns to show
    probe: str | None = None  # a sweep's: a TensorBoard scalar to show, its last value's range over the seeds
    needs: str | None = None  # "cuda": measured on a CUDA GPU only

    def argv(self, command: list[str], out: Path | None) -> list[str]:
        if self.kind == "benchmark":
            return ["bash" if command[0].endswith(".sh") else sys.executable, *command]
        return [sys.executable, "-m", "runner", *command, f"hydra.sweep.dir={out}"]

    def shown(self, command: list[str]) -> str:
        return " ".join(["python" if self.kind == "benchmark" else "run", *command])


def claim(name: str, *extra: str, columns: tuple[str, ...] = (), probe: str | None = None) -> Table:
    return Table(name, "claims.md", [["-m", f"experiment={name}", *SHORT, *extra]], "sweep", list(columns), probe)


def tuned(name: str) -> Table:
    five = [f"experiment={name}", *SHORT, "trainer.max_epochs=5"]
    return Table(f"{name}_tuned", "claims.md", [["-m", *five], ["-m", *five, "hydra/sweeper=tune"]], "tuned")


def study(design: str, *extra: str) -> Table:
    command = ["-m", "experiment=fmnist_speed", "hydra/sweeper=ablation", f"hydra.sweeper.design={design}",
               "hydra.sweeper.seeds=5", *extra]  # fmt: skip
    return Table(f"fmnist_speed_{design}", "claims.md", [command], "study")


GRAD_RATIO = "probe/grad_norm/first_to_last"
TABLES = {
    t.name: t
    for t in [
        claim("activations", "trainer.max_epochs=3", columns=("runs",), probe=GRAD_RATIO),
        claim("leaky_small", columns=("final train loss", "params")),
        claim("normalization", columns=("final train loss", "params")),
        claim("residual", "trainer.max_epochs=3", columns=("params",), probe=GRAD_RATIO),
        claim("optimizers", columns=("final train loss", "params")),
        claim("schedules", columns=("best val acc", "params")),
        tuned("optimizers"),
        tuned("schedules"),
        tuned("normalization"),
        study("leave_one_out"),
        study("path", "data.val_fraction=0.1"),
        Table("time_to_accuracy", "speed.md", [["benchmarks/time_to_accuracy.py"]], "benchmark"),
        Table(
            "freeze", "speed.md", [["benchmarks/time_to_accuracy.py", "--versus", "trainer.freeze=null"]], "benchmark"
        ),
        Table("peer_lightning", "speed.md", [["benchmarks/time_to_accuracy.py", "--peer", "lightning"]], "benchmark"),
        Table("job_overhead", "speed.md", [["benchmarks/job_overhead.py"]], "benchmark"),
        Table("step_costs", "speed.md", [["benchmarks/step_costs.py"]], "benchmark"),
        Table("startup", "speed.md", [["benchmarks/startup.py"]], "benchmark"),
        Table("sweep_launchers", "speed.md", [["benchmarks/sweep_launchers.py"]], "benchmark"),
        Table("throughput", "speed.md", [["benchmarks/throughput.py"]], "benchmark"),
        Table(
            "compute",
            "speed.md",
            [["benchmarks/throughput.py", "--compute", "--images", "2560", "--rounds", "2"]],
            "benchmark",
        ),
        Table("gpu_check", "speed.md", [["benchmarks/gpu_check.sh"]], "benchmark", needs="cuda"),
    ]
}
BASE = ("variant", "n", "test acc", "Δ to best")


# --- what made a table ---------------------------------------------------------------------------------


def machine_text(machine: dict) -> str:
    cpu = machine.get("cpu") or {}
    flags = cpu.get("flags") or []
    bf16 = "native bf16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "no native bf16"
    text = f"{cpu.get('model') or 'an unknown CPU'} ({cpu.get('cores')} cores, {bf16})"
    gpu = machine.get("gpu")
    return f"{gpu['name']} (driver {gpu['driver']}, CUDA {gpu['cuda']}), {text}" if gpu else text


def code_text(ablate: dict, changed: list[str] | None = None) -> str:
    """The commit, and whether its tree had changes: to its Markdown docs alone where `changed` (the
    files of the recorded diff) says so."""
    if not ablate.get("commit"):
        return f"ablate {ablate.get('version') or 'of unknown version'}"
    text = f"commit {ablate['commit'][:7]}"
    if ablate.get("dirty"):
        docs_only = changed and all(f.endswith(".md") for f in changed)
        text += " with uncommitted changes" + (" to its docs alone" if docs_only else "")
    return text


def changed_files(run_dir: Path) -> list[str]:
    """The files a run's recorded diff (provenance/ablate.diff) changes."""
    diff = run_dir / provenance.FOLDER / "ablate.diff"
    return re.findall(r"^diff --git a/(\S+) ", diff.read_text(), re.MULTILINE) if diff.is_file() else []


def from_runs(folders: list[Path], commands: list[str]) -> str:
    """What made the runs under `folders`, from their provenance.json: one line."""
    files = [p for f in folders for p in sorted(f.rglob(provenance.FILE))]
    records = [json.loads(p.read_text()) for p in files]
    if not records:
        return "made before runs recorded their provenance"
    first = {code_text(r["ablate"], changed_files(p.parent)) for p, r in zip(files, records, strict=True)}
    resumed = {code_text(start["ablate"]) for r in records for start in r.get("resumed", [])}  # under other code
    codes = sorted(first | resumed)
    machines = sorted({machine_text(r["machine"]) for r in records})
    metrics = [p for f in folders for p in f.rglob("metrics.json")]
    ended = max(p.stat().st_mtime for p in metrics)
    training = sum(json.loads(p.read_text()).get("train_seconds") or 0 for p in metrics)  # pauses between runs left out
    typed = list(dict.fromkeys(r.get("command") for r in records if r.get("command"))) or commands
    return (
        f"Measured at {', '.join(codes)}, on {'; '.join(machines)}, {day(ended)}: {len(records)} runs, "
        f"{training:.0f} s of training, by " + "; ".join(f"`{c}`" for c in typed)
    )


def from_here(commands: list[str], seconds: float) -> str:
    ablate, _ = provenance.code()
    machine = {"cpu": provenance.cpu(), "gpu": provenance.gpu()}
    return (
        f"Measured at {code_text(ablate)}, on {machine_text(machine)}, {day(time.time())}, in {seconds:.0f} s, by "
        + "; ".join(f"`{c}`" for c in commands)
    )


def day(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d")


# --- tables from runs ------------------------------------------------------------------------------------


def markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """The markdown tables of `text`, in order: each its header and rows."""
    tables, lines = [], text.splitlines() + [""]
    current: list[list[str]] = []
    for line in lines:
        if line.startswith("|"):
            if not line.startswith("|---"):
                current.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
        elif current:
            tables.append((current[0], current[1:]))
            current = []
    return tables


def render(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]
    )


def probe_range(folder: Path, label: str, tag: str) -> str:
    """The range over a variant's seeds of `tag`'s last value in their TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    last = []
    for run in sorted(p.parent for p in folder.rglob("metrics.json")):
        if label not in run.name.split(","):
            continue
        events = EventAccumulator(str(run), size_guidance={"scalars": 0})
        events.Reload()
        if tag in events.Tags()["scalars"]:
            last.append(events.Scalars(tag)[-1].value)
    if not last:
        return "-"
    return f"{min(last):.2g}" if max(last) == min(last) else f"{min(last):.2g} to {max(last):.2g}"


def sweep_table(table: Table, folder: Path) -> str:
    header, rows = markdown_tables((folder / "summary.md").read_text())[0]
    wanted = [*BASE, *table.columns]
    shown = [[row[header.index(c)] for c in wanted] for row in rows]
    if table.probe:
        wanted.append(f"`{table.probe}`")
        for row in shown:
            row.append(probe_range(folder, row[0].strip("*"), table.probe))
    return render(wanted, shown)


def tuned_table(folders: list[Path]) -> str:
    """The untuned sweep and the tuned one, a variant per row."""
    header, untuned = markdown_tables((folders[0] / "summary.md").read_text())[0]
    tuned_header, tuned_rows = markdown_tables((folders[1] / "summary.md").read_text())[0]

    def key(label: str) -> str:
        return label.strip("*").split("=")[-1]

    tuned_by = {key(r[0]): r for r in tuned_rows}
    rows = []
    for row in untuned:
        t = tuned_by.get(key(row[0]), [])
        cells = [t[tuned_header.index(c)] if t else "-" for c in ("tuned", "trials", "test acc", "Δ to best")]
        rows.append([key(row[0]), row[header.index("test acc")], row[header.index("Δ to best")], *cells])
    return render(
        ["variant", "untuned: test acc", "Δ to best", "tuned", "trials", "tuned: test acc", "Δ to best"], rows
    )


def study_table(folder: Path) -> str:
    from runner.ablation import Study
    from runner.analysis import ablation

    text = "\n\n".join(render(header, rows) for header, rows in markdown_tables((folder / "ablation.md").read_text()))
    study = Study.load(folder)
    if study.design == "path":
        steps = ablation.path_accuracies(study, folder)
        lines = [
            [label, *(f"{c.mean:.4f} ± {c.std:.4f}" if c else "-" for c in (val, test))] for label, val, test in steps
        ]
        text += "\n\n" + render(["step", "val acc (chooses the step)", "test acc"], lines)
    return text


# --- the pages -----------------------------------------------------------------------------------------------


def block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- claims\.py {re.escape(name)} -->\n)(.*?)(<!-- /claims\.py -->)", re.DOTALL)


def write_block(table: Table, text: str, docs: Path = ROOT / "docs") -> None:
    page = docs / table.page
    content = page.read_text()
    found = block(table.name).search(content)
    if not found:
        raise SystemExit(f"error: {page} has no <!-- claims.py {table.name} --> block; add one where the table goes")
    page.write_text(content[: found.start(2)] + text.rstrip("\n") + "\n" + content[found.end(2) :])
    print(f"{table.name}: written into docs/{table.page}")


def measure(table: Table, given: list[Path] | None) -> str:
    """The table's text and the line that says what made it: from `given` folders, else measured now."""
    shown = [table.shown(c) for c in table.commands]
    if table.kind == "benchmark":
        start, outputs = time.time(), []
        for command in table.commands:
            print(f"{table.name}: {table.shown(command)}", flush=True)
            result = subprocess.run(table.argv(command, None), cwd=ROOT, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise SystemExit(
                    f"error: {table.shown(command)} failed (exit {result.returncode}): {result.stderr[-500:]}"
                )
            outputs.append(result.stdout.strip())
        return from_here(shown, time.time() - start) + ":\n\n```output\n" + "\n\n".join(outputs) + "\n```"
    folders = given or []
    if not folders:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        for i, command in enumerate(table.commands):
            out = ROOT / "outputs" / "claims" / f"{table.name}-{stamp}" / (str(i) if len(table.commands) > 1 else "")
            print(f"{table.name}: {table.shown(command)} hydra.sweep.dir={out.relative_to(ROOT)}", flush=True)
            result = subprocess.run(table.argv(command, out), cwd=ROOT, check=False, stdout=subprocess.DEVNULL)
            if result.returncode not in (0, 1):  # 1: some jobs failed, and the summary says which
                raise SystemExit(f"error: {table.shown(command)} failed (exit {result.returncode})")
            folders.append(out)
    if len(folders) != len(table.commands):
        raise SystemExit(
            f"error: --from gave {len(folders)} directories for {table.name}; allowed: {len(table.commands)}, "
            "one per command: " + "; ".join(shown)
        )
    if table.kind == "sweep":
        text = sweep_table(table, folders[0])
    elif table.kind == "tuned":
        text = tuned_table(folders)
    else:
        text = study_table(folders[0])
    return from_runs(folders, shown) + ":\n\n" + text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"tables: {', '.join(TABLES)}")
    parser.add_argument("--from", dest="given", nargs="+", type=Path, help="sweep or study directories made already")
    parser.add_argument("--list", action="store_true", help="the tables, their pages and commands")
    parser.add_argument("--all", action="store_true", help="every table this machine can measure")
    args = parser.parse_args()
    if args.list or not (args.names or args.all):
        for t in TABLES.values():
            needs = f"  (needs {t.needs})" if t.needs else ""
            print(f"{t.name:24s} docs/{t.page:10s} " + "; ".join(t.shown(c) for c in t.commands) + needs)
        return
    unknown = [n for n in args.names if n not in TABLES]
    if unknown:
        raise SystemExit(f"error: NAME={unknown[0]} is not a table; allowed: {', '.join(TABLES)}")
    if args.given and len(args.names) != 1:
        raise SystemExit("error: --from is for one table at a time; allowed: NAME --from DIR [DIR]")
    cuda = provenance.gpu() is not None
    measured, failed = (
        {},
        [],
    )  # every table first, then the pages: the tree stays as committed while tables are measured
    for name in args.names or list(TABLES):
        table = TABLES[name]
        if table.needs == "cuda" and not cuda:
            if args.all:
                continue
            raise SystemExit(f"error: {name} is measured on a CUDA GPU; this machine has none")
        try:
            measured[name] = measure(table, [p.resolve() for p in args.given] if args.given else None)
        except SystemExit as e:  # one table that fails leaves the others to be written
            failed.append(str(e))
    for name, text in measured.items():
        write_block(TABLES[name], text)
    if failed:
        raise SystemExit("\n".join(failed))


if __name__ == "__main__":
    main()
