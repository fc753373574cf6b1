"""A failing job never costs a sweep: a user's model that raises while it is built or as it trains,
in a sweep under the basic launcher, joblib and a tuned sweep (real runs of the `run` command from a
user's project folder), is one error line naming the job, the error and the user's line; its
metrics.json says failed, its run.log has the traceback, `<sweep dir>/failed/` keeps the line; the
other jobs run, the summary lists the failed rows, and the sweep exits 1. The same command in the same
sweep directory retries the failed job and skips the completed one."""

import csv
import json
import subprocess
from pathlib import Path

import optuna
import pytest
from helpers import run_cli

from runner.engine import failures
from runner.engine.run import SetupError

SMALL = ["data=mnist_5k", "data.train_size=256", "trainer.max_epochs=1"]
MODEL = '''import os

import torch
from torch import nn


class Tiny(nn.Module):
    """A linear layer over the pixels; `breaks` says where it raises: never, init, eval (in
    validation), final (in a tuned sweep's final runs)."""

    def __init__(self, in_shape, num_classes, breaks="never"):
        super().__init__()
        if breaks == "init":
            raise RuntimeError("constructor refuses")
        self.breaks = breaks
        self.head = nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes)

    def forward(self, x):
        if self.breaks == "eval" and not self.training:
            raise ValueError("no evaluation today")
        if self.breaks == "final" and os.environ.get("ABLATE_TUNE", "").startswith("final/"):
            raise ValueError("no final run today")
        return self.head(x.flatten(1))
'''
SWEEP = ["-m", "model=tiny", "model.breaks=init,eval,never", *SMALL]


def line_of(text: str) -> int:
    """The line of my_parts.py that holds `text`."""
    return next(n for n, line in enumerate(MODEL.splitlines(), start=1) if text in line)


@pytest.fixture
def project(tmp_path) -> Path:
    """A user's project: my_parts.py and configs/model/tiny.yaml, in a folder of their own."""
    folder = tmp_path / "project"
    (folder / "configs" / "model").mkdir(parents=True)
    (folder / "my_parts.py").write_text(MODEL)
    (folder / "configs" / "model" / "tiny.yaml").write_text("_target_: my_parts.Tiny\nbreaks: never\n")
    return folder


def run_user(project: Path, *args: str) -> subprocess.CompletedProcess:
    """`run --config-dir configs *args` from the user's project (in this process: helpers.run_cli)."""
    return run_cli("--config-dir", "configs", *args, cwd=project)


def errors(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def summary_runs(sweep: Path) -> dict[str, str]:
    """summary.md: variant -> its `runs` column (how many completed, failed, ...)."""
    lines = (sweep / "summary.md").read_text().splitlines()
    rows = [line.strip("|").split(" | ") for line in lines if line.startswith("| ")]
    return {row[0].strip("* "): row[-1].strip() for row in rows[1:]}


def assert_two_jobs_failed_and_one_completed(result: subprocess.CompletedProcess, sweep: Path) -> None:
    """The sweep of SWEEP: job #0 raised while built, job #1 in its first validation, job #2 completed."""
    assert result.returncode == failures.FAILED_EXIT, result.stderr
    built, trained = errors(result)
    assert built.startswith("error: job #0 (model.breaks=init): model._target_=my_parts.Tiny cannot be built")
    assert "RuntimeError: constructor refuses" in built and f"my_parts.py:{line_of('constructor refuses')}" in built
    where = f"my_parts.py:{line_of('no evaluation')}"
    assert trained == f"error: job #1 (model.breaks=eval): ValueError: no evaluation today ({where})"
    records = {p.name: p.read_text() for p in (sweep / "failed").iterdir()}
    assert records == {"0.txt": built[7:] + "\n", "1.txt": trained[7:] + "\n"}  # without "error: "
    init, evaluated, ok = (
        json.loads((sweep / f"model.breaks={b}" / "metrics.json").read_text()) for b in ("init", "eval", "never")
    )
    assert (init["status"], init["error"], init["choices"]["model"], init["epochs"]) == ("failed", built[7:], "tiny", 0)
    assert (evaluated["status"], evaluated["error"], evaluated["steps"]) == ("failed", trained[7:], 2)  # 2 steps of 128
    assert ok["status"] == "completed"
    log = (sweep / "model.breaks=eval" / "run.log").read_text()
    assert "Traceback" in log and 'raise ValueError("no evaluation today")' in log  # the terminal: one line
    assert "Traceback" not in result.stderr
    assert summary_runs(sweep) == {
        "model.breaks=never": "1 completed",
        "model.breaks=eval": "1 failed",
        "model.breaks=init": "1 failed",
    }
    with open(sweep / "summary.csv") as f:
        assert sorted(row["status"] for row in csv.DictReader(f)) == ["completed", "failed", "failed"]
    assert {p.name for p in (sweep / "plots").iterdir()} == {"val_acc.png", "train_loss.png", "test_acc.png"}


def test_jobs_that_raise_while_built_or_in_training_fail_in_one_line_each_and_the_sweep_goes_on(project):
    sweep = project / "sweep"
    result = run_user(project, *SWEEP, f"hydra.sweep.dir={sweep}")
    assert_two_jobs_failed_and_one_completed(result, sweep)


@pytest.mark.slow
def test_the_same_command_in_the_sweep_directory_retries_the_failed_jobs_and_skips_the_completed(project):
    sweep = project / "sweep"
    assert run_user(project, *SWEEP, f"hydra.sweep.dir={sweep}").returncode == failures.FAILED_EXIT
    completed = (sweep / "model.breaks=never" / "metrics.json").stat().st_mtime_ns
    parts = project / "my_parts.py"
    parts.write_text(parts.read_text().replace('raise ValueError("no evaluation today")', "pass"))  # the user mends it
    result = run_user(project, *SWEEP, f"hydra.sweep.dir={sweep}")
    assert result.returncode == failures.FAILED_EXIT, result.stderr  # job #0 raises again
    assert [e.split(":")[1] for e in errors(result)] == [" job #0 (model.breaks=init)"]
    assert [p.name for p in (sweep / "failed").iterdir()] == ["0.txt"]  # job #1's record is gone
    assert "completed already in" in result.stdout and "skipped" in result.stdout
    assert (sweep / "model.breaks=never" / "metrics.json").stat().st_mtime_ns == completed
    metrics = json.loads((sweep / "model.breaks=eval" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and "error" not in metrics
    assert summary_runs(sweep)["model.breaks=eval"] == "1 completed"


@pytest.mark.slow
def test_under_joblib_a_failed_job_is_recorded_by_its_worker_and_the_others_run(project):
    sweep = project / "sweep"
    result = run_user(project, *SWEEP, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}")
    assert_two_jobs_failed_and_one_completed(result, sweep)


def test_a_tuned_sweep_tells_a_failed_trial_to_optuna_and_lists_a_failed_final_run(project):
    sweep = project / "sweep"
    result = run_user(
        project, "-m", "hydra/sweeper=tune", "model=tiny", "model.breaks=choice(eval,final)", "hydra.sweeper.trials=2",
        "hydra.sweeper.seeds=1", *SMALL, f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == failures.FAILED_EXIT, result.stderr
    study = optuna.load_study(study_name="all", storage=f"sqlite:///{sweep / 'study.db'}")
    states = {t.params["model.breaks"]: (t.number, t.state) for t in study.trials}
    failed_trial, _ = states["eval"]
    State = optuna.trial.TrialState
    assert states == {"eval": (failed_trial, State.FAIL), "final": (1 - failed_trial, State.COMPLETE)}
    trial, final = errors(result)  # the study went on: the completed trial's values ran as the final run, which failed
    where = f"my_parts.py:{line_of('no evaluation')}"
    assert trial == f"error: job #{failed_trial} (model.breaks=eval): ValueError: no evaluation today ({where})"
    assert final.startswith("error: job #2 (model.breaks=final,seed=1): ")  # job numbers: the trials', then the finals'
    assert "ValueError: no final run today" in final and f"my_parts.py:{line_of('no final run')}" in final
    assert sorted(p.name for p in (sweep / "failed").iterdir()) == [f"{failed_trial}.txt", "2.txt"]
    metrics = json.loads((sweep / "final" / "all" / "seed=1" / "metrics.json").read_text())
    assert (metrics["status"], metrics["tune"]["phase"]) == ("failed", "final")
    row = next(line for line in (sweep / "summary.md").read_text().splitlines() if line.startswith("| all |"))
    assert "| 1 completed, 1 failed |" in row and row.endswith("| 1 failed |")  # trials, then the final runs


@pytest.mark.slow
def test_a_tuned_variant_whose_every_trial_failed_is_a_row_of_the_summary(project):
    sweep = project / "sweep"
    result = run_user(
        project, "-m", "hydra/sweeper=tune", "model=tiny", "model.breaks=init,never",
        "optimizer.lr=tag(log,interval(0.01,0.1))", "hydra.sweeper.trials=1", "hydra.sweeper.seeds=1", *SMALL,
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == failures.FAILED_EXIT, result.stderr
    rows = {
        line.split(" | ")[0].strip("| *"): line
        for line in (sweep / "summary.md").read_text().splitlines()
        if "model.breaks=" in line
    }
    assert rows["model.breaks=init"].endswith(
        "| - | 1 failed | 0 | - | - | - | - | - | - | - | no run (no trial completed) |"
    )
    assert rows["model.breaks=never"].endswith("| 1 completed |")


def test_a_single_run_refused_at_build_time_is_still_one_line_and_exit_2(project):
    result = run_user(project, "model=tiny", "model.breaks=init", *SMALL, f"hydra.run.dir={project / 'run'}")
    assert result.returncode == 2
    assert result.stderr.startswith("error: model._target_=my_parts.Tiny cannot be built")
    assert result.stderr.count("\n") == 1


def test_the_error_names_the_innermost_line_of_the_users_code_outside_torch_and_ablate(tmp_path, monkeypatch):
    (tmp_path / "user_net.py").write_text(
        "import torch\n\n\nclass Net(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x @ torch.ones(3, 3)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import torch
    import user_net

    try:
        user_net.Net()(torch.ones(2, 2))  # raised in torch's C++ code, called from the user's line 6
    except RuntimeError as e:
        error = e
    assert failures.describe(error) == f"RuntimeError: {failures.first_line(str(error))} (user_net.py:6)"
    refused = "model._target_=user_net.Net cannot be built; allowed: ..."
    try:
        try:
            user_net.Net()(torch.ones(2, 2))
        except RuntimeError as e:
            raise SetupError(refused) from e
    except SetupError as e:
        refusal = e
    assert failures.describe(refusal, one_line=True) == f"{refused} (user_net.py:6)"  # where the user's code raised


def test_a_summary_that_cannot_be_written_is_one_line_and_exit_1_with_the_runs_kept(project):
    sweep = project / "sweep"
    (sweep / "summary.md").mkdir(parents=True)  # in the way of the file the summary writes
    result = run_user(project, "-m", "model=tiny", "seed=0,1", *SMALL, f"hydra.sweep.dir={sweep}")
    assert result.returncode == failures.FAILED_EXIT, result.stderr
    (line,) = errors(result)
    assert line.startswith(f"error: the summary of {sweep} was not written: IsADirectoryError: ")
    assert line.endswith(f"; its runs are kept: report {sweep} writes it again")
    for seed in (0, 1):
        assert json.loads((sweep / f"seed={seed}" / "metrics.json").read_text())["status"] == "completed"
