"""`hydra/sweeper=ablation`: a real study of two components on the embedded digits, in every design,
in one sweep directory whose runs the designs share; its tables, its LaTeX, its refusals."""

import csv
import json
import re
import shutil
import subprocess

import pytest
from helpers import run_cli
from test_failed_jobs import MODEL

from runner.ablation import Study, job_number, variant_name
from runner.analysis.report import main as report_main
from runner.engine import failures

TINY = [
    "data.train_size=100",
    "data.batch_size=50",
    "model.channels=[4,8]",
    "model.hidden=[16]",
    "trainer.max_epochs=1",
]
COMPONENTS = [
    "+ablation.bn={off:{model:plain},on:{model:bn}}",
    # logging more often changes no bit of training: its effect must read `equivalent`, exactly 0
    "+ablation.logging={off:{trainer.log_every_n_steps:50},on:{trainer.log_every_n_steps:1}}",
]


def study(sweep_dir, design: str, *extra: str):
    return run_cli(
        "-m", "hydra/sweeper=ablation", f"hydra.sweeper.design={design}", "hydra.sweeper.seeds=2",
        f"hydra.sweep.dir={sweep_dir}", *TINY, *COMPONENTS, *extra,
    )  # fmt: skip


def metrics_mtimes(sweep_dir) -> dict:
    return {
        p.parent.relative_to(sweep_dir).as_posix(): p.stat().st_mtime_ns
        for p in sweep_dir.glob("*/seed=*/metrics.json")
    }


def read_csv(path) -> dict[str, dict]:
    with open(path) as f:
        return {row["component"]: row for row in csv.DictReader(f)}


@pytest.mark.slow  # four sweeps, eight runs and pdflatex: about 40 s on 2 cores
def test_every_design_runs_in_one_directory_sharing_its_runs_and_reports_paired_effects(tmp_path):
    sweep_dir = tmp_path / "study"
    first = study(sweep_dir, "leave_one_out")
    assert first.returncode == 0, first.stderr
    assert sorted(metrics_mtimes(sweep_dir)) == sorted(
        f"{v}/seed={s}" for v in ("full", "full-bn", "full-logging") for s in (0, 1)
    )
    rows = read_csv(sweep_dir / "ablation.csv")
    assert list(next(iter(rows.values()))) == [
        "component", "design", "effect", "ci_low", "ci_high", "p", "p_holm", "verdict", "seeds_needed",
    ]  # fmt: skip
    assert rows["logging"]["effect"] == "0.0" and rows["logging"]["verdict"] == "equivalent (within ±0.005)"
    assert rows["bn"]["design"] == "leave_one_out" and rows["bn"]["verdict"] in ("helps", "hurts", "undecided")
    assert (
        "ablation: effect of each component" in first.stdout
        and "| bn | full-bn → full |" in (sweep_dir / "ablation.md").read_text()
    )
    summary = (sweep_dir / "summary.md").read_text()
    assert "the paired t-test" in summary  # variants named as the study names them (the best in bold):
    assert re.search(r"^\| (\*\*)?full-bn(\*\*)? \|", summary, re.MULTILINE)
    hparams = json.loads((sweep_dir / "full-bn" / "seed=0" / "metrics.json").read_text())
    assert hparams["choices"]["model"] == "plain" and hparams["seed"] == 0

    before = metrics_mtimes(sweep_dir)
    second = study(sweep_dir, "add_one_in")
    assert second.returncode == 0, second.stderr
    after = metrics_mtimes(sweep_dir)
    assert {k: v for k, v in after.items() if k in before} == before  # shared runs are not run again
    assert sorted(set(after) - set(before)) == ["baseline/seed=0", "baseline/seed=1"]

    path = study(sweep_dir, "path")
    assert path.returncode == 0, path.stderr
    assert metrics_mtimes(sweep_dir) == after  # every state of the path ran already
    recorded = Study.load(sweep_dir)
    assert [step["on"] for step in recorded.path] in (["bn", "logging"], ["logging", "bn"])
    assert set(recorded.path[0]["val_acc"]) == {"bn", "logging"}
    assert (sweep_dir / "plots" / "ablation_path.png").is_file()
    assert (sweep_dir / "plots" / "ablation_effects.png").is_file()

    factorial = study(sweep_dir, "factorial")
    assert factorial.returncode == 0, factorial.stderr
    rows = read_csv(sweep_dir / "ablation.csv")
    assert list(rows) == ["bn", "logging", "bn × logging"]
    assert rows["logging"]["effect"] == "0.0" and rows["bn × logging"]["effect"] == "0.0"

    for name in ("ablation.md", "ablation.csv", "ablation.tex"):
        (sweep_dir / name).unlink()
    assert report_main([str(sweep_dir)]) == 0  # rebuilt from the study's directory alone
    assert read_csv(sweep_dir / "ablation.csv") == rows
    latex = (sweep_dir / "ablation.tex").read_text()
    assert r"\toprule" in latex and r"\textbf{" in latex and "bn $\\times$ logging" in latex
    if shutil.which("pdflatex"):
        document = tmp_path / "table.tex"
        document.write_text(
            "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage[utf8]{inputenc}\n\\begin{document}\n"
            + latex
            + "\\end{document}\n"
        )
        rendered = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", document.name],
            cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert rendered.returncode == 0, rendered.stdout[-2000:]
        assert (tmp_path / "table.pdf").stat().st_size > 1000


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        (["hydra.sweeper.design=stepwise"], "error: hydra.sweeper.design='stepwise' is not allowed; allowed: leave_one_out, add_one_in, path, factorial\n"),
        (["optimizer.lr=0.1,0.2"], "error: optimizer.lr=0.1,0.2 is not allowed in an ablation study (hydra/sweeper=ablation): it varies its components alone; allowed: one value per key, seeds by hydra.sweeper.seeds=N, components under ablation\n"),
        (["+ablation.flip={on:{data.augment:flip}}"], "error: ablation.flip={'on': {'data.augment': 'flip'}} is not allowed; allowed: a mapping with exactly the keys off and on, each of overrides: {off: {model: plain}, on: {model: bn}}\n"),
        (["+ablation.pool={off:{model.pool:max},on:{model.pool:min}}"], "error: model.pool='min' is not known; allowed: max, avg, null\n"),
        (["hydra.sweeper.design=path", "data.val_fraction=0"], "error: data.val_fraction=0 is not allowed in an ablation path (hydra.sweeper.design=path): each step is chosen on validation accuracy, never on the test set; allowed: 0 < val_fraction < 1\n"),
    ],
)  # fmt: skip
def test_a_study_that_cannot_run_is_refused_in_one_line_before_anything_is_written(tmp_path, extra, line):
    result = study(tmp_path / "study", "leave_one_out", *extra)
    assert result.returncode == 2 and result.stderr == line
    assert not (tmp_path / "study").exists()


def test_variants_are_named_alike_in_every_design():
    names = ["bn", "flip", "nesterov"]
    assert variant_name(frozenset(names), names) == "full"
    assert variant_name(frozenset(), names) == "baseline"
    assert variant_name(frozenset({"flip"}), names) == "baseline+flip"
    assert variant_name(frozenset({"bn", "nesterov"}), names) == "full-flip"


@pytest.mark.slow  # a study of 6 jobs under joblib: about 25 s on 2 cores
def test_a_study_under_joblib_with_a_failing_variant_fails_that_job_alone_and_judges_the_rest(tmp_path):
    """The preset's `off` side of `mends` makes the user's model raise in validation: the variant
    full-mends fails in both seeds, in one line each; the others run in two joblib workers, and the
    tables say that `mends` has no paired seeds while `logging` is judged."""
    project = tmp_path / "project"
    (project / "configs" / "model").mkdir(parents=True)
    (project / "my_parts.py").write_text(MODEL)
    (project / "configs" / "model" / "tiny.yaml").write_text("_target_: my_parts.Tiny\nbreaks: never\n")
    sweep_dir = project / "study"
    result = run_cli(
        "--config-dir", "configs", "-m", "hydra/sweeper=ablation", "hydra.sweeper.seeds=2",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep_dir}",
        "model=tiny", "data.train_size=100", "data.batch_size=50", "trainer.max_epochs=1",
        "+ablation.mends={off:{model.breaks:eval},on:{model.breaks:never}}", COMPONENTS[1], cwd=project,
    )  # fmt: skip
    assert result.returncode == failures.FAILED_EXIT, result.stderr
    failed = sorted(line.split(": ValueError")[0] for line in result.stderr.splitlines() if line.startswith("error: "))
    numbers = [job_number(Study.load(sweep_dir), frozenset({"logging"}), seed) for seed in (0, 1)]
    assert failed == [f"error: job #{n} (full-mends/seed={s})" for s, n in enumerate(numbers)]
    assert sorted(p.name for p in (sweep_dir / "failed").iterdir()) == [f"{n}.txt" for n in numbers]
    assert sorted(metrics_mtimes(sweep_dir)) == sorted(
        f"{v}/seed={s}" for v in ("full", "full-mends", "full-logging") for s in (0, 1)
    )
    rows = read_csv(sweep_dir / "ablation.csv")
    assert rows["mends"]["verdict"] == "no paired seeds" and rows["mends"]["effect"] == ""
    assert rows["logging"]["verdict"] == "equivalent (within ±0.005)"
    assert "| mends | full-mends → full | - |" in (sweep_dir / "ablation.md").read_text()
    assert (sweep_dir / "plots" / "ablation_effects.png").is_file()
    made = json.loads((sweep_dir / "full" / "seed=0" / "provenance.json").read_text())["command"]
    assert made.startswith("run --config-dir configs -m hydra/sweeper=ablation ") and "exclude_keys" not in made
