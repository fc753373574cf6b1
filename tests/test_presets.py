"""The experiment presets: each composes, sweeps real choices over seeds 0,1,2, and runs."""

import json

import pytest
from helpers import CONFIGS, run_cli
from hydra import compose, initialize_config_dir

PRESETS = ["activations", "leaky_small", "normalization", "residual", "optimizers", "schedules"]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_sweeps_existing_choices_over_three_seeds_on_fashion_mnist(preset):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={preset}"], return_hydra_config=True)
    params = dict(cfg.hydra.sweeper.params)
    assert params.pop("seed") == "0,1,2" and cfg.data._target_ == "runner.data.datasets.fashion_mnist"
    ((group, options),) = params.items()
    for option in options.split(","):
        assert (CONFIGS / group / f"{option}.yaml").is_file()


def test_a_preset_runs_as_a_sweep_and_command_line_values_win(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m", "experiment=leaky_small", "data=mnist_5k", "seed=0", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}"
    )
    assert result.returncode == 0, result.stderr
    jobs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert jobs == ["activation=leaky_relu", "activation=relu"]  # seed=0 is fixed here, so not in the names
    metrics = json.loads((sweep / jobs[0] / "metrics.json").read_text())
    assert metrics["num_params"] == (2 * 9 + 2) + (2 * 14 * 14 * 4 + 4) + (4 * 10 + 10)  # the preset's tiny net
    assert (sweep / "summary.md").is_file()


def test_deep_plain_and_deep_residual_have_the_same_depth():
    from runner.engine import builders

    def convs(name):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("config", overrides=[f"model={name}"])
        model = builders.build_model(cfg.model, cfg.activation, (1, 28, 28), 10)
        shortcut = {id(m) for b in model.features if hasattr(b, "shortcut") for m in b.shortcut.modules()}
        return sum(1 for m in model.modules() if type(m).__name__ == "Conv2d" and id(m) not in shortcut)

    assert convs("deep_plain") == convs("deep_residual") == 13
