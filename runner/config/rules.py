"""The rules of ablate's own config keys: what each value allows, in words, and the one-line
refusal that names the key, the value and what is allowed. No torch here: `run --help` and
`run --cfg job` import this module.

A key of a user's class is checked against that class's signature instead (runner.config.targets).
"""

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
    """A config value that is not allowed; the message names the key, the value and what is allowed."""


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(at_least: int) -> Callable[[Any], bool]:
    return lambda v: is_int(v) and v >= at_least


def number(
    above: float | None = None, at_least: float | None = None, below: float | None = None, at_most: float | None = None
) -> Callable[[Any], bool]:
    def ok(v) -> bool:
        return (
            is_number(v)
            and (above is None or v > above)
            and (at_least is None or v >= at_least)
            and (below is None or v < below)
            and (at_most is None or v <= at_most)
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


def image_size(v) -> bool:
    return v is None or integer(1)(v) or (isinstance(v, (list, ListConfig)) and len(v) == 2 and int_list(True)(v))


# key -> names it may take (refused as "is not known"), or (test, what is allowed). The keys of ablate's
# own parts (the `_target_`s in models, optim and runner) and of the trainer; the names a key of a part
# may take come from its signature (a Literal annotation), not from here.
RULES: dict[str, tuple[str, ...] | tuple[Callable[[Any], bool], str]] = {
    "seed": (integer(0), "an integer >= 0"),
    "data.root": (or_null(string), "a folder or null"),
    "data.download": (boolean, "true or false"),
    "data.verify": (boolean, "true or false"),
    "data.batch_size": (integer(1), "an integer >= 1"),
    "data.val_fraction": (number(at_least=0, below=1), "0 <= val_fraction < 1"),
    "data.train_size": (or_null(integer(1)), "an integer >= 1 or null"),
    "data.normalize": (boolean, "true or false"),
    "data.split_seed": (integer(0), "an integer >= 0"),
    "data.augment": (
        lambda v: v in (True, False, "flip"),
        "true (random crop and flip), flip (the flip alone) or false",
    ),
    "data.test_fraction": (number(above=0, below=1), "0 < test_fraction < 1"),
    "data.image_size": (image_size, "an integer >= 1, [height, width] or null"),
    "model.channels": (int_list(non_empty=True), "a non-empty list of positive integers"),
    "model.kernel_size": (integer(1), "an integer >= 1"),
    "model.hidden": (int_list(non_empty=False), "a list of positive integers"),
    "model.batch_norm": (boolean, "true or false"),
    "model.blocks": (integer(1), "an integer >= 1"),
    "model.bottleneck_ratio": (integer(1), "an integer >= 1"),
    "activation.alpha": (number(above=0, below=1), "0 < alpha < 1"),
    "optimizer.lr": (number(above=0), "a number > 0"),
    "optimizer.weight_decay": (number(at_least=0), "a number >= 0"),
    "optimizer.momentum": (number(above=0, below=1), "0 < momentum < 1"),  # momentum and nesterov need > 0
    "optimizer.betas": (betas, "two numbers in [0, 1)"),
    "optimizer.eps": (number(above=0), "a number > 0"),
    "sched.interval": ("step", "epoch"),
    "sched.warmup": (number(at_least=0), "a number of epochs >= 0"),
    "sched.warmup_start_factor": (number(above=0, at_most=1), "0 < warmup_start_factor <= 1"),
    "sched.eta_min": (number(at_least=0), "a number >= 0"),
    "sched.t_max": (or_null(number(above=0)), "a number of epochs > 0 or null"),
    "sched.t_0": (number(above=0), "a number of epochs > 0"),
    "sched.t_mult": (integer(1), "an integer >= 1"),
    "sched.step_size": (number(above=0), "a number of epochs > 0"),
    "sched.gamma": (number(above=0), "a number > 0"),
    "sched.factor": (number(above=0, below=1), "0 < factor < 1"),
    "sched.patience": (integer(0), "an integer >= 0"),
    "trainer.max_epochs": (integer(0), "an integer >= 0"),
    "trainer.device": ("auto", "cpu", "cuda", "mps"),
    "trainer.precision": ("auto", "fp32", "bf16"),
    "trainer.layout": ("auto", "contiguous", "channels_last"),
    "trainer.threads": (lambda v: v == "auto" or integer(1)(v), "auto or an integer >= 1"),
    "trainer.compile": (boolean, "true or false"),
    "trainer.graphs": (lambda v: v == "auto" or boolean(v), "auto, true or false"),
    "trainer.fused": (lambda v: v == "auto" or boolean(v), "auto, true or false"),
    "trainer.deterministic": (boolean, "true or false"),
    "trainer.checkpoint_every_minutes": (or_null(number(above=0)), "a number > 0 or null"),
    "trainer.grad_clip": (or_null(number(above=0)), "a number > 0 or null"),
    "trainer.freeze": (
        or_null(lambda v: isinstance(v, DictConfig | dict) and all(number(at_least=0)(at) for at in v.values())),
        "null or a mapping of module names to epochs >= 0: {features.0: 1.5}",
    ),
    "trainer.eval_flip": (boolean, "true or false"),
    "trainer.log_every_n_steps": (integer(1), "an integer >= 1"),
    "trainer.diagnostics": (boolean, "true or false"),
    "trainer.histograms": (boolean, "true or false"),
    "trainer.sync_bn": (boolean, "true or false"),
}


def show(value) -> str:
    """A value as the command line writes it: strings quoted, 1.0 as 1, null, true."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
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


def raised_in(error: BaseException) -> ConfigError | None:
    """The ConfigError behind `error`, if one is: a resolver's refusal (`${data:colour}`, data that
    cannot be found) reaches the caller wrapped in OmegaConf's InterpolationResolutionError."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ConfigError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__  # OmegaConf raises its own inside the except
    return None


def reason(error: BaseException) -> str:
    """An exception in a few words, for a one-line refusal: its first line, else its type's name."""
    text = str(error).splitlines()[0] if str(error) else ""
    return text or type(error).__name__
