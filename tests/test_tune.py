"""`hydra/sweeper=tune`: a real Optuna study per variant in a real SQLite file, real training on the
embedded digits, final runs on fresh seeds, and the summary of those."""

import json
import signal

import optuna
import pytest
from fixtures import CONFIGS
from helpers import assert_bitwise_equal, outcome, run_cli, start_cli, wait_for_checkpoint_at_step
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from runner.analysis.plots import write_sensitivity
from runner.analysis.report import main as report_main
from runner.tune import split, sweep_overrides


def test_comma_lists_are_variants_and_sweep_functions_the_search_space():
    overrides = OverridesParser.create().parse_overrides(
        ["optimizer=sgd,adam", "model=plain,bn", "optimizer.lr=tag(log,interval(0.0001,0.5))",
         "model.kernel_size=range(3,8,2)", "model.pool=choice(max,avg)", "trainer.max_epochs=2"]
    )  # fmt: skip
    space = split(overrides)
    assert space.variants == [
        ["optimizer=sgd", "model=plain"], ["optimizer=sgd", "model=bn"],
        ["optimizer=adam", "model=plain"], ["optimizer=adam", "model=bn"],
    ]  # fmt: skip
    assert space.fixed == ["trainer.max_epochs=2"]
    lr, kernel, pool = (space.params[k] for k in ("optimizer.lr", "model.kernel_size", "model.pool"))
    assert (lr.low, lr.high, lr.log) == (0.0001, 0.5, True)
    assert (kernel.low, kernel.high, kernel.step) == (3, 7, 2)  # range's end is left out, as in Python
    assert pool.choices == ("max", "avg")


def test_the_first_trials_cover_each_key_evenly_one_point_in_each_nth_of_its_range():
    import math

    from runner.tune import spread

    space = {
        "optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 0.5, log=True),
        "optimizer.momentum": optuna.distributions.FloatDistribution(0.8, 0.99),
        "model.pool": optuna.distributions.CategoricalDistribution(["max", "avg"]),
    }
    points = spread(space, 4, seed=0)
    assert points == spread(space, 4, seed=0) != spread(space, 4, seed=1)  # repeats with its seed
    log_parts = sorted(int(4 * math.log(p["optimizer.lr"] / 1e-4) / math.log(0.5 / 1e-4)) for p in points)
    assert log_parts == [0, 1, 2, 3]  # one learning rate in each quarter of the log range
    assert sorted(int(4 * (p["optimizer.momentum"] - 0.8) / 0.19) for p in points) == [0, 1, 2, 3]
    assert sorted(p["model.pool"] for p in points) == ["avg", "avg", "max", "max"]


def test_the_example_command_tunes_each_variant_then_runs_the_best_on_fresh_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m", "hydra/sweeper=tune", "optimizer=sgd,adam", "optimizer.lr=tag(log,interval(0.0001,0.5))",
        "hydra.sweeper.trials=4", "hydra.sweeper.seeds=2", "trainer.max_epochs=2", "data.train_size=1000",
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    storage = f"sqlite:///{sweep / 'study.db'}"
    for name in ("optimizer=sgd", "optimizer=adam"):
        study = optuna.load_study(study_name=name, storage=storage)
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
        for trial in study.trials:
            metrics = json.loads((sweep / "tune" / name / f"trial-{trial.number}" / "metrics.json").read_text())
            assert (
                metrics["tune"] == {"phase": "tune", "trial": trial.number, "params": trial.params}
                and metrics["seed"] == 0
            )
            assert metrics["best_val_acc"] == pytest.approx(trial.value)  # scored on validation
            assert metrics["test_acc"] is None  # only the final runs meet the test set
            assert f"optimizer.lr={trial.params['optimizer.lr']}" in metrics["command"]
        for seed in (1, 2):  # fresh seeds, never the tuning seed
            final = json.loads((sweep / "final" / name / f"seed={seed}" / "metrics.json").read_text())
            assert final["status"] == "completed" and final["seed"] == seed
            assert final["tune"] == {
                "phase": "final",
                "trial": study.best_trial.number,
                "params": study.best_trial.params,
            }
            assert f"optimizer.lr={study.best_trial.params['optimizer.lr']}" in final["command"]
    summary = (sweep / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| ") and "optimizer=" in line]
    assert len(rows) == 2 and all("4 completed" in row and "optimizer.lr=" in row for row in rows)
    assert "| variant | tuned | trials | n |" in summary
    assert "- optimizer=sgd: optimizer.lr 1.00" in summary  # fANOVA: the only tuned key explains it all
    assert (sweep / "plots" / "sensitivity_optimizer.lr.png").read_bytes().startswith(b"\x89PNG")
    assert report_main([str(sweep), "--out", str(tmp_path / "again")]) == 0  # the same summary from `report`
    assert (tmp_path / "again" / "summary.md").read_text().split("\n", 3)[3] == summary.split("\n", 3)[3]
    assert (tmp_path / "again" / "plots" / "sensitivity_optimizer.lr.png").exists()


def preset_overrides(*overrides: str) -> list[str]:
    """What a tuned sweep of `experiment=optimizers` would search and vary, given `overrides`."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        config = compose("config", ["experiment=optimizers", "hydra/sweeper=tune"], return_hydra_config=True)
    return sweep_overrides(config, list(overrides))


def test_a_preset_declares_its_search_space_and_the_command_line_pins_or_replaces_it():
    assert preset_overrides() == [
        "optimizer.lr=tag(log, interval(0.0001, 0.5))",
        "optimizer=sgd,momentum,nesterov,adam",
    ]
    assert preset_overrides("optimizer.lr=0.01", "optimizer=sgd,adam") == ["optimizer.lr=0.01", "optimizer=sgd,adam"]
    assert preset_overrides("optimizer.lr=interval(0.01,0.1)")[-1] == "optimizer.lr=interval(0.01,0.1)"


@pytest.mark.slow
def test_run_m_experiment_optimizers_with_the_tune_sweeper_tunes_each_optimizer_on_a_log_scale(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m", "experiment=optimizers", "hydra/sweeper=tune", "hydra.sweeper.trials=2", "hydra.sweeper.seeds=1",
        "data=mnist_5k", "data.train_size=500", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in ("optimizer=sgd", "optimizer=momentum", "optimizer=nesterov", "optimizer=adam"):
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{sweep / 'study.db'}")
        (lr,) = {t.distributions["optimizer.lr"] for t in study.trials}
        assert (lr.low, lr.high, lr.log, len(study.trials)) == (0.0001, 0.5, True, 2)
        assert [p.name for p in (sweep / "final" / name).iterdir()] == [
            "seed=1"
        ]  # the preset's seed list is not a variant
    assert "seed=" not in (sweep / "summary.md").read_text().split("| variant |")[1]


def test_a_trial_that_diverges_is_told_as_scored_0_and_counted_as_diverged(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m", "hydra/sweeper=tune", "optimizer.lr=interval(1e30,2e30)", "hydra.sweeper.trials=2", "hydra.sweeper.seeds=1",
        "trainer.max_epochs=1", "data.train_size=500", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="all", storage=f"sqlite:///{sweep / 'study.db'}")
    assert [(t.state, t.value) for t in study.trials] == [(optuna.trial.TrialState.COMPLETE, 0.0)] * 2
    assert "| 2 diverged |" in (sweep / "summary.md").read_text()


def test_the_summary_names_each_variant_by_what_the_command_varied_not_by_the_value_it_chose(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m", "hydra/sweeper=tune", "sched=constant,cosine", "optimizer.lr=tag(log,interval(0.001,0.5))",
        "activation=choice(relu,tanh)", "hydra.sweeper.trials=2", "hydra.sweeper.seeds=1", "trainer.max_epochs=1",
        "data.train_size=500", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [
        line.split(" | ")[0]
        for line in (sweep / "summary.md").read_text().splitlines()
        if line.startswith("| ") and "optimizer.lr=" in line
    ]
    assert sorted(row.strip("|* ") for row in rows) == ["sched=constant", "sched=cosine"]
    tuned = json.loads((sweep / "tune" / "sched=cosine" / "trial-0" / "metrics.json").read_text())["tune"]["params"]
    assert tuned["activation"] in ("relu", "tanh") and 0.001 <= tuned["optimizer.lr"] <= 0.5  # a group by its choice


def test_the_sensitivity_plots_draw_every_tuned_key_of_real_studies_pruned_trials_too(tmp_path):
    space = {
        "optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 0.5, log=True),
        "model.blocks": optuna.distributions.IntDistribution(1, 3),
        "model.pool": optuna.distributions.CategoricalDistribution(["max", "avg"]),
    }
    studies = {}
    for name in ("optimizer=sgd", "optimizer=adam"):
        study = optuna.create_study(
            study_name=name, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0)
        )
        for n in range(4):
            trial = study.ask(space)
            trial.report(0.1 * n, step=1)
            study.tell(trial, 0.2 * n if n != 1 else None, state=optuna.trial.TrialState.PRUNED if n == 1 else None)
        studies[name] = study
    written = write_sensitivity(studies, tmp_path)
    assert sorted(p.name for p in written) == [f"sensitivity_{k}.png" for k in sorted(space)]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)


@pytest.mark.slow
def test_the_median_pruner_stops_hopeless_trials_at_an_epoch_and_none_turns_it_off(tmp_path):
    common = ["-m", "hydra/sweeper=tune", "optimizer=sgd", "optimizer.lr=tag(log,interval(0.0001,0.5))",
              "hydra.sweeper.trials=6", "hydra.sweeper.seeds=1", "trainer.max_epochs=3", "data.train_size=1000"]  # fmt: skip
    for pruner, sweep in (("median", tmp_path / "median"), ("none", tmp_path / "none")):
        result = run_cli(*common, f"hydra.sweeper.pruner={pruner}", f"hydra.sweep.dir={sweep}")
        assert result.returncode == 0, result.stderr
        study = optuna.load_study(study_name="all", storage=f"sqlite:///{sweep / 'study.db'}")  # one variant
        states = [t.state for t in study.trials]
        pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
        if pruner == "none":
            assert states == [optuna.trial.TrialState.COMPLETE] * 6
            continue
        assert len(states) == 6 and pruned and states[:2] == [optuna.trial.TrialState.COMPLETE] * 2
        for trial in pruned:
            metrics = json.loads((sweep / "tune" / "all" / f"trial-{trial.number}" / "metrics.json").read_text())
            assert metrics["status"] == "pruned" and 2 <= metrics["epochs"] < 3 and metrics["test_acc"] is None
            assert [e["val_acc"] for e in metrics["history"]] == [trial.intermediate_values[e] for e in (1, 2)]
        assert f"{6 - len(pruned)} completed, {len(pruned)} pruned" in (sweep / "summary.md").read_text()


@pytest.mark.slow
def test_a_stopped_tuned_sweep_continues_to_the_same_totals_and_its_stopped_trial_resumes_bitwise(tmp_path):
    args = ["-m", "hydra/sweeper=tune", "optimizer=sgd,adam", "optimizer.lr=tag(log,interval(0.0001,0.5))",
            "hydra.sweeper.trials=3", "hydra.sweeper.seeds=1", "hydra.sweeper.pruner=none", "trainer.max_epochs=2",
            "data.train_size=1000", "data.batch_size=16", "trainer.checkpoint_every_minutes=0.0001"]  # fmt: skip
    reference, sweep = tmp_path / "reference", tmp_path / "sweep"
    assert run_cli(*args, f"hydra.sweep.dir={reference}").returncode == 0
    process = start_cli(*args, f"hydra.sweep.dir={sweep}")
    stopped = sweep / "tune" / "optimizer=sgd" / "trial-1"
    wait_for_checkpoint_at_step(stopped, 20)  # of 2 x 56 steps
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0 and json.loads((stopped / "metrics.json").read_text())["status"] == "interrupted", (
        output
    )
    again = run_cli(*args, f"hydra.sweep.dir={sweep}")
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stdout + again.stderr
    for name in ("optimizer=sgd", "optimizer=adam"):
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{sweep / 'study.db'}")
        assert [t.number for t in study.trials] == [0, 1, 2]  # the same total, numbered on
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        for trial in study.trials:
            assert_bitwise_equal(
                outcome(sweep / "tune" / name / f"trial-{trial.number}"),
                outcome(reference / "tune" / name / f"trial-{trial.number}"),
            )
    assert (sweep / "summary.md").read_text().count("3 completed") == 2


# A tuned sweep's refusals: its own rules (a seed list, no validation split), and the rules of
# test_validation's table applied to each variant and to the ends of each search space.
@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["seed=0,1", "optimizer.lr=interval(0.001,0.1)"],
            (
                "seed=0,1 is not allowed in a tuned sweep (hydra/sweeper=tune): its trials run with the config's seed "
                "and its final runs with fresh seeds after it; allowed: seed=N, hydra.sweeper.seeds=N"
            ),
        ),
        (
            ["optimizer=sgd,nope", "optimizer.lr=interval(0.001,0.1)"],
            "optimizer=nope is not known; allowed: adam, adamw, momentum, nesterov, sgd",
        ),
        (
            ["optimizer=sgd,adam", "optimizer.lr=interval(0,0.5)"],
            "optimizer.lr=0 is not allowed; allowed: a number > 0",
        ),
        (["model.pool=choice(max,min)"], "model.pool='min' is not known; allowed: max, avg, null"),
        (
            ["optimizer.lr=interval(0.001,0.1)", "data.val_fraction=0"],
            (
                "data.val_fraction=0 is not allowed in a tuned sweep (hydra/sweeper=tune): its trials are scored on the "
                "validation split, never on the test set; allowed: 0 < val_fraction < 1"
            ),
        ),
    ],
)
def test_a_bad_tuned_sweep_is_refused_in_one_line_before_anything_is_written(tmp_path, overrides, message):
    result = run_cli("-m", "hydra/sweeper=tune", *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert (result.returncode, result.stderr) == (2, f"error: {message}\n")
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher, launches",
    [(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], 3), (["hydra/launcher=submitit_local"], 5)],
    ids=["joblib: 2 trials at once", "submitit_local: one at a time"],
)
def test_trials_run_through_the_chosen_launcher_and_report_each_epoch_from_its_processes(tmp_path, launcher, launches):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m", "hydra/sweeper=tune", *launcher, "optimizer.lr=tag(log,interval(0.001,0.5))", "hydra.sweeper.trials=4",
        "hydra.sweeper.seeds=1", "trainer.max_epochs=2", "data.train_size=500", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="all", storage=f"sqlite:///{sweep / 'study.db'}")
    assert len(study.trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert all(sorted(t.intermediate_values) == [1, 2] for t in study.trials)  # told by the job's own process
    output = result.stdout + result.stderr
    if "hydra/launcher=joblib" in launcher:  # two batches of two trials, then the final run
        assert output.count("is launching") == launches and output.count("is launching 2 jobs") == 2
    else:  # each trial, then the final run: a submitit job each
        assert len(list((sweep / ".submitit").glob("*/*_submitted.pkl"))) == launches
    assert json.loads((sweep / "final" / "all" / "seed=1" / "metrics.json").read_text())["status"] == "completed"
