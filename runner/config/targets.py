"""What a config group's `_target_` names, and the keys it takes: the part of the config check that
reads the Python signature of a class or function (ablate's or the user's).

Each group's YAML names a callable with `_target_`; ablate passes some arguments itself (CONTEXT:
the data's shape to a model, the parameters to an optimizer, ...) and reads some keys of its own
(OWN_KEYS: `sched.interval`, the batching keys of `data`). Every other key must be a parameter of
the callable. Nested nodes with a `_target_` (a user block in `model.block`) are checked the same
way against their own callable. Importing the callable is the only way to read its signature, so
torch and the user's module are imported here, when a run starts, never for `run --help`.
`call` then calls it with what ablate passes, to the parameters its signature names (the builders
of the engine and of the data use it).
"""

import importlib
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from runner.config.rules import ConfigError, reason, show

# What ablate passes to the callable of each group, by name, when its signature names them
# (`params` to an optimizer and `optimizer` to a schedule: the first argument, whatever its name).
CONTEXT: dict[str, tuple[str, ...]] = {
    "data": ("split_seed", "device", "train"),  # train: to a torch Dataset class, per split (see split_style)
    "model": ("in_shape", "num_classes", "activation"),
    "activation": (),
    "optimizer": ("params",),
    # ablate's own names, then torch's: each counted in the schedule's own steps (runner.engine.builders)
    "sched": ("optimizer", "interval", "steps_per_epoch", "max_epochs", "epochs", "total_steps", "total_iters"),
}
# What ablate passes that a YAML may also say, under the same name: the YAML's value is then the one passed.
FILLED: dict[str, tuple[str, ...]] = {
    "model": ("in_shape", "num_classes"),
    "sched": ("steps_per_epoch", "max_epochs", "epochs", "total_steps", "total_iters"),
}
FIRST_ARGUMENT = {"optimizer": "the parameters", "sched": "the optimizer"}
OWN_KEYS: dict[str, tuple[str, ...]] = {  # ablate's keys: read by ablate, passed on only where the signature names them
    # root, download and test_fraction: to the data set where its constructor names them (not FakeData)
    "data": (
        "batch_size",
        "val_fraction",
        "train_size",
        "normalize",
        "split_seed",
        "augment",
        "root",
        "download",
        "test_fraction",
    ),
    "sched": ("interval",),
}
REQUIRED_OWN_KEYS = {  # every data YAML holds the batching keys; sched.interval may be left out: epoch
    "data": ("batch_size", "val_fraction", "train_size", "normalize", "split_seed", "augment"),
}
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
ABLATE_PACKAGES = ("models", "optim", "runner")


def load(key: str, path) -> Callable:
    """The class or function `path` names; ConfigError in one line when it cannot be imported."""
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{key}={show(path)} is not allowed; allowed: the dotted path of a class or function")
    try:
        target = locate(path)
    except Exception as e:  # noqa: BLE001 ImportError, AttributeError, or whatever the user's module raises while importing
        raise ConfigError(
            f"{key}={path} cannot be imported ({reason(e)}); allowed: a class or function on the Python path "
            "(a module in the current directory is)"
        ) from None
    if not callable(target):
        raise ConfigError(f"{key}={path} is not allowed: it is not a class or function")
    return target


def locate(path: str):
    """The object a dotted path names, found as Hydra's instantiate finds it (without the error it
    logs): the first name imported, then each next name an attribute of what came before, or where it
    is none, a submodule imported. So `torchvision.models.googlenet` is the builder that the package's
    attribute names, not the module of the same name."""
    names = path.split(".")
    obj = importlib.import_module(names[0])
    for i, name in enumerate(names[1:], 2):
        try:
            obj = getattr(obj, name)
        except AttributeError as missing:
            module_name = ".".join(names[:i])
            try:
                obj = importlib.import_module(module_name)
            except ModuleNotFoundError as e:
                if e.name == module_name:
                    raise missing from None  # neither an attribute nor a module: say the attribute is missing
                raise
    return obj


def is_ablates(path: str) -> bool:
    """Whether a `_target_` is one of ablate's own parts, whose keys follow ablate's rules (runner.config.rules)."""
    return path.split(".", 1)[0] in ABLATE_PACKAGES


def parameters(target: Callable) -> list[inspect.Parameter]:
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin without a signature: take any keyword
        return [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]
    return list(signature.parameters.values())


def takes(target: Callable, name: str) -> bool:
    """Whether calling `target` with the keyword `name` is allowed (a `**kwargs` takes any)."""
    params = parameters(target)
    return names(target, name) or any(p.kind == p.VAR_KEYWORD for p in params)


def names(target: Callable, name: str) -> bool:
    """Whether `target`'s signature names the parameter `name` (by keyword): where ablate passes what
    it knows (CONTEXT), never into a `**kwargs`, which may hand it on to a class that does not take it."""
    return any(p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in parameters(target))


def hints(target: Callable) -> dict[str, Any]:
    """The type annotations of the parameters, where they can be resolved."""
    try:
        return typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # noqa: BLE001 get_type_hints raises whatever an unresolvable annotation does
        return {}


def accepted_keys(group: str, target: Callable) -> list[str]:
    """The keys a node of `group` may hold for `target`: ablate's own keys, then the callable's
    keyword parameters that ablate does not pass itself."""
    passed = CONTEXT.get(group, ())
    params = [p for p in parameters(target) if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if group in FIRST_ARGUMENT and params:
        params = params[1:]
    own = OWN_KEYS.get(group, ())
    return [*own, *(p.name for p in params if p.name not in passed and p.name not in own)]


def check_node(key: str, node: DictConfig, group: str | None, rule: Callable[[str, Any], bool]) -> None:
    """Check a node with `_target_`: its callable imports, every key is one of its parameters (or of
    what ablate passes and the YAML may say instead, FILLED), required parameters have values, values fit the
    annotations. `rule(full_key, value)` checks a value by ablate's rules and says whether it did."""
    path = node.get("_target_")
    target = load(f"{key}._target_", path)
    params = {p.name: p for p in parameters(target)}
    open_ended = any(p.kind == p.VAR_KEYWORD for p in params.values())
    if group is not None:
        accepted = accepted_keys(group, target)
        accepted += [name for name in FILLED.get(group, ()) if names(target, name) and name not in accepted]
    else:  # a nested part: the enclosing part calls it
        accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    annotations = hints(target)
    for name in node:
        if name in HYDRA_KEYS:
            continue
        full_key = f"{key}.{name}"
        if OmegaConf.is_missing(node, name):
            raise ConfigError(f"{full_key} has no value; allowed: a value for {path}'s parameter {name}")
        value = node[name]
        if name not in accepted and not open_ended:
            raise ConfigError(
                f"{full_key}={show(value)} is not allowed; allowed: a key of {key} ({', '.join(accepted) or 'none'})"
            )
        if isinstance(value, DictConfig) and "_target_" in value:
            check_node(full_key, value, None, rule)
        elif not rule(full_key, value):
            check_annotation(full_key, value, annotations.get(name, implied_type(params.get(name))))
    if group is not None or not node.get("_partial_", False):
        passed = CONTEXT.get(group, ()) if group else ()
        positional = list(params.values())[:1] if group in FIRST_ARGUMENT else []
        for p in params.values():
            unset = p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            if unset and p.name not in node and p.name not in passed and p not in positional:
                raise ConfigError(f"{key}.{p.name} has no value; allowed: a value for {path}'s parameter {p.name}")


def implied_type(param: inspect.Parameter | None):
    """For a parameter without an annotation, what its default implies: a number for a number
    (`dropout=0` takes 0.5 too), true or false for a bool, a string for a string; else anything."""
    default = param.default if param is not None else None
    if isinstance(default, (bool, str)):
        return type(default)
    return float if isinstance(default, (int, float)) else Any


def check_annotation(key: str, value, annotation) -> None:
    """Refuse a value that does not fit a simple annotation (int, float, bool, str, None, Literal,
    list or tuple of those, and unions of them); other annotations are not checked."""
    verdict = fits(value, annotation)
    if verdict is False:
        names = literal_names(annotation)
        if names:
            raise ConfigError(f"{key}={show(value)} is not known; allowed: {', '.join(names)}")
        raise ConfigError(f"{key}={show(value)} is not allowed; allowed: {words(annotation)}")


def fits(value, annotation) -> bool | None:
    """True or False where the annotation can be judged, None where it cannot."""
    if annotation is Any:
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        verdicts = [fits(value, a) for a in args]
        return True if True in verdicts else (None if None in verdicts else False)
    if origin is typing.Literal:
        return value in args
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple, ListConfig)):
            return False
        inner = args[0] if args and (origin is list or (len(args) == 2 and args[1] is Ellipsis)) else None
        if inner is None:
            return None if args else True
        verdicts = [fits(v, inner) for v in value]
        return False if False in verdicts else (None if None in verdicts else True)
    return None


def literal_names(annotation) -> list[str]:
    """The names a Literal (or a Literal or None) allows, as the command line writes them."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return [show(a) if not isinstance(a, str) else a for a in args]
    if origin in (typing.Union, types.UnionType) and any(typing.get_origin(a) is typing.Literal for a in args):
        names = [n for a in args if typing.get_origin(a) is typing.Literal for n in literal_names(a)]
        return names + (["null"] if type(None) in args else [])
    return []


def words(annotation) -> str:
    """An annotation in words: int -> an integer, list[int] -> a list of integers, ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(words(a) for a in args)
    if origin in (list, tuple) and args:
        return f"a list of {words(args[0]).removeprefix('a ').removeprefix('an ')}s"
    named = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return named.get(annotation, getattr(annotation, "__name__", str(annotation)))


# A data set class (torch's Dataset, as torchvision's are) is built by ablate per split: which
# argument says the split is read down its constructor chain.


def constructor_chain(cls: type) -> list[list[inspect.Parameter]]:
    """The parameters (less `self`) of `cls.__init__`, then, while an `__init__` hands `**kwargs` on,
    of its base classes' `__init__` down the MRO: what a keyword given to `cls` may reach (EMNIST's
    `**kwargs` reach MNIST's `train` and `download`)."""
    chain = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        params = parameters(init)[1:]
        chain.append(params)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return chain


def passes(target: Callable, name: str) -> bool:
    """Whether ablate gives `target` the keyword `name`: its signature names it, or, for a class whose
    `__init__` hands `**kwargs` on, an `__init__` down its chain names it (never a `**kwargs` alone)."""
    if not inspect.isclass(target):
        return names(target, name)
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    chain = constructor_chain(target)
    return names(target, name) or any(p.name == name and p.kind in keyword for ps in chain for p in ps)


def chain_keys(cls: type) -> tuple[list[str], bool]:
    """The keyword parameters a class takes down its constructor chain, and whether the chain ends
    in a `**kwargs` (then it takes any)."""
    chain = constructor_chain(cls) or [parameters(cls)]
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    found = [p.name for ps in chain for p in ps if p.kind in keyword]
    return list(dict.fromkeys(found)), any(p.kind == p.VAR_KEYWORD for p in chain[-1])


def split_style(cls: type) -> str | None:
    """How ablate asks a data set class for a split: "train" (train=True/False, where its chain takes
    `train`: a `split` of its own, as EMNIST's subset, is then the YAML's), "split" (split='train' or
    'test', as SVHN takes), or None: built once, its test split drawn (data.test_fraction)."""
    if passes(cls, "train"):
        return "train"
    return "split" if passes(cls, "split") else None


def is_data_set_class(target: Callable) -> bool:
    """Whether a data `_target_` is a torch Dataset class (built per split by ablate) rather than a
    function that returns ablate's arrays."""
    import torch.utils.data

    return inspect.isclass(target) and issubclass(target, torch.utils.data.Dataset)


# Calling a `_target_`: with what ablate passes, by name, where its signature names it.


def without(cfg: DictConfig, keys) -> DictConfig:
    """A copy of `cfg` without `keys` (ablate's own keys, which the callable does not take)."""
    node = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(node):
        for key in keys:
            node.pop(key, None)
    return node


def partial(cfg: DictConfig) -> Callable:
    """`cfg`'s callable with the YAML's values bound, as Hydra's instantiate binds them (nested
    `_target_`s built, containers as plain lists and dicts): the one place ablate instantiates."""
    from hydra.utils import instantiate

    return instantiate(cfg, _partial_=True, _convert_="all")


def call(cfg: DictConfig, *args, **context):
    """Instantiate `cfg` with `args` first and the `context` its callable's signature names (the
    YAML's own value of a name wins)."""
    make = partial(cfg)
    target = locate(cfg._target_)
    return make(*args, **{name: value for name, value in context.items() if names(target, name) and name not in cfg})
