"""The builders of a run's parts, from the config groups that name them with `_target_`: the
activation, the model, the optimizer and the schedule (the data: runner.data.splits). Each is one
call of the `_target_` (runner.config.targets.call), with what ablate passes itself
(runner.config.targets.CONTEXT) given by name where the callable's signature names it, never into a `**kwargs`, and never over a value the YAML
says itself. The config was checked before (runner.config.schema); what a part's own code raises
while it is built is PartError, one line naming the group and its `_target_`.
"""

from collections.abc import Callable

import torch
from omegaconf import DictConfig

from optim import LrSchedule
from optim.schedulers import Ticks
from runner.config.rules import reason, show
from runner.config.targets import OWN_KEYS, call, locate, names, partial, without


class PartError(ValueError):
    """A part whose own code raised while it was built or first run; the message names its group and `_target_`."""


def blamed(group: str, cfg: DictConfig, what: str, error: BaseException) -> PartError:
    """`<group>._target_=X <what> (<the error>)`, naming the YAML's values, which the error may be about."""
    values = ", ".join(f"{k}={show(v)}" for k, v in cfg.items() if k != "_target_" and not k.startswith("_"))
    given = f" with {values}" if values else ""
    return PartError(
        f"{group}._target_={cfg._target_}{given} {what} ({type(error).__name__}: {reason(error)}); "
        f"allowed: values its {group} takes (see its signature and documentation)"
    )


def build_activation(cfg: DictConfig) -> Callable[[], torch.nn.Module]:
    """What makes a fresh activation module at each call; one is made here, so that an activation's
    bad value is blamed on `activation`, not on the model it goes in (runner.engine.preflight blames
    it too when it raises in the model's first step)."""
    make = partial(cfg)
    try:
        make()
    except Exception as e:
        raise blamed("activation", cfg, "cannot be built", e) from e
    return make


def build_model(model_cfg: DictConfig, activation_cfg: DictConfig, in_shape, num_classes: int) -> torch.nn.Module:
    """The model `model_cfg` names, for images of `in_shape` (C, H, W) and `num_classes` classes
    (where its signature names them), with the activation `activation_cfg` names where it takes one."""
    activation = build_activation(activation_cfg)
    return call(model_cfg, in_shape=tuple(in_shape), num_classes=num_classes, activation=activation)


def build_optimizer(cfg: DictConfig, params) -> torch.optim.Optimizer:
    try:
        return call(cfg, params)
    except Exception as e:
        raise blamed("optimizer", cfg, "cannot be built", e) from e


def schedule_context(target, interval: str, steps_per_epoch: int, epochs: int) -> dict:
    """What ablate knows of the training's length, under ablate's names and torch's: `max_epochs`,
    `epochs`; `steps_per_epoch` and `total_steps` / `total_iters` counted in the schedule's own steps
    (batches with `interval: step`, epochs with `interval: epoch`), except for a schedule that takes
    `interval` itself (ablate's), which is given the batches per epoch and counts for itself."""
    ticks = Ticks(interval, steps_per_epoch, epochs)
    return {
        "interval": interval,
        "steps_per_epoch": steps_per_epoch if names(target, "interval") else ticks.per_epoch,
        "max_epochs": epochs,
        "epochs": epochs,
        "total_steps": ticks.total,
        "total_iters": ticks.total,
    }


def build_schedule(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int) -> LrSchedule:
    """The scheduler `cfg` names, stepped after each step or each epoch as `sched.interval` says (epoch
    if unset), given the training's length where its signature asks and the YAML does not say."""
    interval = cfg.get("interval", "epoch")
    node = without(cfg, OWN_KEYS["sched"])
    try:
        scheduler = call(node, optimizer, **schedule_context(locate(cfg._target_), interval, steps_per_epoch, epochs))
    except Exception as e:
        raise blamed("sched", node, "cannot be built", e) from e
    return LrSchedule(scheduler, interval)
