"""Comparing runs: job naming in sweeps, sweep directories, and `report` across separate runs."""

import csv
import json

import pytest
from helpers import run_cli

from runner.analysis.report import main as report_main
from runner.cli.app import name_jobs_by_swept_keys, new_dir


def test_two_sweeps_started_in_the_same_second_never_share_a_directory(tmp_path):
    first, second = new_dir(str(tmp_path / "2026-01-01_00-00-00")), new_dir(str(tmp_path / "2026-01-01_00-00-00"))
    assert first != second and tmp_path.joinpath(second).is_dir() and second.endswith("-2")


def test_jobs_are_named_by_the_swept_keys_only():
    argv = ["run", "-m", "model=plain,bn", "seed=range(3)", "trainer.max_epochs=2", "hydra.sweep.dir=x"]
    named = name_jobs_by_swept_keys(argv)
    assert named[2] == "hydra.job.config.override_dirname.exclude_keys=[trainer.max_epochs]" and named[3:] == argv[2:]
    assert name_jobs_by_swept_keys(["run", "model=bn"]) == ["run", "model=bn"]  # a single run is left alone
    preset = name_jobs_by_swept_keys(["run", "-m", "experiment=quick", "--cfg", "job"])  # the preset sweeps
    assert preset == [
        "run",
        "-m",
        "hydra.job.config.override_dirname.exclude_keys=[experiment]",
        "experiment=quick",
        "--cfg",
        "job",
    ]


def test_report_compares_runs_from_separate_commands_by_what_differs(tmp_path, quick):
    sweep = run_cli("-m", *quick, "optimizer=adam", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    single = run_cli(*quick, "optimizer=momentum", f"hydra.run.dir={tmp_path / 'single'}")
    assert sweep.returncode == 0 and single.returncode == 0, sweep.stderr + single.stderr
    seed_0 = tmp_path / "sweep" / "seed=0"
    assert (
        report_main([str(seed_0), str(tmp_path / "sweep"), str(tmp_path / "single"), "--out", str(tmp_path / "cmp")])
        == 0
    )
    with open(tmp_path / "cmp" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3  # seed=0 is named twice, counted once
    assert sorted(r["optimizer"] for r in rows) == ["adam", "adam", "momentum"] and "model" not in rows[0]
    summary = (tmp_path / "cmp" / "summary.md").read_text()
    adam = [json.loads((tmp_path / "sweep" / f"seed={s}" / "metrics.json").read_text())["test_acc"] for s in (0, 1)]
    assert (
        f"optimizer=adam** | 2 | {sum(adam) / 2:.4f} ± " in summary
        or f"optimizer=adam | 2 | {sum(adam) / 2:.4f} ± " in summary
    )
    assert "optimizer=momentum" in summary and "n=1, noise unknown" in summary  # one side has one seed
    assert "Welch" in summary and "Holm" in summary and " – " in summary  # the stated test, a 95% interval
    assert (tmp_path / "cmp" / "plots" / "val_acc.png").is_file()
    assert report_main([str(tmp_path / "nothing-here")]) == 2


def test_keys_that_older_runs_lack_do_not_split_a_variant(tmp_path):
    from runner.analysis.report import Run, distinguishing_keys

    def run(name, values):
        return Run(tmp_path / name, {}, values)

    old = run("old", {"sched": "constant", "trainer.max_epochs": 10})
    new = run("new", {"sched": "constant", "trainer.max_epochs": 10, "trainer.layout": "auto"})
    cosine = run("cos", {"sched": "cosine", "trainer.max_epochs": 10, "trainer.layout": "auto"})
    assert distinguishing_keys([old, new, cosine]) == ["sched"]
    assert distinguishing_keys([old, new]) == []


def test_plots_use_the_sample_std_of_the_summary_and_say_when_the_accuracy_axis_is_zoomed(tmp_path):
    import statistics

    from runner.analysis.plots import _curves, accuracy_range
    from runner.analysis.report import Run, Variant

    runs = [
        Run(tmp_path / f"seed={s}", {"status": "completed", "history": [{"val_acc": a}]}, {})
        for s, a in ((0, 0.8), (1, 0.9))
    ]
    epochs, mean, std = _curves(Variant("v", runs), "val_acc")
    assert list(epochs) == [1] and mean[0] == pytest.approx(0.85)
    assert std[0] == pytest.approx(statistics.stdev([0.8, 0.9]))  # ddof 1, as summary.md (0.0707, not 0.05)
    assert _curves(Variant("one", runs[:1]), "val_acc")[2][0] == 0.0
    assert accuracy_range(0.86, 0.89) == pytest.approx((0.85, 0.90))  # zoomed: the title states the range
    assert accuracy_range(0.1, 0.9) == (0.0, 1.0)
