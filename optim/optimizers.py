"""Optimizer factory: sgd, momentum, nesterov, adam, adamw, from torch.optim or the seed's equations.

`optimizer.impl=torch` (the default) builds torch.optim optimizers; `optimizer.impl=textbook`
builds optim/textbook.py's, which run the seed's update equations as written.

torch.optim.SGD keeps v <- mu v + g; theta <- theta - eta v. The seed writes momentum as
v <- mu v + eta g; theta <- theta - v: the same updates while eta is constant. torch's
nesterov=True is the seed's look-ahead Nesterov after a change of variables.
"""

import torch

from optim import textbook
from runner import schema


def build(cfg, params) -> torch.optim.Optimizer:
    """The optimizer that `optimizer=<name>` and `optimizer.impl` choose, over `params`."""
    schema.check("optimizer", cfg)  # the rules `run` checks before anything runs
    if cfg.get("impl", "torch") == "textbook":
        return _build_textbook(cfg, params)
    lr, wd = float(cfg.lr), float(cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if cfg.name in ("momentum", "nesterov"):
        return torch.optim.SGD(params, lr=lr, momentum=float(cfg.momentum), nesterov=cfg.name == "nesterov", weight_decay=wd)
    adam = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return adam(params, lr=lr, betas=tuple(cfg.betas), eps=float(cfg.eps), weight_decay=wd)


def _build_textbook(cfg, params) -> textbook.TextbookOptimizer:
    lr, wd = float(cfg.lr), float(cfg.weight_decay)
    if cfg.name == "sgd":
        return textbook.TextbookSGD(params, lr=lr, weight_decay=wd)
    if cfg.name in ("momentum", "nesterov"):
        method = textbook.TextbookMomentum if cfg.name == "momentum" else textbook.TextbookNesterov
        return method(params, lr=lr, momentum=float(cfg.momentum), weight_decay=wd)
    adam = textbook.TextbookAdam if cfg.name == "adam" else textbook.TextbookAdamW
    return adam(params, lr=lr, betas=tuple(cfg.betas), eps=float(cfg.eps), weight_decay=wd)
