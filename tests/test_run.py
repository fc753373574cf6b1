"""The `run` command end to end: real Hydra composition, real training on the embedded
MNIST digits, the run directory read back (metrics.json, checkpoint, TensorBoard events)."""

import csv
import json
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, compose_cfg, python_here, run_cli, session_hparams
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_validation import MESSAGE

from runner.data import splits
from runner.engine import builders, startup

FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")
TAGS = {"loss/train", "loss/val", "acc/train", "acc/val", "lr", "acc/test", "loss/test"}
METRICS_KEYS = {"status", "test_acc", "test_loss", "best_val_acc", "epochs", "train_seconds", "num_params"}


def read_events(run_dir):
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return events


def test_one_epoch_learns_and_fills_the_run_directory(tmp_path, quick):
    run_dir = tmp_path / "run"
    # a process of its own: metrics.json times its start-up from the interpreter on (import torch among it)
    result = run_cli(*quick, "optimizer=adam", "sched=cosine", f"hydra.run.dir={run_dir}", process=True)
    assert result.returncode == 0, result.stderr
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / ".hydra" / "overrides.yaml").is_file()

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert METRICS_KEYS <= metrics.keys()
    assert metrics["status"] == "completed" and metrics["epochs"] == 1
    assert metrics["test_acc"] > 0.5  # chance is 0.1
    assert metrics["choices"] == {
        "data": "mnist_5k",
        "model": "plain",
        "activation": "relu",
        "optimizer": "adam",
        "sched": "cosine",
        "trainer": "default",
    }
    assert metrics["seed"] == 0 and metrics["data"]["sizes"] == {"train": 3600, "val": 400, "test": 1000}
    assert list(metrics["startup"]) == list(startup.PHASES)  # seconds from the command to the first step, per phase
    assert all(seconds >= 0 for seconds in metrics["startup"].values()) and metrics["startup"]["torch"] > 0.1

    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == metrics["steps"] == 3600 // 64
    weights = load_file(run_dir / "model.safetensors")  # the final weights, tensors only
    assert weights.keys() == state["model"].keys()
    assert all(torch.equal(weights[k], state["model"][k]) for k in weights)

    events = read_events(run_dir)
    assert TAGS <= set(events.Tags()["scalars"])
    assert {"probe/grad_norm/first_to_last", "probe/dead_units/features.0.1"} <= set(events.Tags()["scalars"])
    assert events.Scalars("acc/test")[-1].value == pytest.approx(metrics["test_acc"], abs=1e-6)
    hparams = session_hparams(events)  # in the run itself, not in a sub-run
    assert hparams == {  # alone, nothing differs: the choices, the seed and the status
        "data": "mnist_5k", "model": "plain", "activation": "relu", "optimizer": "adam", "sched": "cosine",
        "trainer": "default", "experiment": "null", "seed": "0", "status": "completed",
    }  # fmt: skip
    assert not [p for p in run_dir.rglob("events.out.tfevents.*") if p.parent != run_dir]
    assert "Run directory:" in result.stdout and "tensorboard --logdir" in result.stdout
    assert "epoch 1/1" in result.stdout  # plain lines off a terminal


def test_the_same_command_reproduces_every_number(tmp_path, quick):
    histories = []
    for name in ("first", "second"):
        result = run_cli(*quick, "seed=7", f"hydra.run.dir={tmp_path / name}")
        assert result.returncode == 0, result.stderr
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        histories.append(
            [{k: v for k, v in e.items() if k != "seconds"} for e in metrics["history"]] + [metrics["test_acc"]]
        )
    assert histories[0] == histories[1]
    other_seed = run_cli(*quick, "seed=8", f"hydra.run.dir={tmp_path / 'other'}")
    assert other_seed.returncode == 0, other_seed.stderr
    assert (
        json.loads((tmp_path / "other" / "metrics.json").read_text())["history"][0]["train_loss"]
        != histories[0][0]["train_loss"]
    )


def test_default_run_directory_names_what_was_chosen(tmp_path, quick):
    result = run_cli(*quick, "model=bn", "optimizer=adam", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in (tmp_path / "outputs").iterdir() if not p.name.startswith(".")] == [
        "runs"
    ]  # no sweep directory
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert run_dir.name.endswith("_bn-relu-adam-cosine")
    assert (run_dir / "metrics.json").is_file()


def test_bad_input_gets_one_line_naming_key_value_and_what_is_allowed(tmp_path):
    result = run_cli("optimizer.lr=-1", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {MESSAGE['optimizer.lr=-1']}"  # the line of the table of bad values
    assert not (tmp_path / "run" / "metrics.json").exists()
    unknown = run_cli("model=nope", f"hydra.run.dir={tmp_path / 'run2'}")
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr
    assert "model" in unknown.stderr and "nope" in unknown.stderr and "residual" in unknown.stderr


@pytest.mark.parametrize(
    "args", [["--help"], ["--config-dir", "examples/own_parts/configs", "model=separable", "--help"], ["--hydra-help"]]
)
def test_help_says_what_hydras_own_help_says(args):
    """`run --help` lists the config groups with one copy of Hydra's config repository
    (hydra_shortcuts.one_repository_for_help): the same text as Hydra's own help, which the task function gives
    when called without `main`, as the same program (`python -m runner`)."""
    program = str(ROOT / "runner" / "__main__.py")
    hydras = f"import sys; sys.argv = [{program!r}, *sys.argv[1:]]; from runner.cli.app import task; task()"
    own = python_here(hydras, *args)
    ablates = run_cli(*args)
    assert own.returncode == ablates.returncode == 0, own.stderr + ablates.stderr
    assert ablates.stdout == own.stdout and len(own.stdout.splitlines()) > 20
    assert "separable" in own.stdout or "--config-dir" not in args  # the user's groups are listed too


COMPOSED_BY = """
import json, sys
import hydra
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from runner.cli import app, hydra_shortcuts

compositions = []
load_configuration = ConfigLoaderImpl.load_configuration
def counted(self, *args, **kwargs):
    compositions.append(1)
    return load_configuration(self, *args, **kwargs)
ConfigLoaderImpl.load_configuration = counted

seen = []
@hydra.main(config_path=str(app.CONFIGS), config_name="config", version_base="1.3")
def job(cfg):
    seen.append([OmegaConf.to_yaml(cfg), OmegaConf.to_yaml(HydraConfig.get()), len(compositions)])

sys.argv = ["run", *sys.argv[1:]]
job()  # Hydra's way
compositions.clear()
hydra_shortcuts.one_composition_per_run()
job()
print(json.dumps(seen))
"""


@pytest.mark.parametrize("overrides", [[], ["experiment=fmnist_speed", "seed=3"], ["hydra.mode=RUN", "model=residual"]])
def test_one_composition_per_run_gives_the_config_hydra_composes_twice(tmp_path, overrides):
    """A single run composes once (hydra_shortcuts.one_composition_per_run), and its job sees the
    same config and the same Hydra config as with Hydra's two compositions, the run's callbacks
    (the checks, the run directory held) included."""
    argv = [*overrides, f"hydra.run.dir={tmp_path / 'run'}"]
    result = python_here(COMPOSED_BY, *argv)
    assert result.returncode == 0, result.stderr
    (hydras, hydras_count), (shortcut, shortcut_count) = [(yamls, n) for *yamls, n in json.loads(result.stdout)]
    assert (hydras_count, shortcut_count) == (2, 1)
    assert shortcut == hydras
    assert "mode: RUN" in shortcut[1] and (tmp_path / "run" / ".hydra" / "hydra.yaml").is_file()


SWEEP_COMPOSED_BY = COMPOSED_BY.replace("one_composition_per_run", "one_composition_per_job")


def test_one_composition_per_job_gives_each_job_the_config_hydra_composes_three_times(tmp_path):
    """A sweep composes each job once (hydra_shortcuts.one_composition_per_job) where Hydra composes
    it three times (ablate's check of every job before the sweep, the sweeper's check of the batch,
    the launch), and each job sees the same config and Hydra config as with Hydra's compositions."""
    argv = ["-m", "model=plain,bn", "optimizer.lr=0.1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    result = python_here(SWEEP_COMPOSED_BY, *argv)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])  # after the sweeps' summaries
    hydras, shortcut = seen[:2], seen[2:]
    assert [yamls[:2] for yamls in shortcut] == [yamls[:2] for yamls in hydras]
    assert "model:\n  _target_: models.PlainNet" in shortcut[0][0] and "num: 1" in shortcut[1][1]
    composed = hydras[-1][2], shortcut[-1][2]  # compositions by the last job's start
    assert composed[0] - composed[1] == 4  # two of three for each of the two jobs


def test_help_and_cfg_job_do_not_import_torch():
    code = (
        "import sys; sys.argv = ['run', '--cfg', 'job', 'model=residual'];"
        "from runner.cli.app import main\n"
        "try: main()\n"
        "except SystemExit: pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    import subprocess

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "_target_: models.ResidualNet" in result.stdout and "bottleneck_ratio: 4" in result.stdout
    help_text = run_cli("--help")
    assert help_text.returncode == 0
    (models_line,) = [line for line in help_text.stdout.splitlines() if line.startswith("model: ")]
    assert {"plain", "bn", "residual", "skip"} <= set(models_line[len("model: ") :].split(", "))


def test_the_run_program_trains_with_its_start_up_objects_frozen_and_the_collector_on(tmp_path):
    """runner.engine.collector: no collection while the process starts; before the first step, what
    start-up made (torch's, Hydra's objects) is frozen, and the collector collects what comes after."""
    code = (
        "import atexit, gc, sys\n"
        "seen = []\n"
        "gc.callbacks.append(lambda phase, info: seen.append(info['generation']) if phase == 'start' else None)\n"
        "atexit.register(lambda: print('collector', gc.isenabled(), gc.get_freeze_count(), len(seen), seen.count(2)))\n"
        f"sys.argv = ['run', 'data.train_size=64', 'data.batch_size=32', 'trainer.max_epochs=1', 'hydra.run.dir={tmp_path / 'run'}']\n"
        "from runner.cli.app import command\n"
        "command()\n"
    )
    import subprocess

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("collector ")]
    _, enabled, frozen, collections, full = line.split()
    assert enabled == "True" and int(frozen) > 100_000  # torch's and Hydra's objects
    assert int(full) == 0 and int(collections) < 250  # without: 4 full collections among more than 500


@pytest.mark.skipif(not FASHION_SYSTEM.exists(), reason="apt-get install dataset-fashion-mnist (CI installs it)")
def test_residual_leaky_relu_example_on_fashion_mnist(tmp_path, quick):
    result = run_cli(
        *quick,
        "model=residual",
        "activation=leaky_relu",
        "activation.alpha=0.2",
        "data=fashion_mnist",
        "data.train_size=2000",
        "trainer.precision=bf16",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["precision"] == "bf16"
    assert metrics["data"]["source"].startswith(f"{FASHION_SYSTEM} (") and metrics["data"]["sizes"]["test"] == 10000
    assert metrics["test_acc"] > 0.4  # chance is 0.1


def test_eval_flip_scores_the_mean_output_for_each_image_and_its_mirror_image(tmp_path, quick):
    run_dir = tmp_path / "run"
    overrides = [*quick, "trainer.eval_flip=true", "trainer.precision=fp32", "trainer.layout=contiguous"]
    result = run_cli(*overrides, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())

    cfg = compose_cfg(*overrides)  # the test split and the final weights, scored here by hand
    data = splits.load(cfg.data, torch.device("cpu"))
    model = builders.build_model(cfg.model, cfg.activation, data.in_shape, data.num_classes).eval()
    model.load_state_dict(load_file(run_dir / "model.safetensors"))
    x = (data.test.images.float() / 255 - data.mean.view(1, -1, 1, 1)) / data.std.view(1, -1, 1, 1)
    with torch.no_grad():
        plain, mirrored = model(x), model(x.flip(3))
    mean = (plain + mirrored) / 2
    assert metrics["test_acc"] == pytest.approx((mean.argmax(1) == data.test.labels).float().mean().item(), abs=1e-3)
    assert metrics["test_loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(mean, data.test.labels).item(), rel=1e-4
    )
    assert metrics["test_loss"] != pytest.approx(
        torch.nn.functional.cross_entropy(plain, data.test.labels).item(), rel=1e-4
    )


def test_a_records_first_step_counts_what_it_costs_beyond_an_ordinary_step(monkeypatch):
    for name, value in {"_record": {}, "_kind": ["startup"], "_last": [], "_taken": [], "_ordinary": []}.items():
        monkeypatch.setattr(startup, name, value)  # this process's own records stay as they are
    startup.between_jobs(time.perf_counter())
    for phase in startup.BETWEEN_JOBS[:-1]:
        startup.mark(phase)
    time.sleep(0.3)
    startup.step_taken(0.3)  # the first step: 0.3 s since the model was built
    startup.step_taken(0.2)  # the second, an ordinary step: 0.2 s of its own
    startup.step_taken(0.05)  # the later ones change nothing
    kind, record = startup.phases()
    assert kind == "between_jobs" and list(record) == list(startup.BETWEEN_JOBS)
    assert 0.09 <= record["first step"] < 0.2  # 0.3 s less the second step's 0.2 (a late wake-up adds to it)


def test_a_diverged_job_does_not_stop_the_sweep_and_the_summary_shows_it(tmp_path, quick):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", *quick, "optimizer=sgd", "optimizer.lr=1e30,0.05", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    statuses = {p.parent.name: json.loads(p.read_text())["status"] for p in sweep.glob("*/metrics.json")}
    assert statuses == {"optimizer.lr=1e+30": "diverged", "optimizer.lr=0.05": "completed"}  # named by the swept key
    job = json.loads((sweep / "optimizer.lr=0.05" / "metrics.json").read_text())
    assert job["command"] == " ".join(["run", *quick, "optimizer=sgd", "optimizer.lr=0.05"])  # reruns this job alone
    between = [phase for phase in startup.BETWEEN_JOBS if phase != "test"]  # job #0 diverged: no test set
    assert "startup" not in job and list(job["between_jobs"]) == between  # since job #0's last step
    assert all(seconds >= 0 for seconds in job["between_jobs"].values())

    with open(sweep / "summary.csv") as f:
        rows = {row["optimizer.lr"]: row for row in csv.DictReader(f)}
    assert rows["1e+30"]["status"] == "diverged" and rows["1e+30"]["test_acc"] == ""
    assert (
        float(rows["0.05"]["test_acc"])
        == json.loads((sweep / "optimizer.lr=0.05" / "metrics.json").read_text())["test_acc"]
    )
    summary = (sweep / "summary.md").read_text()
    assert "| **optimizer.lr=0.05** | 1 |" in summary and "best" in summary
    assert "| optimizer.lr=1e+30 | 0 | - |" in summary and "1 diverged" in summary
    for plot in ("val_acc.png", "train_loss.png", "test_acc.png"):
        assert (sweep / "plots" / plot).read_bytes()[:4] == b"\x89PNG"
    assert "2 runs, 2 variants" in result.stdout
    log = result.stdout + result.stderr
    assert "the training loss became NaN or infinite by step" in log and "Try a lower optimizer.lr" in log
    assert not (sweep / "optimizer.lr=1e+30" / "model.safetensors").exists()  # only a completed run exports weights


def test_a_diverged_single_run_exits_3_with_a_clear_message_and_is_not_rerun(tmp_path, quick):
    run_dir = tmp_path / "run"
    checkpoints = "trainer.checkpoint_every_minutes=0.0001"  # so a checkpoint holds the config when it diverges
    command = [*quick, "optimizer=sgd", "optimizer.lr=1e30", checkpoints, f"hydra.run.dir={run_dir}"]
    result = run_cli(*command)
    assert result.returncode == 3, result.stderr
    log = result.stdout + result.stderr
    assert f"the training loss became NaN or infinite by step 50 ({run_dir}); status: diverged" in log
    assert "Traceback" not in log
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["test_acc"] is None and metrics["steps"] == 50
    assert not (run_dir / "model.safetensors").exists()
    before = (run_dir / "metrics.json").read_bytes()
    again = run_cli(*command)  # it would diverge the same way again
    assert again.returncode == 3, again.stderr
    assert f"diverged already in {run_dir}; skipped" in again.stdout + again.stderr
    assert (run_dir / "metrics.json").read_bytes() == before


@pytest.mark.slow
def test_sweep_over_every_model_and_activation(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "model=plain,bn,residual,skip",
        "activation=tanh,sigmoid,relu,leaky_relu",
        "trainer.max_epochs=1",
        "data.train_size=256",
        "model.channels=[8,16]",
        "model.hidden=[16]",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr
    runs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert len(runs) == 16
    for metrics_file in sweep.glob("*/metrics.json"):
        assert json.loads(metrics_file.read_text())["status"] == "completed"
