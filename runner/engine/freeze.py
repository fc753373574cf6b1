"""Layer freezing (`trainer.freeze`), as FreezeOut does it: a module's parameters stop training at a
chosen point of the run, given in epochs (1.5: halfway through the second epoch, at the step nearest
to it). From that step on, backward computes no gradient for them, and none for the layers before
them once those are frozen too; the optimizer leaves them as they are (their state, momentum
included, is kept). Freezing the first layers once they have learned their features makes the rest
of the run's steps cheaper: on experiment=fmnist_speed, the stem frozen at 1.5 epochs and the second
block at 2.5 take 14 to 20% off training, at the same accuracy (docs/speed.md).

A frozen module still runs in training mode: its batch norm normalizes with the batch's statistics
and moves its running statistics, as before. Freezing is a function of the step, so a resumed run
freezes what the run it continues had frozen.
"""

from collections.abc import Mapping

import torch

from runner.config.rules import ConfigError, show


def has_parameters(module: torch.nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def named(model: torch.nn.Module, name: str, at: float) -> torch.nn.Module:
    """The module of `model` that `trainer.freeze` names, refused in one line if there is none or it
    has no parameters."""
    module = dict(model.named_modules()).get(name)
    if module is None or not has_parameters(module):
        names = [n for n, m in model.named_modules() if n and n.count(".") <= 1 and has_parameters(m)]
        what = "has no parameters" if module is not None else "is not a module of the model"
        raise ConfigError(
            f"trainer.freeze.{name}={show(at)} is not allowed: {name} {what}; allowed: a module with parameters, "
            f"named as model.named_modules() names it ({', '.join(names[:12])}{', ...' if len(names) > 12 else ''})"
        )
    return module


class Freezing:
    """When each module named in `trainer.freeze` stops training, in steps."""

    def __init__(self, model: torch.nn.Module, epochs: Mapping[str, float], steps_per_epoch: int, max_epochs: int):
        self.due = sorted((round(at * steps_per_epoch), name, named(model, name, at)) for name, at in epochs.items())
        self.frozen: dict[str, int] = {}  # each frozen module's name: the step it froze at (metrics.json)
        self.steps = steps_per_epoch * max_epochs  # the run's
        trained = {id(p) for p in model.parameters() if p.requires_grad}
        within = {id(p) for at, _, m in self.due if at < self.steps for p in m.parameters()}
        if trained and trained <= within:  # backward would have nothing to compute
            raise ConfigError(
                f"trainer.freeze={show(epochs)} is not allowed: it freezes every parameter of the model before the "
                "run's last step; allowed: a mapping that leaves a module with parameters training to the end"
            )

    def plan(self) -> str:
        """What freezes within the run, and when, for its first line: `features.0 frozen at step 351,
        features.1 at 585`."""
        due = [(at, name) for at, name, _ in self.due if at < self.steps]
        return ", ".join(f"{name} {'frozen at step ' if i == 0 else 'at '}{at}" for i, (at, name) in enumerate(due))

    def before_step(self, step: int) -> bool:
        """Freeze what is due by `step` (the number of steps taken before this one); whether anything was."""
        froze = False
        while self.due and self.due[0][0] <= step:
            at, name, module = self.due.pop(0)
            module.requires_grad_(False)
            self.frozen[name] = at
            froze = True
        return froze
