"""The data's facts, known before anything runs: the `${data:...}` resolver, with which a part's YAML
says what it needs of the data under its own names: `num_classes: ${data:num_classes}`,
`in_chans: ${data:channels}`, `input_size: ${data:flat_size}` (C*H*W), `${data:height}`,
`${data:width}`, `${data:in_shape}` ([C, H, W]).

The resolver reads the run's data config through OmegaConf's `_root_` (the config the key is in),
and finds the facts without training:

- ablate's built-in data sets: their table (runner.data.datasets.FACTS), no file read;
- an image folder: a scan of the folder (its class folders; the images' size from the decoded
  cache's header, else the files' headers, or data.image_size), nothing decoded;
- any other data set (a torch Dataset class, a user's function): loaded once. Those arrays are kept
  until the run takes them (runner.data.splits.load_arrays), so that nothing is decoded twice.

Facts are remembered per data config within the process; OmegaConf's resolver cache is off (it
would keep one answer per resolver and name, across the many configs a sweep composes). An unknown
name, or data that cannot be found, is a ConfigError in one line, which `run` prints before anything
is written (exit 2). No torch at import: runner.cli.app registers the resolver for `run --help` too.
"""

import json
from dataclasses import dataclass

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from runner.config.rules import ConfigError

NAMES = ("num_classes", "channels", "height", "width", "flat_size", "in_shape")
# Keys of data that change neither the facts nor the arrays loaded: left out of the memo's key.
BATCHING = ("batch_size", "val_fraction", "train_size", "normalize", "augment")


@dataclass(frozen=True)
class Facts:
    num_classes: int
    channels: int
    height: int
    width: int

    @property
    def flat_size(self) -> int:
        return self.channels * self.height * self.width

    @property
    def in_shape(self) -> list[int]:
        return [self.channels, self.height, self.width]


_known: dict[str, Facts] = {}  # data config (memo_key): its facts, for the process's lifetime (they are small)
_loaded: dict[str, tuple] = {}  # memo_key: (arrays, the device type they were loaded for, or None): one at most
_resolving: list[str] = []  # the names being resolved now: a data config that asks for its own facts is refused


def register() -> None:
    """`${data:NAME}` in every config composed from now on (runner.cli.app, for `run` and its jobs)."""
    OmegaConf.register_new_resolver("data", resolve, use_cache=False, replace=True)


def resolve(name: str, *, _root_) -> int | ListConfig:
    """The resolver: the fact `name` of the data config of the config `_root_`."""
    if name not in NAMES:
        raise ConfigError(f"${{data:{name}}} is not known; allowed: {', '.join(f'${{data:{n}}}' for n in NAMES)}")
    data = _root_.get("data") if isinstance(_root_, DictConfig) else None
    if not isinstance(data, DictConfig):
        raise ConfigError(
            f"${{data:{name}}} is not allowed here: no data config; allowed: ${{data:...}} in a run's config"
        )
    if _resolving:
        raise ConfigError(
            f"${{data:{name}}} is not allowed in the data config; "
            "allowed: ${data:...} in the other groups (model, ...)"
        )
    _resolving.append(name)
    try:
        value = getattr(facts(data), name)
    finally:
        _resolving.pop()
    return ListConfig(value) if isinstance(value, list) else value  # OmegaConf.resolve (--resolve) takes no list


def facts(data: DictConfig) -> Facts:
    """The facts of a data config, found once per data config in this process."""
    key = memo_key(data)
    if key not in _known:
        _known[key] = find(data, key)
    return _known[key]


def plain(data: DictConfig) -> dict:
    """The data config as plain values; a key without a value (`root: ???`) is one line."""
    try:
        return OmegaConf.to_container(data, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        key = e.full_key if str(e.full_key).startswith("data.") else f"data.{e.key}"
        raise ConfigError(f"{key} has no value; allowed: a value, from which ${{data:...}} is found") from None


def memo_key(data: DictConfig) -> str:
    """What names the data loaded: the data config less the keys of batching."""
    return json.dumps({k: v for k, v in plain(data).items() if k not in BATCHING}, sort_keys=True, default=str)


def find(data: DictConfig, key: str) -> Facts:
    """The facts from the built-in table, a scan of an image folder, or the data loaded once."""
    from runner.config import targets
    from runner.data import datasets, image_folder

    cfg = plain(data)
    target = targets.load("data._target_", cfg.get("_target_"))
    name = getattr(target, "__name__", "")
    try:
        if name in datasets.FACTS and getattr(datasets, name) is target:
            (channels, height, width), num_classes = datasets.FACTS[name]
            return Facts(num_classes, channels, height, width)
        if target is image_folder.image_folder:
            num_classes, (channels, height, width) = image_folder.folder_facts(cfg.get("root"), cfg.get("image_size"))
            return Facts(num_classes, channels, height, width)
        return loaded_facts(data, key)
    except datasets.DataError as e:
        raise ConfigError(str(e)) from None


def loaded_facts(data: DictConfig, key: str) -> Facts:
    """The facts of the data loaded now, on the host; the arrays are kept for the run (take_loaded)."""
    import torch

    from runner.config import targets
    from runner.data import splits
    from runner.data.datasets import DataError

    target = targets.locate(data._target_)
    for_device = "cpu" if not targets.is_data_set_class(target) and targets.names(target, "device") else None
    try:
        arrays = splits.read_arrays(data, torch.device("cpu") if for_device else None)
    except (DataError, ConfigError):
        raise
    except Exception as e:  # noqa: BLE001 what a user's data set raises: one line, before anything is written
        reason = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(
            f"data._target_={data._target_} cannot be loaded to find ${{data:...}} ({type(e).__name__}: {reason}); "
            "allowed: a data set that loads with the keys of data"
        ) from None
    _loaded.clear()  # one at most: a sweep over data sets keeps only the last
    _loaded[key] = (arrays, for_device)
    channels, height, width = arrays.train[0].shape[1:]
    return Facts(splits.count_classes(arrays), int(channels), int(height), int(width))


def take_loaded(data: DictConfig, device) -> object | None:
    """The arrays that finding this data config's facts loaded, handed over once (then forgotten);
    None where none were loaded, or they were loaded for another device than `device`."""
    if not _loaded:
        return None
    kept = _loaded.pop(memo_key(data), None)
    if kept is None:
        return None
    arrays, for_device = kept
    if for_device is not None and getattr(device, "type", str(device)) != for_device:
        return None
    return arrays
