"""The book's own update equations as torch optimizers (`optimizer.impl=textbook`).

Each class runs one of the book's update equations, as written, with foreach ops over the
parameters of a param group that have a gradient (a parameter whose grad is None is skipped).
The learning rate is read from `param_groups` at every step, so torch's lr schedulers drive
these optimizers as they drive torch.optim; all state lives in `self.state` and round-trips
through `state_dict()` / `load_state_dict()`.

weight_decay: sgd, momentum, nesterov and adam add `weight_decay * theta` to the gradient (an L2
penalty, as torch does); adamw multiplies theta by `1 - eta * weight_decay` before the update
(decoupled, as torch does).

Where they differ from torch.optim: torch's momentum keeps `v <- mu v + g; theta <- theta - eta v`,
the book keeps `v <- mu v + eta g; theta <- theta - v`. Both give the same parameters while eta is
constant and different ones once a schedule changes eta (the book's velocity remembers the old
rates, torch's buffer does not). The same holds for Nesterov. SGD, Adam and AdamW are the same
equations in both forms, with or without a schedule.
"""

import torch


class TextbookOptimizer(torch.optim.Optimizer):
    """Shared step(): gather the params with a gradient, apply weight decay, call `update`."""

    decoupled_weight_decay = False

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            lr, weight_decay = group["lr"], group["weight_decay"]
            if weight_decay and self.decoupled_weight_decay:
                torch._foreach_mul_(params, 1 - lr * weight_decay)
            elif weight_decay:
                grads = torch._foreach_add(grads, params, alpha=weight_decay)
            self.update(group, params, grads, [self.state[p] for p in params])
        return loss

    def update(self, group: dict, params: list, grads: list, states: list) -> None:
        raise NotImplementedError

    @staticmethod
    def buffers(params: list, states: list, key: str) -> list:
        """The per-parameter tensor `key` of each state, zeros on the first step."""
        for p, state in zip(params, states):
            if key not in state:
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return [state[key] for state in states]


class TextbookSGD(TextbookOptimizer):
    """theta <- theta - eta g"""

    def __init__(self, params, lr: float, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    def update(self, group, params, grads, states):
        torch._foreach_add_(params, grads, alpha=-group["lr"])


class TextbookMomentum(TextbookOptimizer):
    """v <- mu v + eta g; theta <- theta - v   (state: `velocity` = v)"""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def update(self, group, params, grads, states):
        v = self.buffers(params, states, "velocity")
        torch._foreach_mul_(v, group["momentum"])
        torch._foreach_add_(v, grads, alpha=group["lr"])
        torch._foreach_sub_(params, v)


class TextbookNesterov(TextbookOptimizer):
    """The book's look-ahead Nesterov: theta' = theta - mu v; v <- mu v + eta grad f(theta'); theta <- theta - v.

    The gradient must be taken at theta', so the parameter the model holds is the look-ahead
    point theta' (as in torch's nesterov=True); theta itself stays implicit, theta = theta' + mu v
    with v the state's `velocity`. One step, with g = grad f(theta') (+ weight_decay theta'):

        v_new      = mu v + eta g
        theta_new  = theta - v_new = theta' + mu v - v_new
        theta'_new = theta_new - mu v_new = theta' + mu v - (1 + mu) v_new

    At start v = 0, so theta' = theta = the initial weights. Evaluation (val and test accuracy,
    checkpoints) therefore sees the look-ahead point theta', the same point torch's Nesterov
    holds; it differs from theta by mu v, which shrinks as training settles.
    """

    def __init__(self, params, lr: float, momentum: float, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def update(self, group, params, grads, states):
        mu = group["momentum"]
        v = self.buffers(params, states, "velocity")
        torch._foreach_add_(params, v, alpha=mu)  # theta = theta' + mu v
        torch._foreach_mul_(v, mu)
        torch._foreach_add_(v, grads, alpha=group["lr"])  # v_new = mu v + eta g
        torch._foreach_add_(params, v, alpha=-(1 + mu))  # theta'_new = theta - v_new - mu v_new


class TextbookAdam(TextbookOptimizer):
    """m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g*g; m^ = m/(1-b1^t); v^ = v/(1-b2^t);
    theta <- theta - eta m^ / (sqrt(v^) + eps)   (state: `m`, `v`, and the step count `step`)"""

    def __init__(self, params, lr: float, betas: tuple = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    def update(self, group, params, grads, states):
        (b1, b2), eps = group["betas"], group["eps"]
        for state in states:  # t counts this parameter's own steps; a CPU tensor, as torch keeps it
            state["step"] = state.get("step", torch.tensor(0.0)) + 1
        t = [state["step"].item() for state in states]
        m = self.buffers(params, states, "m")
        v = self.buffers(params, states, "v")

        torch._foreach_mul_(m, b1)
        torch._foreach_add_(m, grads, alpha=1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - b2)
        m_hat = torch._foreach_div(m, [1 - b1**t_ for t_ in t])
        v_hat = torch._foreach_div(v, [1 - b2**t_ for t_ in t])
        denominator = torch._foreach_sqrt(v_hat)
        torch._foreach_add_(denominator, eps)
        torch._foreach_addcdiv_(params, m_hat, denominator, value=-group["lr"])


class TextbookAdamW(TextbookAdam):
    """Adam with decoupled weight decay: theta <- (1 - eta weight_decay) theta, then Adam's update."""

    decoupled_weight_decay = True
