"""Bad input is refused before anything runs: Hydra's composition (unknown options, keys the config
lacks), then runner.config.schema.validate (each group's keys against its `_target_`'s signature, values by
ablate's rules or the signature's annotations, rules between keys); one line naming the key, the
value and what is allowed; exit 2, no traceback unless HYDRA_FULL_ERROR=1; nothing already written lost."""

import itertools
import sys
from pathlib import Path
from typing import Literal

import pytest
from helpers import CONFIGS, compose_cfg, run_cli
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner.cli import app
from runner.config import hydra_errors, schema

TRAINER_KEYS = (
    "max_epochs, device, precision, layout, threads, compile, graphs, fused, deterministic, checkpoint_every_minutes, grad_clip, "
    "freeze, eval_flip, log_every_n_steps, diagnostics, histograms, sync_bn"
)

MODEL_KEYS = "channels, kernel_size, pool, hidden, batch_norm, bn_position, init, block, pool_position"


def users_part(count: int = 1, rate: float = 0.1, mode: Literal["a", "b"] = "a", sizes: list[int] | None = None,
               flag=False, name="x", dropout=0, anything=None):  # fmt: skip
    """A user's callable, here an activation (ablate passes it nothing): annotations of every kind
    runner.config.targets reads, and defaults without annotations."""


USERS_PART = f"activation._target_={__name__}.users_part"

# The one table of bad values: overrides -> the one line `run` refuses them with, from Hydra's composition
# (keys, options) or from validate (types, values, rules between keys, a user's callable's signature).
# The `run` and sweep tests below take their messages from it. Other files keep only the refusals that
# need their own set-up: a user's project folder (test_own_parts), torchrun's WORLD_SIZE (test_distributed),
# files on disk (test_image_folder, test_checkpoint), a tuned sweep (test_tune).
BAD_INPUTS = [
    # keys and options, refused while Hydra composes
    (["trainer.nonexistent=1"], f"trainer.nonexistent=1 is not allowed; allowed: a key of trainer ({TRAINER_KEYS})"),
    (
        ["optimizer=sgd", "optimizer.momentum=0.9"],
        "optimizer.momentum=0.9 is not allowed; allowed: a key of optimizer (lr, weight_decay, impl)",
    ),
    (["model.widht=3"], f"model.widht=3 is not allowed; allowed: a key of model ({MODEL_KEYS})"),
    (["model.arch=plain"], f"model.arch=plain is not allowed; allowed: a key of model ({MODEL_KEYS})"),
    (
        ["nonexistent=1"],
        "nonexistent=1 is not allowed; allowed: a key of the config (data, model, activation, optimizer, sched, trainer, seed, search_space, ablation, components)",
    ),
    (
        ["model=nope"],
        "model=nope is not known; allowed: bn, bn_after, deep_plain, deep_residual, plain, residual, skip, timm, torchvision",
    ),
    # types, refused by validate
    (["optimizer.lr=abc"], "optimizer.lr='abc' is not allowed; allowed: a number > 0"),
    (["data.batch_size=1.5"], "data.batch_size=1.5 is not allowed; allowed: an integer >= 1"),
    (["model.channels=[a]"], "model.channels=['a'] is not allowed; allowed: a non-empty list of positive integers"),
    (["model.channels=16"], "model.channels=16 is not allowed; allowed: a non-empty list of positive integers"),
    (["seed=abc"], "seed='abc' is not allowed; allowed: an integer >= 0"),
    (["trainer.compile=maybe"], "trainer.compile='maybe' is not allowed; allowed: true or false"),
    (["trainer.graphs=maybe"], "trainer.graphs='maybe' is not allowed; allowed: auto, true or false"),
    (["trainer.deterministic=maybe"], "trainer.deterministic='maybe' is not allowed; allowed: true or false"),
    (["trainer.sync_bn=yes_please"], "trainer.sync_bn='yes_please' is not allowed; allowed: true or false"),
    (["trainer.grad_clip=abc"], "trainer.grad_clip='abc' is not allowed; allowed: a number > 0 or null"),
    (["sched=cosine_restarts", "sched.t_mult=1.5"], "sched.t_mult=1.5 is not allowed; allowed: an integer >= 1"),
    (["optimizer=adam", "optimizer.betas=abc"], "optimizer.betas='abc' is not allowed; allowed: two numbers in [0, 1)"),
    (["~optimizer.lr"], "optimizer.lr has no value; allowed: a value for optim.momentum's parameter lr"),
    (["~data.batch_size"], "data.batch_size has no value; allowed: an integer >= 1"),
    (
        ["+optimizer.momentun=0.9"],
        "optimizer.momentun=0.9 is not allowed; allowed: a key of optimizer (lr, momentum, weight_decay, impl)",
    ),
    (
        ["model._target_=nowhere.Net"],
        "model._target_=nowhere.Net cannot be imported (No module named 'nowhere'); allowed: a class or function on the Python path (a module in the current directory is)",
    ),
    (
        ["model._target_=torch.nn.Linear"],
        "model.channels=[32, 64] is not allowed; allowed: a key of model (in_features, out_features, bias, device, dtype)",
    ),
    (
        ["data=image_folder"],
        "data.root has no value; allowed: a value for runner.data.image_folder.image_folder's parameter root",
    ),
    (
        ["data=torchvision"],
        "data._target_ has no value; allowed: the dotted path of a class or function (data._target_=torchvision.datasets.KMNIST)",
    ),
    (
        ["data=image_folder", "data.root=x", "data.image_size=[1,2,3]"],
        "data.image_size=[1, 2, 3] is not allowed; allowed: an integer >= 1, [height, width] or null",
    ),
    (
        ["model.init=scaled", "activation._target_=torch.nn.GELU"],
        (
            "model.init=scaled is not allowed for activation._target_=torch.nn.GELU: its gain is not known; "
            "allowed: model.init=torch, or a tanh, sigmoid, relu or leaky_relu activation"
        ),
    ),
    # values, refused by validate
    (["optimizer.lr=-1"], "optimizer.lr=-1 is not allowed; allowed: a number > 0"),
    (["optimizer.lr=0"], "optimizer.lr=0 is not allowed; allowed: a number > 0"),
    (["optimizer=momentum", "optimizer.momentum=1"], "optimizer.momentum=1 is not allowed; allowed: 0 < momentum < 1"),
    (["optimizer=nesterov", "optimizer.momentum=0"], "optimizer.momentum=0 is not allowed; allowed: 0 < momentum < 1"),
    (
        ["optimizer=nesterov", "optimizer.momentum=1.5"],
        "optimizer.momentum=1.5 is not allowed; allowed: 0 < momentum < 1",
    ),
    (["optimizer=momentum", "optimizer.momentum=0"], "optimizer.momentum=0 is not allowed; allowed: 0 < momentum < 1"),
    (
        ["optimizer=adam", "optimizer.betas=[0.9,1.0]"],
        "optimizer.betas=[0.9, 1] is not allowed; allowed: two numbers in [0, 1)",
    ),
    (
        ["optimizer=adamw", "optimizer.betas=[0.9]"],
        "optimizer.betas=[0.9] is not allowed; allowed: two numbers in [0, 1)",
    ),
    (["optimizer=adam", "optimizer.eps=0"], "optimizer.eps=0 is not allowed; allowed: a number > 0"),
    (["optimizer.weight_decay=-0.1"], "optimizer.weight_decay=-0.1 is not allowed; allowed: a number >= 0"),
    (["optimizer.impl=bogus"], "optimizer.impl='bogus' is not known; allowed: torch, textbook"),
    (["activation=leaky_relu", "activation.alpha=1.5"], "activation.alpha=1.5 is not allowed; allowed: 0 < alpha < 1"),
    (["activation=leaky_relu", "activation.alpha=0"], "activation.alpha=0 is not allowed; allowed: 0 < alpha < 1"),
    (["data.batch_size=0"], "data.batch_size=0 is not allowed; allowed: an integer >= 1"),
    (["data.val_fraction=1"], "data.val_fraction=1 is not allowed; allowed: 0 <= val_fraction < 1"),
    (["data.val_fraction=-0.1"], "data.val_fraction=-0.1 is not allowed; allowed: 0 <= val_fraction < 1"),
    (["data.train_size=0"], "data.train_size=0 is not allowed; allowed: an integer >= 1 or null"),
    (
        ["data.train_size=100"],
        "data.batch_size=128 is not allowed for data.train_size=100; allowed: batch_size <= train_size",
    ),
    (["trainer.max_epochs=-1"], "trainer.max_epochs=-1 is not allowed; allowed: an integer >= 0"),
    (["trainer.grad_clip=0"], "trainer.grad_clip=0 is not allowed; allowed: a number > 0 or null"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0 is not allowed; allowed: an integer >= 1"),
    (["trainer.threads=0"], "trainer.threads=0 is not allowed; allowed: auto or an integer >= 1"),
    (["trainer.device=tpu"], "trainer.device='tpu' is not known; allowed: auto, cpu, cuda, mps"),
    (["trainer.precision=fp16"], "trainer.precision='fp16' is not known; allowed: auto, fp32, bf16"),
    (["trainer.layout=nhwc"], "trainer.layout='nhwc' is not known; allowed: auto, contiguous, channels_last"),
    (["seed=-1"], "seed=-1 is not allowed; allowed: an integer >= 0"),
    (["model.channels=[]"], "model.channels=[] is not allowed; allowed: a non-empty list of positive integers"),
    (
        ["model.channels=[16,0]"],
        "model.channels=[16, 0] is not allowed; allowed: a non-empty list of positive integers",
    ),
    (["model.hidden=[-1]"], "model.hidden=[-1] is not allowed; allowed: a list of positive integers"),
    (["model.channels=[0]"], "model.channels=[0] is not allowed; allowed: a non-empty list of positive integers"),
    (["model.pool=min"], "model.pool='min' is not known; allowed: max, avg, null"),
    (["model.pool=bogus"], "model.pool='bogus' is not known; allowed: max, avg, null"),
    (["model.kernel_size=0"], "model.kernel_size=0 is not allowed; allowed: an integer >= 1"),
    (["model=bn", "model.bn_position=middle"], "model.bn_position='middle' is not known; allowed: before, after"),
    (["model.init=he"], "model.init='he' is not known; allowed: torch, scaled"),
    (["model=residual", "model.blocks=0"], "model.blocks=0 is not allowed; allowed: an integer >= 1"),
    (
        ["model=residual", "model.channels=[4]", "model.bottleneck_ratio=8"],
        "model.bottleneck_ratio=8 is not allowed for model.channels=[4]; allowed: 1 <= bottleneck_ratio <= 4",
    ),
    (["sched=cosine", "sched.t_max=0"], "sched.t_max=0 is not allowed; allowed: a number of epochs > 0 or null"),
    (["sched.interval=bogus"], "sched.interval='bogus' is not known; allowed: step, epoch"),
    (["sched=cosine_restarts", "sched.t_0=-1"], "sched.t_0=-1 is not allowed; allowed: a number of epochs > 0"),
    (["sched=cosine", "sched.warmup=-1"], "sched.warmup=-1 is not allowed; allowed: a number of epochs >= 0"),
    (["sched=step", "sched.gamma=0"], "sched.gamma=0 is not allowed; allowed: a number > 0"),
    (["sched=plateau", "sched.factor=1"], "sched.factor=1 is not allowed; allowed: 0 < factor < 1"),
    (
        ["sched=plateau", "sched.interval=step"],
        "sched.interval='step' is not allowed for sched._target_=optim.plateau: it steps on the validation loss; allowed: epoch",
    ),
    (
        ["sched=constant", "sched.warmup_start_factor=0"],
        "sched.warmup_start_factor=0 is not allowed; allowed: 0 < warmup_start_factor <= 1",
    ),
    (["+trainer.foo=1"], f"trainer.foo=1 is not allowed; allowed: a key of trainer ({TRAINER_KEYS})"),
    # a user's callable: its keys and values against its signature (annotations, else the defaults' types)
    ([USERS_PART, "+activation.count=1.5"], "activation.count=1.5 is not allowed; allowed: an integer"),
    ([USERS_PART, "+activation.count=true"], "activation.count=true is not allowed; allowed: an integer"),
    ([USERS_PART, "+activation.rate=fast"], "activation.rate='fast' is not allowed; allowed: a number"),
    ([USERS_PART, "+activation.mode=c"], "activation.mode='c' is not known; allowed: a, b"),
    (
        [USERS_PART, "+activation.sizes=[1,x]"],
        "activation.sizes=[1, 'x'] is not allowed; allowed: a list of integers or null",
    ),
    ([USERS_PART, "+activation.flag=yes"], "activation.flag='yes' is not allowed; allowed: true or false"),
    ([USERS_PART, "+activation.name=3"], "activation.name=3 is not allowed; allowed: a string"),
    (
        [USERS_PART, "+activation.widht=3"],
        "activation.widht=3 is not allowed; allowed: a key of activation (count, rate, mode, sizes, flag, name, dropout, anything)",
    ),
]
MESSAGE = {" ".join(overrides): message for overrides, message in BAD_INPUTS}  # "optimizer.lr=abc" -> its line


def refusal(*overrides: str) -> str:
    """The message `run *overrides` refuses with: from Hydra's composition, or from validate."""
    try:
        cfg = compose_cfg(*overrides)
    except (HydraException, OmegaConfBaseException) as e:
        return hydra_errors.describe(e, list(overrides), lambda group: app.chosen_keys(group, list(overrides)))
    with pytest.raises(schema.ConfigError) as error:
        schema.validate(cfg)
    return str(error.value)


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_refused_in_one_line_naming_key_value_and_what_is_allowed(overrides, message):
    assert refusal(*overrides) == message


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "overrides",
    [
        [f"{group}={option}"]
        for group in ("data", "model", "activation", "optimizer", "sched", "trainer")
        for option in options(group)
    ],
    ids=lambda o: o[0],
)
def test_every_option_composes_and_validates(overrides):
    needs = {
        "data=image_folder": ["data.root=any_folder"],
        "data=torchvision": ["data._target_=torchvision.datasets.KMNIST"],
    }
    schema.validate(compose_cfg(*overrides, *needs.get(overrides[0], [])))


def preset_jobs(preset: str) -> list[list[str]]:
    """The overrides of each job `run -m experiment=<preset>` launches (its sweep's combinations)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={preset}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params or {}
    values = [[f"{key}={v}" for v in str(choices).split(",")] for key, choices in params.items()]
    return [[f"experiment={preset}", *combination] for combination in itertools.product(*values)]


# jobs of each preset's sweep: its value lists multiplied out (fmnist_speed is one run, no sweep)
PRESET_JOBS = {"activations": 12, "fmnist_speed": 1, "leaky_small": 6, "normalization": 9, "optimizers": 12,
               "quick": 6, "residual": 6, "schedules": 9}  # fmt: skip


@pytest.mark.parametrize("preset", options("experiment"))
def test_every_preset_and_every_job_of_its_sweep_composes_and_validates(preset):
    jobs = preset_jobs(preset)
    assert len(jobs) == PRESET_JOBS[preset]  # the sweep was read, not just the preset's own config
    for overrides in jobs:
        schema.validate(compose_cfg(*overrides))


def test_the_rules_name_only_keys_that_ablates_parts_take():
    """A rule in runner.config.rules for a key no built-in part takes would never be applied."""
    from runner.config import rules, targets

    taken = {"seed"} | {f"trainer.{k}" for k in compose_cfg().trainer}
    for group in ("data", "model", "activation", "optimizer", "sched"):
        for option in options(group):
            node = compose_cfg(f"{group}={option}")[group]
            if not OmegaConf.is_missing(node, "_target_"):
                target = targets.load(group, node._target_)
                taken |= {f"{group}.{k}" for k in targets.accepted_keys(group, target)}
    assert set(rules.RULES) <= taken


def test_importing_the_schema_does_not_import_torch():
    import subprocess

    code = "import sys, runner.config.schema, runner.cli.app; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


# --- The `run` command ---------------------------------------------------------------------------


# rows of BAD_INPUTS that `run` itself is given: refused while composing (a group's key, the trainer's key)
# and by validate (a type, a value)
@pytest.mark.parametrize(
    "override", ["model.widht=3", "trainer.nonexistent=1", "optimizer.lr=abc", "data.batch_size=0"]
)
def test_run_refuses_bad_input_with_one_line_exit_2_and_writes_nothing(tmp_path, override):
    run_dir = tmp_path / "run"
    result = run_cli(override, f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert result.stderr == f"error: {MESSAGE[override]}\n" and "Traceback" not in result.stdout
    assert not run_dir.exists()


@pytest.mark.parametrize("override", ["optimizer.lr=abc", "data.batch_size=0"])
def test_hydra_full_error_shows_the_traceback(tmp_path, override):
    result = run_cli(override, f"hydra.run.dir={tmp_path / 'run'}", env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0
    assert "Traceback" in result.stderr and override.split("=")[0] in result.stderr


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_bad_sweep_leaves_a_sweep_directory_that_holds_runs_untouched(tmp_path):
    sweep = tmp_path / "sweep"
    for job in ("model=plain", "model=bn"):  # what an earlier sweep left
        (sweep / job / ".hydra").mkdir(parents=True)
        (sweep / job / ".hydra" / "config.yaml").write_text(f"# {job}\n")
        (sweep / job / "metrics.json").write_text('{"status": "completed"}\n')
    (sweep / "multirun.yaml").write_text("# the earlier sweep\n")
    (sweep / "summary.csv").write_text("model,test_acc\n")
    before = snapshot(sweep)
    for overrides, bad in [  # a sweep with a bad value in it -> the row of BAD_INPUTS it is refused with
        (["model=plain,bn", "optimizer.lr=-1"], "optimizer.lr=-1"),  # fixed
        (["model=plain,bn", "optimizer.lr=0.1,-1"], "optimizer.lr=-1"),  # swept
        (["model=plain,bn", "optimizer.lr=0.1,abc"], "optimizer.lr=abc"),  # type
        (["model=plain,nope"], "model=nope"),  # an option
    ]:
        result = run_cli("-m", *overrides, f"hydra.sweep.dir={sweep}")
        assert (result.returncode, result.stderr) == (2, f"error: {MESSAGE[bad]}\n"), overrides
    assert snapshot(sweep) == before


# --- A user's class: the values that fit its signature pass (those that do not are rows of BAD_INPUTS) ---


def test_values_that_fit_a_users_callable_pass():
    values = {
        "count": 2,
        "rate": 1,
        "mode": "b",
        "sizes": "[3,4]",
        "flag": "true",
        "name": "y",
        "dropout": 0.5,
        "anything": "[1]",
    }
    schema.validate(compose_cfg(USERS_PART, *(f"+activation.{key}={value}" for key, value in values.items())))
