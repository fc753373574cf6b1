"""Optimizer factory: sgd, momentum, nesterov, adam, adamw, from torch.optim or the seed's equations.

`optimizer.impl=torch` (the default) builds torch.optim optimizers; `optimizer.impl=textbook`
builds optim/textbook.py's, which run the seed's update equations as written.

torch.optim.SGD keeps v <- mu v + g; theta <- theta - eta v. The seed writes momentum as
v <- mu v + eta g; theta <- theta - v: the same updates while eta is constant. torch's
nesterov=True is the seed's look-ahead Nesterov after a change of variables.
"""

import torch

from optim import textbook

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
IMPLS = ("torch", "textbook")


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(cfg) -> None:
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name={cfg.name!r} is not known; allowed: {', '.join(OPTIMIZERS)}")
    impl = cfg.get("impl", "torch")
    if impl not in IMPLS:
        raise ValueError(f"optimizer.impl={impl!r} is not known; allowed: {', '.join(IMPLS)}")
    if not (is_number(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"optimizer.lr={cfg.lr} is not allowed; allowed: a number > 0")
    if not (is_number(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise ValueError(f"optimizer.weight_decay={cfg.weight_decay} is not allowed; allowed: a number >= 0")
    if cfg.name in ("momentum", "nesterov") and not (is_number(cfg.momentum) and 0 < cfg.momentum < 1):
        raise ValueError(f"optimizer.momentum={cfg.momentum} is not allowed for {cfg.name}; allowed: 0 < momentum < 1")
    if cfg.name in ("adam", "adamw"):
        betas = list(cfg.betas)
        if len(betas) != 2 or not all(is_number(b) and 0 <= b < 1 for b in betas):
            raise ValueError(f"optimizer.betas={betas} is not allowed; allowed: two numbers in [0, 1)")
        if not (is_number(cfg.eps) and cfg.eps > 0):
            raise ValueError(f"optimizer.eps={cfg.eps} is not allowed; allowed: a number > 0")


def build(cfg, params) -> torch.optim.Optimizer:
    """The optimizer that `optimizer=<name>` and `optimizer.impl` choose, over `params`."""
    _check(cfg)
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
