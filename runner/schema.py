"""The config's schema and the rules its values follow, checked before anything runs.

Types: one dataclass per kind of choice, registered in Hydra's ConfigStore; each YAML in
configs/<group>/ extends its schema (`defaults: [/schema_optimizer_momentum@_here_, _self_]`), so
composition refuses a key the schema lacks and a value of the wrong type (`optimizer.lr=abc`).
Values live in the YAML files; the schema holds no defaults.

Ranges and the rules between keys: `validate(cfg)`, which `run` calls before Hydra writes anything
and every job calls again before it loads data; the builders (models, optim, runner.data) call
`check(group, node)` on the group they build. Each refusal is one line: the key, the value and what
is allowed.

No torch here: `run --help` and `run --cfg job` import this module.
"""

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner import GROUPS

# The names a config may choose; the builders dispatch on the same names (tests/test_validation.py).
DATASETS = ("mnist_5k", "mnist", "fashion_mnist", "cifar10")
ARCHS = ("plain", "skip", "residual")
POOLS = ("max", "avg")
BN_POSITIONS = ("before", "after")
INITS = ("torch", "scaled")
ACTIVATIONS = ("tanh", "sigmoid", "relu", "leaky_relu")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
IMPLS = ("torch", "textbook")
SCHEDULES = ("constant", "cosine", "cosine_restarts", "step", "plateau")
INTERVALS = ("step", "epoch")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
LAYOUTS = ("auto", "contiguous", "channels_last")

# --- Types: the schema of each choice ------------------------------------------------------------
# No defaults: the values are in the YAML files. NAMES: the values of the group's name key
# (data.name, model.arch, ...) whose keys a schema holds.


@dataclass
class Data:
    NAMES: ClassVar[tuple[str, ...]] = ("mnist", "fashion_mnist", "cifar10")
    name: str
    root: str | None
    download: bool
    verify: bool
    batch_size: int
    val_fraction: float
    train_size: int | None
    normalize: bool
    split_seed: int
    augment: bool


@dataclass
class Mnist5kData(Data):
    NAMES: ClassVar[tuple[str, ...]] = ("mnist_5k",)
    test_fraction: float


@dataclass
class Model:
    NAMES: ClassVar[tuple[str, ...]] = ("plain", "skip")
    arch: str
    channels: list[int]
    kernel_size: int
    pool: str | None
    hidden: list[int]
    batch_norm: bool
    bn_position: str
    init: str


@dataclass
class ResidualModel(Model):
    NAMES: ClassVar[tuple[str, ...]] = ("residual",)
    blocks: int
    bottleneck_ratio: int


@dataclass
class Activation:
    NAMES: ClassVar[tuple[str, ...]] = ("tanh", "sigmoid", "relu")
    name: str


@dataclass
class LeakyReluActivation(Activation):
    NAMES: ClassVar[tuple[str, ...]] = ("leaky_relu",)
    alpha: float


@dataclass
class Optimizer:
    NAMES: ClassVar[tuple[str, ...]] = ("sgd",)
    name: str
    lr: float
    weight_decay: float
    impl: str


@dataclass
class MomentumOptimizer(Optimizer):
    NAMES: ClassVar[tuple[str, ...]] = ("momentum", "nesterov")
    momentum: float


@dataclass
class AdamOptimizer(Optimizer):
    NAMES: ClassVar[tuple[str, ...]] = ("adam", "adamw")
    betas: list[float]
    eps: float


@dataclass
class Sched:
    name: str
    interval: str


@dataclass
class ConstantSched(Sched):
    NAMES: ClassVar[tuple[str, ...]] = ("constant",)
    warmup: float
    warmup_start_factor: float


@dataclass
class CosineSched(Sched):
    NAMES: ClassVar[tuple[str, ...]] = ("cosine",)
    eta_min: float
    t_max: float | None
    warmup: float
    warmup_start_factor: float


@dataclass
class CosineRestartsSched(Sched):
    NAMES: ClassVar[tuple[str, ...]] = ("cosine_restarts",)
    eta_min: float
    t_0: float
    t_mult: int
    warmup: float
    warmup_start_factor: float


@dataclass
class StepSched(Sched):
    NAMES: ClassVar[tuple[str, ...]] = ("step",)
    step_size: float
    gamma: float
    warmup: float
    warmup_start_factor: float


@dataclass
class PlateauSched(Sched):
    NAMES: ClassVar[tuple[str, ...]] = ("plateau",)
    factor: float
    patience: int
    eta_min: float


@dataclass
class Trainer:
    max_epochs: int
    device: str
    precision: str
    layout: str
    threads: Any  # auto or an integer
    compile: bool
    deterministic: bool
    checkpoint_every_minutes: float | None
    grad_clip: float | None
    log_every_n_steps: int
    diagnostics: bool
    histograms: bool
    sync_bn: bool


@dataclass
class Run:
    """The whole config of a run: configs/config.yaml extends it."""

    data: Data
    model: Model
    activation: Activation
    optimizer: Optimizer
    sched: Sched
    trainer: Trainer
    seed: int


SCHEMAS = {  # name in the ConfigStore (a root-level name, so `run --help` does not list it) -> schema
    "schema_run": Run,
    "schema_data": Data,
    "schema_data_mnist_5k": Mnist5kData,
    "schema_model": Model,
    "schema_model_residual": ResidualModel,
    "schema_activation": Activation,
    "schema_activation_leaky_relu": LeakyReluActivation,
    "schema_optimizer": Optimizer,
    "schema_optimizer_momentum": MomentumOptimizer,
    "schema_optimizer_adam": AdamOptimizer,
    "schema_sched_constant": ConstantSched,
    "schema_sched_cosine": CosineSched,
    "schema_sched_cosine_restarts": CosineRestartsSched,
    "schema_sched_step": StepSched,
    "schema_sched_plateau": PlateauSched,
    "schema_trainer": Trainer,
}

for _name, _schema in SCHEMAS.items():
    ConfigStore.instance().store(name=_name, node=_schema)

# --- Values: what each key allows ----------------------------------------------------------------


class ConfigError(ValueError):
    """A config value that is not allowed; the message names the key, the value and what is allowed."""


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(at_least: int) -> Callable[[Any], bool]:
    return lambda v: is_int(v) and v >= at_least


def number(
    above: float | None = None, at_least: float | None = None, below: float | None = None
) -> Callable[[Any], bool]:
    def ok(v) -> bool:
        return (
            is_number(v)
            and (above is None or v > above)
            and (at_least is None or v >= at_least)
            and (below is None or v < below)
        )

    return ok


def or_null(rule: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or rule(v)


def boolean(v) -> bool:
    return isinstance(v, bool)


def string(v) -> bool:
    return isinstance(v, str)


def int_list(non_empty: bool) -> Callable[[Any], bool]:
    return lambda v: (
        isinstance(v, (list, ListConfig)) and (len(v) > 0 or not non_empty) and all(is_int(c) and c >= 1 for c in v)
    )


def betas(v) -> bool:
    return isinstance(v, (list, ListConfig)) and len(v) == 2 and all(is_number(b) and 0 <= b < 1 for b in v)


# key -> names it may take (refused as "is not known"), or (test, what is allowed)
RULES: dict[str, tuple[str, ...] | tuple[Callable[[Any], bool], str]] = {
    "seed": (integer(0), "an integer >= 0"),
    "data.name": DATASETS,
    "data.root": (or_null(string), "a folder or null"),
    "data.download": (boolean, "true or false"),
    "data.verify": (boolean, "true or false"),
    "data.batch_size": (integer(1), "an integer >= 1"),
    "data.val_fraction": (number(at_least=0, below=1), "0 <= val_fraction < 1"),
    "data.train_size": (or_null(integer(1)), "an integer >= 1 or null"),
    "data.normalize": (boolean, "true or false"),
    "data.split_seed": (integer(0), "an integer >= 0"),
    "data.augment": (boolean, "true or false"),
    "data.test_fraction": (number(above=0, below=1), "0 < test_fraction < 1"),
    "model.arch": ARCHS,
    "model.channels": (int_list(non_empty=True), "a non-empty list of positive integers"),
    "model.kernel_size": (integer(1), "an integer >= 1"),
    "model.pool": (*POOLS, None),
    "model.hidden": (int_list(non_empty=False), "a list of positive integers"),
    "model.batch_norm": (boolean, "true or false"),
    "model.bn_position": BN_POSITIONS,
    "model.init": INITS,
    "model.blocks": (integer(1), "an integer >= 1"),
    "model.bottleneck_ratio": (integer(1), "an integer >= 1"),
    "activation.name": ACTIVATIONS,
    "activation.alpha": (number(above=0, below=1), "0 < alpha < 1"),
    "optimizer.name": OPTIMIZERS,
    "optimizer.lr": (number(above=0), "a number > 0"),
    "optimizer.weight_decay": (number(at_least=0), "a number >= 0"),
    "optimizer.impl": IMPLS,
    "optimizer.momentum": (number(above=0, below=1), "0 < momentum < 1"),  # momentum and nesterov need > 0
    "optimizer.betas": (betas, "two numbers in [0, 1)"),
    "optimizer.eps": (number(above=0), "a number > 0"),
    "sched.name": SCHEDULES,
    "sched.interval": INTERVALS,
    "sched.warmup": (number(at_least=0), "a number of epochs >= 0"),
    "sched.warmup_start_factor": (lambda v: number(above=0)(v) and v <= 1, "0 < warmup_start_factor <= 1"),
    "sched.eta_min": (number(at_least=0), "a number >= 0"),
    "sched.t_max": (or_null(number(above=0)), "a number of epochs > 0 or null"),
    "sched.t_0": (number(above=0), "a number of epochs > 0"),
    "sched.t_mult": (integer(1), "an integer >= 1"),
    "sched.step_size": (number(above=0), "a number of epochs > 0"),
    "sched.gamma": (number(above=0), "a number > 0"),
    "sched.factor": (number(above=0, below=1), "0 < factor < 1"),
    "sched.patience": (integer(0), "an integer >= 0"),
    "trainer.max_epochs": (integer(0), "an integer >= 0"),
    "trainer.device": DEVICES,
    "trainer.precision": PRECISIONS,
    "trainer.layout": LAYOUTS,
    "trainer.threads": (lambda v: v == "auto" or integer(1)(v), "auto or an integer >= 1"),
    "trainer.compile": (boolean, "true or false"),
    "trainer.deterministic": (boolean, "true or false"),
    "trainer.checkpoint_every_minutes": (or_null(number(above=0)), "a number > 0 or null"),
    "trainer.grad_clip": (or_null(number(above=0)), "a number > 0 or null"),
    "trainer.log_every_n_steps": (integer(1), "an integer >= 1"),
    "trainer.diagnostics": (boolean, "true or false"),
    "trainer.histograms": (boolean, "true or false"),
    "trainer.sync_bn": (boolean, "true or false"),
}
NAME_KEYS = {"data": "name", "model": "arch", "activation": "name", "optimizer": "name", "sched": "name"}


def show(value) -> str:
    """A value as the command line writes it: strings quoted, 1.0 as 1, null, true."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def allowed(key: str) -> str:
    """What `key` allows, in words."""
    rule = RULES.get(key)
    if rule is None:
        return "see README.md"
    if callable(rule[0]):
        return rule[1]
    return ", ".join("null" if n is None else n for n in rule)


def refuse(key: str, value, what: str | None = None, verb: str = "is not allowed") -> ConfigError:
    return ConfigError(f"{key}={show(value)} {verb}; allowed: {what or allowed(key)}")


def check_value(key: str, value) -> None:
    rule = RULES[key]
    if callable(rule[0]):
        if not rule[0](value):
            raise refuse(key, value)
    elif value not in rule:
        raise refuse(key, value, verb="is not known")


def keys_of(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def schema_of(node) -> type | None:
    """The dataclass a composed node follows, or None for a plain mapping."""
    schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    return schema if dataclasses.is_dataclass(schema) else None


def check(group: str, node) -> None:
    """The values of one group (`cfg.optimizer`, ...): its keys, each value's range, then the rules between keys."""
    schema = schema_of(node)
    known = keys_of(schema) if schema else [k.split(".", 1)[1] for k in RULES if k.startswith(f"{group}.")]
    for key in node:
        full_key = f"{group}.{key}"
        if isinstance(node, DictConfig) and OmegaConf.is_missing(node, key):
            raise ConfigError(f"{full_key} has no value; allowed: {allowed(full_key)}")
        if key not in known:
            raise refuse(full_key, node[key], f"a key of {group} ({', '.join(known)})")
        check_value(full_key, node[key])
    name_key = NAME_KEYS.get(group)
    names = getattr(schema, "NAMES", ())
    if names and node[name_key] not in names:
        name = node[name_key]
        raise refuse(f"{group}.{name_key}", name, f"{', '.join(names)}; for the keys of {name}, choose {group}={name}")
    if group in RELATIONS:
        RELATIONS[group](node)


def _sched_relations(node) -> None:
    if node.name == "plateau" and node.interval != "epoch":
        raise ConfigError(f"sched.interval={show(node.interval)} is not allowed for sched=plateau; allowed: epoch")
    if node.name == "plateau" and node.get("warmup"):
        raise ConfigError(f"sched.warmup={show(node.warmup)} is not allowed for sched=plateau; allowed: 0")


def _model_relations(node) -> None:
    ratio, channels = node.get("bottleneck_ratio"), node.channels
    if node.arch == "residual" and ratio is not None and ratio > min(channels):
        raise ConfigError(
            f"model.bottleneck_ratio={show(ratio)} is not allowed for model.channels={show(channels)}; "
            f"allowed: 1 <= bottleneck_ratio <= {min(channels)}"
        )


RELATIONS: dict[str, Callable[[Any], None]] = {
    "sched": _sched_relations,
    "model": _model_relations,
}
TOP_KEYS = (*GROUPS, "seed")


def validate(cfg) -> None:
    """Refuse a config that no run could start from: the first bad value raises ConfigError, whose
    message is one line naming the key, the value and what is allowed."""
    for key in cfg:
        if key == "hydra":
            continue
        if key not in TOP_KEYS:
            raise refuse(key, cfg[key], f"a key of the config ({', '.join(TOP_KEYS)})")
        if isinstance(cfg, DictConfig) and OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{key} has no value; allowed: {allowed(key) if key == 'seed' else 'a choice of ' + key}")
    check_value("seed", cfg["seed"])
    for group in GROUPS:
        check(group, cfg[group])
    size, batch = cfg.data.get("train_size"), cfg.data.batch_size
    if size is not None and batch > size:  # training batches are full: an epoch drops the last, partial one
        raise ConfigError(
            f"data.batch_size={show(batch)} is not allowed for data.train_size={show(size)}; allowed: batch_size <= train_size"
        )
    ranks = int(os.environ.get("WORLD_SIZE", "1"))  # processes training this run together (torchrun)
    if batch % ranks:
        raise ConfigError(
            f"data.batch_size={show(batch)} is not allowed with {ranks} processes (WORLD_SIZE={ranks}); "
            f"allowed: a multiple of {ranks}, so that each process takes an equal part of every batch"
        )


# --- Errors of composition, in one line ----------------------------------------------------------


def describe(error: Exception, overrides: list[str]) -> str:
    """One line for an error Hydra raises while composing: a bad override, an unknown key or option,
    a value of the wrong type. `overrides` are the command line's, to quote the one at fault."""
    if isinstance(error, ConfigError):
        return str(error)
    if isinstance(error, OverrideParseException):
        reason = error.message.splitlines()[0]
        return f"{error.override} is not an override ({reason}); allowed: key=value, group=option, -m key=a,b"
    if isinstance(error, MissingConfigException) and error.options and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        return f"{group}={option} is not known; allowed: {', '.join(error.options)}"
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    full_key = getattr(cause, "full_key", None)
    if not (isinstance(cause, OmegaConfBaseException) and full_key):
        return " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    key = re.sub(r"\[\d+\]$", "", full_key)  # model.channels[0] -> model.channels
    typed = next((o for o in overrides if o.lstrip("+~").split("=", 1)[0] == key), key)
    group, _, name = key.rpartition(".")
    schema = getattr(cause, "object_type", None)
    if typed.startswith("~"):
        return (
            f"{typed} is not allowed; allowed: a value for each key of {group or 'the config'} (keys cannot be removed)"
        )
    if dataclasses.is_dataclass(schema) and name not in keys_of(schema):
        return f"{typed} is not allowed; allowed: a key of {group or 'the config'} ({', '.join(keys_of(schema))})"
    return f"{typed} is not allowed; allowed: {allowed(key)}"
