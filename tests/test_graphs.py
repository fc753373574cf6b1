"""trainer.graphs: the training step as a CUDA graph (runner/engine/graphs.py). What runs without
a GPU: the choice under auto and the refusal of true, and the step's bookkeeping without the
capture (the fused update reading its learning rate from the cells, bitwise equal to the same
update reading the schedule's floats; a resumed run equal to one that never stopped). The capture
itself is checked on a GPU by benchmarks/gpu_check.sh."""

import dataclasses
import json

import pytest
import torch
from helpers import compose_cfg, run_cli

from runner.cli.console import TrainingProgress
from runner.engine import graphs, run
from runner.engine.log import RunLogger
from runner.engine.train import Reporting, Trainer, TrainerConfig

SMALL = ["data.train_size=300", "model=bn", "model.channels=[8]", "model.hidden=[]", "sched=cosine",
         "trainer.log_every_n_steps=4", "data.batch_size=32"]  # fmt: skip


def test_auto_captures_only_where_the_step_can_be_and_true_elsewhere_is_refused():
    model = torch.nn.Linear(2, 2)
    sgd, rprop = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.Rprop(model.parameters())
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # only the type is read: no GPU needed
    assert graphs.pick("auto", cuda, sgd, compile=False, processes=1)
    assert not graphs.pick("auto", cpu, sgd, compile=False, processes=1)
    assert not graphs.pick("auto", cuda, sgd, compile=True, processes=1)
    assert not graphs.pick("auto", cuda, sgd, compile=False, processes=2)
    assert not graphs.pick("auto", cuda, rprop, compile=False, processes=1)
    assert not graphs.pick(False, cuda, sgd, compile=False, processes=1)
    with pytest.raises(
        ValueError,
        match=r"^trainer.graphs=true needs an optimizer with a fused step.*\(this run's is Rprop\); allowed here: auto, false$",
    ):
        graphs.pick(True, cuda, rprop, compile=False, processes=1)


def test_graphs_true_on_this_cpu_is_one_line_and_auto_records_what_it_chose(tmp_path, quick):
    result = run_cli(*quick, "trainer.graphs=true", f"hydra.run.dir={tmp_path / 'refused'}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert (
        result.stderr
        == "error: trainer.graphs=true needs a CUDA GPU (this run trains on cpu); allowed here: auto, false\n"
    )
    assert not (tmp_path / "refused" / "metrics.json").exists()
    auto = run_cli(*quick, f"hydra.run.dir={tmp_path / 'auto'}")
    assert auto.returncode == 0, auto.stderr
    assert json.loads((tmp_path / "auto" / "metrics.json").read_text())["graphs"] is False


def trainer(cfg, tmp_path, graphed: bool, capture: bool = False) -> Trainer:
    """A run's Trainer: with the graphed step (captured, or its bookkeeping without capture), or
    the ordinary step on the same fused update."""
    setup = run.build(cfg)
    learner = setup.learner
    learner.autocast_dtype = None  # fp32, as the graphed step below
    if graphed:
        learner.graphed_step = graphs.GraphedStep(
            learner.model, learner.optimizer, None, cfg.trainer.grad_clip, capture=capture
        )
    else:
        for group in learner.optimizer.param_groups:
            group.update(fused=True, foreach=False)
    reporting = Reporting(RunLogger(tmp_path, enabled=False), TrainingProgress(enabled=False))
    return Trainer(learner, setup.batches, TrainerConfig.of(cfg.trainer), reporting)


@pytest.mark.parametrize("optimizer", ["nesterov", "adam", "adamw"])
def test_the_graphed_steps_update_follows_the_schedule_and_resumes_bitwise(tmp_path, optimizer):
    cfg = compose_cfg(*SMALL, f"optimizer={optimizer}", "trainer.max_epochs=2")
    plain = trainer(cfg, tmp_path, graphed=False)
    plain.fit()
    graphed = trainer(cfg, tmp_path, graphed=True)
    result = graphed.fit()
    lrs = [entry["lr"] for entry in result.history]
    assert lrs[0] != lrs[1] and graphed.step == plain.step == 2 * len(graphed.train_batches)
    for name, value in plain.model.state_dict().items():
        if optimizer == "nesterov":
            assert torch.equal(graphed.model.state_dict()[name], value), name
        else:  # Adam's fused update divides the float32 cell, not the float, by its bias correction
            torch.testing.assert_close(graphed.model.state_dict()[name], value, msg=name)
    assert isinstance(graphed.optimizer.param_groups[0]["lr"], float)  # the schedule and state_dict keep floats

    first = trainer(cfg, tmp_path, graphed=True)
    first.config = dataclasses.replace(
        first.config, max_epochs=1
    )  # stopped after its first epoch, its schedule that of 2
    first.fit()
    resumed = trainer(cfg, tmp_path, graphed=True)
    resumed.load_state_dict(first.state_dict())
    again = resumed.fit()
    assert [e["train_loss"] for e in again.history] == [e["train_loss"] for e in result.history]
    for name, value in graphed.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs it on one)")
@pytest.mark.parametrize("optimizer", ["nesterov", "adam"])
def test_on_a_gpu_the_captured_step_computes_the_eager_steps_bits_and_resumes_bitwise(tmp_path, optimizer):
    cfg = compose_cfg(*SMALL, f"optimizer={optimizer}", "trainer.max_epochs=2", "trainer.device=cuda")
    eager = trainer(cfg, tmp_path, graphed=True)
    eager.fit()
    captured = trainer(cfg, tmp_path, graphed=True, capture=True)
    result = captured.fit()
    assert captured.graphed_step.graph is not None
    for name, value in eager.model.state_dict().items():
        assert torch.equal(captured.model.state_dict()[name], value), name

    first = trainer(cfg, tmp_path, graphed=True, capture=True)
    first.config = dataclasses.replace(first.config, max_epochs=1)
    first.fit()
    resumed = trainer(cfg, tmp_path, graphed=True, capture=True)
    resumed.load_state_dict(first.state_dict())
    assert [e["train_loss"] for e in resumed.fit().history] == [e["train_loss"] for e in result.history]
    for name, value in captured.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def test_a_freeze_captures_the_step_again_and_the_update_stays_the_plain_steps(tmp_path):
    cfg = compose_cfg(*SMALL, "optimizer=nesterov", "trainer.max_epochs=2", "trainer.freeze={features.0:1}")
    plain = trainer(cfg, tmp_path, graphed=False)
    plain.fit()
    graphed = trainer(cfg, tmp_path, graphed=True)
    graphed.fit()
    steps = len(graphed.train_batches)
    assert graphed.graphed_step.steps == steps  # counted again from the freeze, at the second epoch's start
    for name, value in plain.model.state_dict().items():
        assert torch.equal(graphed.model.state_dict()[name], value), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs it on one)")
def test_on_a_gpu_a_step_captured_again_after_a_freeze_computes_the_eager_steps_bits(tmp_path):
    cfg = compose_cfg(
        *SMALL, "optimizer=nesterov", "trainer.max_epochs=2", "trainer.device=cuda", "trainer.freeze={features.0:1}"
    )
    eager = trainer(cfg, tmp_path, graphed=True)
    eager.fit()
    captured = trainer(cfg, tmp_path, graphed=True, capture=True)
    captured.fit()
    assert captured.graphed_step.graph is not None and captured.freezing.frozen == {
        "features.0": len(eager.train_batches)
    }
    for name, value in eager.model.state_dict().items():
        assert torch.equal(captured.model.state_dict()[name], value), name
