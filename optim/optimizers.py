"""The optimizers that `optimizer=` chooses from: sgd, momentum, nesterov, adam, adamw, each from
torch.optim (`impl: torch`) or as the book's own update equations (`impl: textbook`,
optim/textbook.py). configs/optimizer/*.yaml name these functions with `_target_` and
`_partial_: true`; ablate calls them with the model's parameters.

torch.optim's update is its fused one (one kernel for all parameters) where they are all on the
CPU: the same arithmetic as its per-parameter loop, in a fraction of the time for small models.

torch.optim.SGD keeps v <- mu v + g; theta <- theta - eta v. The seed writes momentum as
v <- mu v + eta g; theta <- theta - v: the same updates while eta is constant. torch's
nesterov=True is the book's look-ahead Nesterov after a change of variables.
"""

from typing import Literal

import torch

from optim import textbook
from optim.eager import SGD, Adam, AdamW

Impl = Literal["torch", "textbook"]


def on_cpu(params) -> tuple[list, bool]:
    """The parameters as a list, and whether torch's fused update takes them: all floating tensors
    on the CPU (parameter groups, and other devices, keep torch's default)."""
    params = list(params)
    fused = bool(params) and all(
        isinstance(p, torch.Tensor) and p.device.type == "cpu" and p.is_floating_point() for p in params
    )
    return params, fused


def sgd(params, lr: float, weight_decay: float = 0.0, impl: Impl = "torch") -> torch.optim.Optimizer:
    """theta <- theta - eta g"""
    if impl == "textbook":
        return textbook.TextbookSGD(params, lr=lr, weight_decay=weight_decay)
    params, fused = on_cpu(params)
    return SGD(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def momentum(
    params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, impl: Impl = "torch"
) -> torch.optim.Optimizer:
    """SGD with momentum: torch's v <- mu v + g; theta <- theta - eta v, or the book's form."""
    if impl == "textbook":
        return textbook.TextbookMomentum(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    params, fused = on_cpu(params)
    return SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused or None)


def nesterov(
    params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, impl: Impl = "torch"
) -> torch.optim.Optimizer:
    """Nesterov momentum: the gradient at the look-ahead point theta - mu v."""
    if impl == "textbook":
        return textbook.TextbookNesterov(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    params, fused = on_cpu(params)
    return SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay, fused=fused or None)


def adam(
    params, lr: float, betas: list[float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
    impl: Impl = "torch",
) -> torch.optim.Optimizer:  # fmt: skip
    """Adam; weight_decay is an L2 penalty added to the gradient."""
    if impl == "textbook":
        return textbook.TextbookAdam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    params, fused = on_cpu(params)
    return Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, fused=fused or None)


def adamw(
    params, lr: float, betas: list[float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01,
    impl: Impl = "torch",
) -> torch.optim.Optimizer:  # fmt: skip
    """AdamW: Adam with weight decay applied to the weights directly (decoupled)."""
    if impl == "textbook":
        return textbook.TextbookAdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    params, fused = on_cpu(params)
    return AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, fused=fused or None)
