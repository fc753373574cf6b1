"""Parts nobody here wrote, by `_target_` alone: torchvision's and timm's models, a module copied from
another project with its own size names, torch's schedulers; and what is checked on the model's first
step before a run trains (runner.engine.preflight): its output width, who is at fault when it raises,
and the memory layout it can take. Real composition and real builds; the sweeps train for real on
small CIFAR-10 files in the real format."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, compose_cfg, run_cli, write_cifar_like
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runner.engine import run

EXAMPLE = ROOT / "examples" / "own_parts"
FAMILIES = (  # one builder of each family, at its smallest
    "resnet18", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf",
    "densenet121", "shufflenet_v2_x0_5", "squeezenet1_1", "convnext_tiny",
)  # fmt: skip


@pytest.fixture
def cifar(tmp_path) -> list[str]:
    """Overrides for small CIFAR-10 batch files (10 images each, RGB 32x32) in the real format."""
    write_cifar_like(tmp_path / "data" / "cifar-10-batches-py", per_batch=10)
    return ["data=cifar10", f"data.root={tmp_path / 'data'}", "data.verify=false", "data.val_fraction=0"]


@pytest.fixture
def own_parts(monkeypatch):
    """examples/own_parts importable, as it is from its folder (the current directory is)."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    yield
    sys.modules.pop("my_parts", None)


def user_cfg(*overrides: str):
    """The config composed with examples/own_parts/configs beside the built-in tree, as --config-dir adds it."""
    return compose_cfg(*overrides, f"hydra.searchpath=[file://{EXAMPLE / 'configs'}]")


def refusal(*overrides: str) -> str:
    with pytest.raises(run.SetupError) as refused:
        run.build(user_cfg(*overrides))
    message = str(refused.value)
    assert "\n" not in message
    return message


def test_a_model_whose_output_is_not_the_class_count_is_refused_naming_both_widths(own_parts):
    for width in (7, 12):
        message = refusal("model=my_net", f"+model.num_classes={width}")
        assert message == (
            f"model._target_=my_parts.TinyNet returns {width} outputs for a batch of 2, the data has 10 classes; "
            "allowed: a model whose output is (batch, 10); give it the data's class count, "
            "e.g. model.num_classes=${data:num_classes}"
        )


def test_a_constructor_that_raises_is_blamed_on_the_model_with_its_line(own_parts):
    message = refusal("model=my_net", "model.width=-1")
    assert message.startswith("model._target_=my_parts.TinyNet cannot be built for 1x28x28 images and 10 classes (")
    line = next(
        i
        for i, text in enumerate((EXAMPLE / "my_parts.py").read_text().splitlines(), 1)
        if "nn.Conv2d(in_shape[0]" in text
    )
    assert f"my_parts.py:{line})" in message


def test_an_activations_bad_value_is_blamed_on_the_activation():
    message = refusal("activation._target_=torch.nn.GELU", "+activation.approximate=tanhh")
    assert message.startswith("activation._target_=torch.nn.GELU with approximate='tanhh' fails in the model (")
    assert "approximate" in message.split("(", 1)[1]


def test_a_torchvision_model_with_a_fixed_image_size_is_refused_naming_the_key_that_changes_it(cifar):
    message = refusal(*cifar, "model=torchvision", "model._target_=torchvision.models.vit_b_16")
    assert message.startswith("model._target_=torchvision.models.vit_b_16 fails on 3x32x32 images (AssertionError: ")
    assert message.endswith("; or model.image_size=32 for these images")
    setup = run.build(
        user_cfg(*cifar, "model=torchvision", "model._target_=torchvision.models.vit_b_16", "+model.image_size=32")
    )
    assert setup.learner.model.image_size == 32


def test_a_tuple_output_is_refused_naming_the_key_that_mends_it(cifar):
    message = refusal(
        *cifar, "model=torchvision", "model._target_=torchvision.models.googlenet", "+model.init_weights=false"
    )
    assert message == (
        "model._target_=torchvision.models.googlenet returns a GoogLeNetOutputs, not a tensor of logits (2, 10); "
        "allowed: a model that returns the logits (model.aux_logits=false)"
    )


def test_layout_auto_takes_contiguous_for_a_model_that_fails_in_channels_last(own_parts, cifar):
    """The copied dense net flattens with `view`, which channels_last RGB images do not allow."""
    setup = run.build(user_cfg(*cifar, "model=dense", "trainer.layout=auto", "trainer.device=cpu"))
    assert setup.compute.layout == "contiguous"
    assert setup.batches.train.memory_format == torch.contiguous_format
    assert (
        run.build(user_cfg(*cifar, "model=bn", "trainer.layout=auto", "trainer.device=cpu")).compute.layout
        == "channels_last"
    )
    message = refusal(*cifar, "model=dense", "trainer.layout=channels_last")
    assert message.startswith(
        "trainer.layout=channels_last is not allowed for model._target_=my_parts.SimpleDenseNet: its step fails in "
        "channels_last (RuntimeError: "
    )
    assert message.endswith("; allowed: auto or contiguous")


def test_the_first_step_leaves_the_model_and_the_generators_as_they_were(own_parts, cifar):
    """The check runs a forward and backward pass in training mode: BatchNorm's statistics, the
    gradients and the random generators must be as if it had not run."""
    setup = run.build(user_cfg(*cifar, "model=bn", "seed=3"))
    run.seed_everything(3)
    fresh = run.build_model(user_cfg(*cifar, "model=bn", "seed=3"), setup.dataset)
    for (name, a), b in zip(setup.learner.model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a.cpu(), b.cpu()), name
    assert all(p.grad is None for p in setup.learner.model.parameters())


def test_torch_schedulers_get_the_training_length_under_their_own_names(cifar):
    def schedule(*overrides):
        return run.build(user_cfg(*cifar, "data.batch_size=10", "trainer.max_epochs=3", *overrides)).learner.schedule

    torch_sched = "sched._target_=torch.optim.lr_scheduler."
    plain = ["sched=constant", "~sched.warmup", "~sched.warmup_start_factor"]
    one_cycle = schedule(f"{torch_sched}OneCycleLR", *plain, "+sched.max_lr=0.1", "sched.interval=step")
    assert one_cycle.scheduler.total_steps == 3 * 5  # 50 training images in batches of 10
    by_epoch = schedule(f"{torch_sched}OneCycleLR", *plain, "+sched.max_lr=0.1", "sched.interval=epoch")
    assert by_epoch.scheduler.total_steps == 3
    assert schedule(f"{torch_sched}PolynomialLR", *plain, "sched.interval=step").scheduler.total_iters == 15
    assert schedule(f"{torch_sched}LinearLR", *plain, "sched.interval=epoch").scheduler.total_iters == 3
    said = schedule(f"{torch_sched}LinearLR", *plain, "sched.interval=epoch", "+sched.total_iters=2")
    assert said.scheduler.total_iters == 2  # what the YAML says wins
    message = refusal(*cifar, f"{torch_sched}CyclicLR", *plain, "+sched.max_lr=0.1", "+sched.base_lr=[0.1,0.2]")
    assert message.startswith(
        "sched._target_=torch.optim.lr_scheduler.CyclicLR with max_lr=0.1, base_lr=[0.1, 0.2] cannot be built (ValueError: "
    )


def lr_curve(run_dir: Path) -> list[float]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    return [e.value for e in events.Scalars("lr")]


def test_a_sweep_of_torch_schedulers_as_their_yamls_say_them(tmp_path, cifar):
    """OneCycleLR with only max_lr, CyclicLR, PolynomialLR, LinearLR, StepLR and ReduceLROnPlateau,
    each a YAML of a user's config folder, trained for real in one sweep."""
    folder = tmp_path / "configs" / "sched"
    folder.mkdir(parents=True)
    yamls = {
        "onecycle": "_target_: torch.optim.lr_scheduler.OneCycleLR\n_partial_: true\nmax_lr: 0.1\ninterval: step\n",
        "cyclic": "_target_: torch.optim.lr_scheduler.CyclicLR\n_partial_: true\nbase_lr: 0.001\nmax_lr: 0.1\n"
        "step_size_up: 2\ninterval: step\n",
        "poly": "_target_: torch.optim.lr_scheduler.PolynomialLR\n_partial_: true\npower: 1.0\ninterval: step\n",
        "linear": "_target_: torch.optim.lr_scheduler.LinearLR\n_partial_: true\nstart_factor: 0.5\ninterval: epoch\n",
        "steplr": "_target_: torch.optim.lr_scheduler.StepLR\n_partial_: true\nstep_size: 1\ngamma: 0.5\ninterval: epoch\n",
        "reduce": "_target_: torch.optim.lr_scheduler.ReduceLROnPlateau\n_partial_: true\npatience: 0\nfactor: 0.5\n",
    }
    for name, text in yamls.items():
        (folder / f"{name}.yaml").write_text(text)
    sweep = tmp_path / "sweep"
    cifar = [o for o in cifar if not o.startswith("data.val_fraction")] + ["data.val_fraction=0.2"]
    result = run_cli(
        "--config-dir", str(tmp_path / "configs"), "-m", f"sched={','.join(yamls)}", *cifar,
        "model.channels=[4]", "model.hidden=[]", "data.batch_size=8", "trainer.max_epochs=2",
        "optimizer.lr=0.1", "trainer.log_every_n_steps=1", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    curves = {name: lr_curve(sweep / f"sched={name}") for name in yamls}  # each step's rate, as the steps go
    for name in yamls:
        assert json.loads((sweep / f"sched={name}" / "metrics.json").read_text())["status"] == "completed"
    total = len(curves["onecycle"])  # the steps of both epochs: logged after each
    assert total >= 6
    assert max(curves["onecycle"]) == pytest.approx(0.1, rel=0.05)
    assert min(curves["onecycle"]) == pytest.approx(
        0.1 / 25 / 1e4
    )  # max_lr / div_factor / final_div_factor, at the end
    assert max(curves["cyclic"]) == pytest.approx(0.1) and min(curves["cyclic"]) == pytest.approx(0.001)
    assert (
        curves["poly"][0] == pytest.approx(0.1 * (1 - 1 / total)) and curves["poly"][-1] == 0
    )  # over the whole training
    assert curves["linear"][0] == pytest.approx(0.05) and curves["linear"][-1] == pytest.approx(0.075)
    assert curves["steplr"][0] == pytest.approx(0.1) and curves["steplr"][-1] == pytest.approx(0.05)
    assert curves["reduce"][0] == pytest.approx(0.1)


def test_torchvision_models_of_eight_families_train_as_they_are(tmp_path, cifar):
    """One builder of each family, by `_target_` alone: one training epoch and the test evaluation."""
    sweep = tmp_path / "sweep"
    targets = ",".join(f"torchvision.models.{name}" for name in FAMILIES)
    result = run_cli(
        "-m", "model=torchvision", f"model._target_={targets}", *cifar, "data.batch_size=10",
        "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in FAMILIES:
        (run,) = [p for p in sweep.iterdir() if p.name.endswith(f".{name}")]
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["steps"] == 5, name
        assert metrics["test_acc"] is not None and metrics["num_params"] > 100_000, name


def test_a_timm_model_takes_the_datas_channels_and_classes(tmp_path):
    timm = pytest.importorskip("timm", reason="timm is an optional extra: pip install -e '.[timm]'")
    run_dir = tmp_path / "run"
    result = run_cli(
        "model=timm", "model.model_name=resnet10t", "data.train_size=64", "data.batch_size=32",
        "trainer.max_epochs=1", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    grey_digits = timm.create_model("resnet10t", in_chans=1, num_classes=10)  # mnist_5k: 1x28x28, 10 classes
    assert metrics["num_params"] == sum(p.numel() for p in grey_digits.parameters())


def test_the_documented_yamls_of_a_copied_module_fake_data_and_one_cycle_train_together(tmp_path):
    """examples/own_parts as a user has it: the dense net copied from another project (given the data's
    facts under its own names, flattening with `view`) on FakeData's RGB images with OneCycleLR: it
    trains, contiguous under layout auto, and the run says so."""
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    run_dir = tmp_path / "run"
    result = run_cli(
        "--config-dir", "configs", "data=fake", "data.size=200", "model=dense", "sched=onecycle",
        "trainer.max_epochs=1", "trainer.device=cpu", f"hydra.run.dir={run_dir}", cwd=project,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["layout"] == "contiguous"
    assert metrics["num_params"] == (3 * 32 * 32 + 1) * 64 + 2 * (65 * 64) + 3 * 2 * 64 + 65 * 10
    assert metrics["choices"]["sched"] == "onecycle" and metrics["choices"]["data"] == "fake"


@pytest.mark.slow
def test_the_walk_over_torchvisions_builders_says_which_train_and_why_the_others_do_not(tmp_path):
    """scripts/torchvision_models.py, as the docs run it over every builder, here over two."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "torchvision_models.py"), "resnet18", "alexnet", "--out", str(tmp_path / "walk")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.split()}
    assert lines["resnet18"].split()[1] == "completed"
    assert lines["alexnet"].split()[1] == "failed" and "fails on 3x32x32 images" in lines["alexnet"]
    assert (
        result.stdout.splitlines()[-1]
        == "1 of 2 torchvision classification builders train as they are on 3x32x32 images"
    )
