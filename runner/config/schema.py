"""The config check: `validate(cfg)`, which `run` calls before Hydra writes anything (runner.cli.app's
CheckFirst callback: the run's config, or every job's of a sweep). The builders trust what passed
here. Hydra's own composition errors get the same one line in runner.config.hydra_errors.

Every group but `trainer` names its callable with `_target_`: its keys are checked against that
callable's signature (runner.config.targets), their values by ablate's rules (runner.config.rules) where the
callable is ablate's, else by the signature's annotations. Each refusal is one line: the key, the
value and what is allowed.

No torch at import: `run --help` and `run --cfg job` import this module; `validate` imports the
targets (and so torch, and the user's modules).
"""

import os

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner import GROUPS
from runner.config import targets
from runner.config.rules import RULES, ConfigError, allowed, check_value, raised_in, refuse, show

TOP_KEYS = (*GROUPS, "seed", "search_space", "ablation", "components")


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
    if not isinstance(cfg.get("search_space"), (DictConfig, type(None))):
        raise refuse(
            "search_space", cfg["search_space"], "a mapping of keys to sweeps: {optimizer: {lr: 'interval(0.001,0.1)'}}"
        )
    for key, shape in (("ablation", "{bn: {off: {model: plain}, on: {model: bn}}}"), ("components", "{bn: on}")):
        if not isinstance(cfg.get(key), (DictConfig, type(None))):
            raise refuse(key, cfg[key], f"a mapping: {shape}")
    try:  # a part's `${data:...}` is resolved here, from the data config checked first (runner.data.facts)
        for group in GROUPS:
            check(group, cfg[group])
        check_relations(cfg)
    except OmegaConfBaseException as e:
        if (refusal := raised_in(e)) is None:
            raise
        raise ConfigError(str(refusal)) from e  # a resolver's, which OmegaConf wraps


def check(group: str, node) -> None:
    """The keys and values of one group (`cfg.optimizer`, ...)."""
    if not isinstance(node, DictConfig):
        raise refuse(group, node, f"a choice of {group}")
    if group == "trainer":
        check_plain(group, node)
        return
    if "_target_" not in node or OmegaConf.is_missing(node, "_target_"):
        example = " (data._target_=torchvision.datasets.KMNIST)" if group == "data" else ""
        raise ConfigError(f"{group}._target_ has no value; allowed: the dotted path of a class or function{example}")
    ablates = isinstance(node._target_, str) and targets.is_ablates(node._target_)
    own = targets.OWN_KEYS.get(group, ())

    def rule(full_key: str, value) -> bool:
        key = full_key.split(".", 1)[1]
        if full_key in RULES and (ablates or key in own):
            check_value(full_key, value)
            return True
        return False

    if group == "data":
        node = as_data_set_builds(node)
    targets.check_node(group, node, group, rule)
    if group == "data":
        check_constructor_chain(node)
    for key in targets.REQUIRED_OWN_KEYS.get(group, ()):
        if key not in node:
            raise ConfigError(f"{group}.{key} has no value; allowed: {allowed(f'{group}.{key}')}")


def as_data_set_builds(node: DictConfig) -> DictConfig:
    """The data node as ablate calls a torch Dataset class with it: with `split='train'` where ablate
    passes the split as SVHN takes it (so that its signature is checked with it). What ablate passes
    itself (`train`, or such a `split`) is refused in the YAML. A function's node as it is."""
    target = targets.load("data._target_", node._target_)
    if not targets.is_data_set_class(target):
        return node
    style = targets.split_style(target)
    if style is not None and style in node:
        passed = "train=True and train=False" if style == "train" else "split='train' and split='test'"
        raise ConfigError(
            f"data.{style}={show(node[style])} is not allowed for data._target_={node._target_}: ablate passes "
            f"{passed}, one per split; allowed: no data.{style}"
        )
    if style != "split":
        return node
    built = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    built.split = "train"
    return built


def check_constructor_chain(node: DictConfig) -> None:
    """A data set class whose `__init__` hands `**kwargs` on (EMNIST's to MNIST's) takes only the keys
    its chain of constructors names, unless the chain ends in a `**kwargs`."""
    target = targets.load("data._target_", node._target_)
    if not targets.is_data_set_class(target):
        return
    names, open_ended = targets.chain_keys(target)
    if open_ended:
        return
    own, style = targets.OWN_KEYS["data"], targets.split_style(target)
    passed = [style] if style else []  # split='train' in the node as checked (as_data_set_builds)
    accepted = [*own, *(n for n in names if n not in own and n not in targets.CONTEXT["data"] and n not in passed)]
    for key in node:
        if key not in targets.HYDRA_KEYS and key not in accepted and key not in passed:
            raise refuse(f"data.{key}", node[key], f"a key of data ({', '.join(accepted)})")


def keys_of(group: str, node: DictConfig) -> list[str]:
    """The keys a group's node may hold: the trainer's, or those its `_target_` accepts."""
    if group == "trainer":
        return [k.split(".", 1)[1] for k in RULES if k.startswith(f"{group}.")]
    return targets.accepted_keys(group, targets.load(f"{group}._target_", node._target_))


def check_plain(group: str, node: DictConfig) -> None:
    """A group without a callable (trainer): its keys are those of RULES."""
    known = keys_of(group, node)
    for key in node:
        full_key = f"{group}.{key}"
        if OmegaConf.is_missing(node, key):
            raise ConfigError(f"{full_key} has no value; allowed: {allowed(full_key)}")
        if key not in known:
            raise refuse(full_key, node[key], f"a key of {group} ({', '.join(known)})")
        check_value(full_key, node[key])
    for key in known:
        if key not in node:
            raise ConfigError(f"{group}.{key} has no value; allowed: {allowed(f'{group}.{key}')}")


def check_relations(cfg) -> None:
    """The rules between keys of ablate's own parts, and between the data and the processes."""
    from models.activations import has_known_gain

    model, sched = cfg.model, cfg.sched
    ratio, channels = model.get("bottleneck_ratio"), model.get("channels")
    if ratio is not None and channels and targets.is_ablates(model._target_) and ratio > min(channels):
        raise ConfigError(
            f"model.bottleneck_ratio={show(ratio)} is not allowed for model.channels={show(channels)}; "
            f"allowed: 1 <= bottleneck_ratio <= {min(channels)}"
        )
    activation = targets.load("activation._target_", cfg.activation._target_)
    if model.get("init") == "scaled" and targets.is_ablates(model._target_) and not has_known_gain(activation):
        raise ConfigError(
            f"model.init=scaled is not allowed for activation._target_={cfg.activation._target_}: its gain is not "
            "known; allowed: model.init=torch, or a tanh, sigmoid, relu or leaky_relu activation"
        )
    if is_plateau(targets.load("sched._target_", sched._target_)) and sched.get("interval", "epoch") != "epoch":
        raise ConfigError(
            f"sched.interval={show(sched.interval)} is not allowed for sched._target_={sched._target_}: it steps on "
            "the validation loss; allowed: epoch"
        )
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


def is_plateau(target) -> bool:
    """Whether a schedule's `_target_` reduces on a plateau of the validation loss (ablate's or torch's class)."""
    import inspect

    from torch.optim.lr_scheduler import ReduceLROnPlateau

    import optim

    return target is optim.plateau or (inspect.isclass(target) and issubclass(target, ReduceLROnPlateau))
