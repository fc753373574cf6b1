"""A user's own parts, kept outside ablate: examples/own_parts copied to a folder outside the
repository and run from there with the `run` command and Hydra's --config-dir, no PYTHONPATH set
(the current directory is importable); an image folder of generated PNGs."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import write_image_folder
from helpers import ROOT, assert_bitwise_equal, cli_env, outcome, run_cli, session_hparams, wait_for_checkpoint_at_step
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

EXAMPLE = ROOT / "examples" / "own_parts"
RUN = Path(sys.executable).parent / "run"  # the console script a user types


@pytest.fixture
def project(tmp_path) -> Path:
    """examples/own_parts as a user has it: my_parts.py and configs/, in a folder of their own."""
    folder = tmp_path / "my_project"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    return folder


def user_env() -> dict:
    return {k: v for k, v in cli_env().items() if k != "PYTHONPATH"}


def run_user(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`run --config-dir configs *args` from the user's folder (in this process: helpers.run_cli)."""
    return run_cli("--config-dir", "configs", *args, cwd=project, env=env)


def test_help_lists_the_users_options_beside_the_built_in_ones(project):
    result = run_user(project, "--help")
    assert result.returncode == 0, result.stderr
    groups = result.stdout.split("== Config ==")[0]
    lines = dict(line.split(": ", 1) for line in groups.splitlines() if line.split(":")[0] in ("model", "optimizer"))
    assert {"my_net", "separable", "plain", "residual"} <= set(lines["model"].split(", "))
    assert {"rmsprop", "momentum", "adam"} <= set(lines["optimizer"].split(", "))


def test_a_sweep_of_a_users_model_optimizer_schedule_and_activation_beside_a_built_in_model(project):
    result = run_user(
        project, "-m", "model=plain,my_net", "optimizer=rmsprop", "sched=exp", "activation=gelu", "trainer.max_epochs=1"
    )
    assert result.returncode == 0, result.stderr
    (sweep,) = (project / "outputs" / "sweeps").iterdir()
    for job, params in (("model=plain", 421_642), ("model=my_net", 8 * 9 + 8 + 8 * 16 * 10 + 10)):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["num_params"] == params
        assert metrics["choices"]["optimizer"] == "rmsprop" and metrics["choices"]["sched"] == "exp"
        assert metrics["test_acc"] > 0.3  # 10 classes: better than chance after one epoch
        events = EventAccumulator(str(sweep / job))
        events.Reload()
        hparams = session_hparams(events)
        assert (
            hparams["model"] == job.split("=")[1]
            and hparams["activation"] == "gelu"
            and hparams["optimizer"] == "rmsprop"
        )
        lr = [e.value for e in events.Scalars("lr")]
        assert lr[0] == pytest.approx(0.001)  # ExponentialLR steps per epoch (interval: epoch): one epoch, one rate
    summary = (sweep / "summary.md").read_text()
    rows = [
        line.split(" | ")[0].strip("|* ") for line in summary.splitlines() if line.startswith("| ") and "model=" in line
    ]
    assert rows == ["model=plain", "model=my_net"]  # best first


def test_an_unknown_key_of_a_users_class_is_refused_with_its_parameters(project):
    result = run_user(project, "model=my_net", "model.widht=3")
    assert result.returncode == 2
    assert result.stderr == "error: model.widht=3 is not allowed; allowed: a key of model (width)\n"
    result = run_user(project, "model=my_net", "model.width=abc")
    assert (result.returncode, result.stderr) == (2, "error: model.width='abc' is not allowed; allowed: a number\n")
    result = run_user(project, "model._target_=my_parts.TinyNett")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: model._target_=my_parts.TinyNett cannot be imported (")
    assert not (project / "outputs").exists()


def test_a_user_block_replaces_the_bottleneck_of_model_residual_from_the_command_line(project):
    result = run_user(
        project, "model=residual", "model.channels=[8,16]", "model.hidden=[16]", "data.train_size=512",
        "model.block={_target_:my_parts.SeparableBlock,_partial_:true,kernel_size:5}", "trainer.max_epochs=1",
        f"hydra.run.dir={project / 'run'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    weights = load_file(project / "run" / "model.safetensors")
    depthwise = sorted(k for k in weights if k.endswith("depthwise.weight"))
    assert len(depthwise) == 4  # two blocks per width, two widths
    assert tuple(weights[depthwise[0]].shape) == (8, 1, 5, 5)
    assert not any("subnetwork" in k for k in weights)  # no bottleneck left


@pytest.mark.slow
def test_a_run_of_user_parts_stopped_by_sigterm_resumes_bitwise(project):
    args = ["model=separable", "optimizer=rmsprop", "sched=exp", "activation=gelu", "model.channels=[8,16]",
            "model.hidden=[16]", "data.batch_size=16", "trainer.max_epochs=2", "trainer.checkpoint_every_minutes=0.0001"]  # fmt: skip
    reference = project / "reference"
    assert run_user(project, *args, f"hydra.run.dir={reference}").returncode == 0
    run_dir = project / "run"
    process = subprocess.Popen(
        [str(RUN), "--config-dir", "configs", *args, f"hydra.run.dir={run_dir}"], cwd=project, env=user_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_for_checkpoint_at_step(run_dir, 20)  # of 2 x 225 steps
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    again = run_user(project, *args, f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stdout + again.stderr
    assert_bitwise_equal(outcome(run_dir), outcome(reference))


def test_an_image_folder_trains_from_a_decoded_cache_outside_the_folder(project, tmp_path):
    images = tmp_path / "pets"
    write_image_folder(images, classes=3, per_class_train=40, per_class_test=10, size=(16, 16))
    listing = sorted((p, p.stat().st_mtime_ns) for p in images.rglob("*"))
    cache = tmp_path / "cache"
    args = ["data=image_folder", f"data.root={images}", "data.batch_size=16", "model=my_net", "trainer.max_epochs=3"]
    first = run_user(project, *args, f"hydra.run.dir={tmp_path / 'first'}", env={"ABLATE_CACHE": str(cache)})
    assert first.returncode == 0, first.stderr
    metrics = json.loads((tmp_path / "first" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["test_acc"] > 0.6  # 3 classes of distinct colours
    assert metrics["data"]["sizes"] == {"train": 108, "val": 12, "test": 30}  # val: 10% of train, stratified
    assert metrics["data"]["mean"] != [0, 0, 0] and len(metrics["data"]["mean"]) == 3  # RGB as the files are
    assert metrics["num_params"] == (8 * 3 * 9 + 8) + (8 * 16 * 3 + 3)  # my_net for RGB in, the folder's 3 classes out
    assert len(list(cache.rglob("*.npz"))) == 1
    second = run_user(project, *args, f"hydra.run.dir={tmp_path / 'second'}", env={"ABLATE_CACHE": str(cache)})
    assert second.returncode == 0, second.stderr
    again = json.loads((tmp_path / "second" / "metrics.json").read_text())
    assert (
        "decoded cache" in again["data"]["source"] and again["data"]["fingerprints"] == metrics["data"]["fingerprints"]
    )
    assert (again["data"]["mean"], again["test_loss"]) == (
        metrics["data"]["mean"],
        metrics["test_loss"],
    )  # the split's summary read back
    assert sorted((p, p.stat().st_mtime_ns) for p in images.rglob("*")) == listing  # nothing written into the folder
    assert sorted(os.listdir(cache)) == ["image_folder", "summaries"]
    huge = run_user(project, *args, "data.image_size=100000", f"hydra.run.dir={tmp_path / 'huge'}")
    assert huge.returncode == 2 and huge.stderr.count("\n") == 1, huge.stderr
    assert huge.stderr.startswith(
        f"error: data.root={images}: 150 images of 3x100000x100000 need 4.5 TB decoded, more than"
    )
    assert not (tmp_path / "huge" / "metrics.json").exists()
