"""A run's parts, built from the config groups that name them with `_target_`: the activation, the
model, the optimizer and the schedule (the data: runner.data.datasets). Each is one call of
hydra.utils.instantiate, with what ablate passes itself (runner.config.targets.CONTEXT) given by name
where the callable's signature names it. The config was checked before (runner.config.schema): nothing is
checked again here.
"""

from collections.abc import Callable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from optim import LrSchedule
from runner.config.targets import OWN_KEYS, locate, takes


def without(cfg: DictConfig, keys) -> DictConfig:
    """A copy of `cfg` without `keys` (ablate's own keys, which the callable does not take)."""
    node = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(node):
        for key in keys:
            node.pop(key, None)
    return node


def call(cfg: DictConfig, *args, **context):
    """Instantiate `cfg` with `args` first and the `context` its callable's signature names."""
    make = instantiate(cfg, _partial_=True, _convert_="all")
    target = locate(cfg._target_)
    return make(*args, **{name: value for name, value in context.items() if takes(target, name)})


def build_activation(cfg: DictConfig) -> Callable[[], torch.nn.Module]:
    """What makes a fresh activation module at each call."""
    return instantiate(cfg, _partial_=True, _convert_="all")


def build_model(model_cfg: DictConfig, activation_cfg: DictConfig, in_shape, num_classes: int) -> torch.nn.Module:
    """The model `model_cfg` names, for images of `in_shape` (C, H, W) and `num_classes` classes,
    with the activation `activation_cfg` names where the model takes one."""
    activation = build_activation(activation_cfg)
    return call(model_cfg, in_shape=tuple(in_shape), num_classes=num_classes, activation=activation)


def build_optimizer(cfg: DictConfig, params) -> torch.optim.Optimizer:
    return call(cfg, params)


def build_schedule(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int) -> LrSchedule:
    """The scheduler `cfg` names, stepped after each step or each epoch as `sched.interval` says (epoch if unset)."""
    interval = cfg.get("interval", "epoch")
    scheduler = call(
        without(cfg, OWN_KEYS["sched"]), optimizer,
        interval=interval, steps_per_epoch=steps_per_epoch, max_epochs=epochs,
    )  # fmt: skip
    return LrSchedule(scheduler, interval)
