"""trainer.freeze: a module stops training at its step, the rest trains on, a resumed run freezes what
the run it continues had frozen, and a bad name or value is refused in one line (real runs)."""

import json
import signal

import pytest
import torch
from helpers import assert_bitwise_equal, outcome, run_cli, start_cli, wait_for_checkpoint_at_step
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# model=bn on mnist_5k: 112 steps of 32 images an epoch; the learning rate constant, so that the first
# epoch of two is the same computation as a run of one epoch
SMALL = ["model=bn", "model.channels=[8,16]", "model.hidden=[32]", "data.batch_size=32", "sched=constant",
         "trainer.log_every_n_steps=8"]  # fmt: skip
STEPS_PER_EPOCH = 112


def trained(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_a_frozen_module_keeps_the_parameters_it_had_at_its_step_and_the_rest_trains_on(tmp_path):
    frozen_run, one_epoch = tmp_path / "frozen", tmp_path / "one-epoch"
    result = run_cli(*SMALL, "trainer.max_epochs=2", "trainer.freeze={features.0:1}", f"hydra.run.dir={frozen_run}")
    assert result.returncode == 0, result.stderr
    assert ", features.0 frozen at step 112)" in result.stdout + result.stderr  # the run's first line
    result = run_cli(*SMALL, "trainer.max_epochs=1", f"hydra.run.dir={one_epoch}")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((frozen_run / "metrics.json").read_text())
    assert metrics["frozen"] == {"features.0": STEPS_PER_EPOCH} and metrics["steps"] == 2 * STEPS_PER_EPOCH
    assert json.loads((one_epoch / "metrics.json").read_text())["frozen"] == {}
    after, at_one_epoch = trained(frozen_run), trained(one_epoch)
    parameters = {k for k in after if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    stem = [k for k in parameters if k.startswith("features.0.")]
    assert stem and all(torch.equal(after[k], at_one_epoch[k]) for k in stem)  # conv weight, gamma, beta
    assert all(not torch.equal(after[k], at_one_epoch[k]) for k in parameters - set(stem))
    events = EventAccumulator(str(frozen_run), size_guidance={"scalars": 0})
    events.Reload()
    last_step = {tag: events.Scalars(tag)[-1].step for tag in events.Tags()["scalars"] if "grad_norm" in tag}
    assert last_step["probe/grad_norm/features.0.0"] <= STEPS_PER_EPOCH  # no gradient once frozen
    assert last_step["probe/grad_norm/first_to_last"] <= STEPS_PER_EPOCH  # the first layer's is gone
    assert last_step["probe/grad_norm/head.4"] == 2 * STEPS_PER_EPOCH


@pytest.mark.slow
def test_a_run_stopped_after_a_freeze_resumes_bitwise_equal_to_one_never_stopped(tmp_path):
    args = [*SMALL, "trainer.max_epochs=2", "trainer.freeze={features.0:0.25,features.2:1.5}",
            "trainer.checkpoint_every_minutes=0.0001"]  # fmt: skip
    reference = tmp_path / "reference"
    assert run_cli(*args, f"hydra.run.dir={reference}").returncode == 0
    run_dir = tmp_path / "run"
    process = start_cli(*args, f"hydra.run.dir={run_dir}")
    wait_for_checkpoint_at_step(run_dir, 60)  # after features.0 froze at step 28, before features.2 at 168
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output
    again = run_cli(*args, f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stdout + again.stderr
    assert_bitwise_equal(outcome(run_dir), outcome(reference))
    assert json.loads((run_dir / "metrics.json").read_text())["frozen"] == {"features.0": 28, "features.2": 168}


REFUSALS = {
    "{features.9:1}": (
        "trainer.freeze.features.9=1 is not allowed: features.9 is not a module of the model; allowed: a module "
        "with parameters, named as model.named_modules() names it (features, features.0, features.2, head, head.1, "
        "head.2, head.4)"
    ),
    "{features.1:1}": "trainer.freeze.features.1=1 is not allowed: features.1 has no parameters;",
    "{features.0:-1}": (
        "trainer.freeze={features.0: -1} is not allowed; allowed: null or a mapping of module names to epochs >= 0: "
        "{features.0: 1.5}"
    ),
    "2": "trainer.freeze=2 is not allowed; allowed: null or a mapping",
    "{features:0.5,head:0.9}": (
        "trainer.freeze={features: 0.5, head: 0.9} is not allowed: it freezes every parameter of the model before "
        "the run's last step; allowed: a mapping that leaves a module with parameters training to the end"
    ),
}


@pytest.mark.parametrize(("value", "refusal"), REFUSALS.items())
def test_a_name_that_is_no_module_with_parameters_or_a_bad_epoch_is_refused_in_one_line(tmp_path, value, refusal):
    result = run_cli(*SMALL, "trainer.max_epochs=1", f"trainer.freeze={value}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and refusal in lines[0], result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
