"""Hydra's errors of composition (a bad override, an unknown key or option) as ablate's one line:
`<key>=<value> is not allowed; allowed: ...`, like the refusals of runner.config.schema."""

import re

from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from runner import GROUPS
from runner.config.rules import allowed, raised_in
from runner.config.schema import TOP_KEYS


def describe(error: Exception, overrides: list[str], keys_of=None) -> str:
    """One line for an error Hydra raises while composing: a bad override, an unknown key or option.
    `overrides` are the command line's, to quote the one at fault; `keys_of(group)`, if given, lists
    the keys the group's chosen callable accepts (an unknown key is refused with them)."""
    if (refusal := raised_in(error)) is not None:  # ablate's own, or a resolver's (`${data:...}`)
        return str(refusal)
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
    if not group and name not in TOP_KEYS:
        return f"{typed} is not allowed; allowed: a key of the config ({', '.join(TOP_KEYS)})"
    keys = keys_of(group) if keys_of and group in GROUPS else None
    if keys is not None and name not in keys:
        return f"{typed} is not allowed; allowed: a key of {group} ({', '.join(keys) or 'none'})"
    return f"{typed} is not allowed; allowed: {allowed(key)}"
