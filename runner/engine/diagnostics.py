"""Diagnostics that make the book's arguments visible, read only on logging steps:

- probe/grad_norm/<layer>: the gradient norm of each layer with parameters, and
  probe/grad_norm/first_to_last, the first layer's over the last layer's (vanishing gradients show
  up as a tiny ratio; not written once trainer.freeze stopped either layer);
- probe/dead_units/<layer>: the fraction of units of each ReLU (LeakyReLU) layer that output zero
  (get a negative input) for every sample of the batch.

Under `probe/`, they sort after loss/, acc/ and lr in TensorBoard, which orders charts by name.

The forward hooks that count dead units are registered for a logging step alone (`active`): a module
with a hook takes PyTorch's slower call path, so between logging steps the rectifiers have none, and
nothing is read from the device.
"""

import torch
from torch import nn

from models import kernels

GRAD_NORM = "probe/grad_norm"
DEAD_UNITS = "probe/dead_units"


class Diagnostics:
    def __init__(self, model: nn.Module):
        self.layers = [(name, list(m.parameters(recurse=False))) for name, m in model.named_modules()]
        self.layers = [(name, params) for name, params in self.layers if params]
        self.dead: dict[str, torch.Tensor] = {}
        self.modules = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
        self.rectifiers = [name for name, _ in self.modules]  # the layers whose dead units are counted
        self.hooks: list = []  # the hooks' handles, while active

    @property
    def active(self) -> bool:
        """Whether the next forward pass counts dead units (its hooks are registered)."""
        return bool(self.hooks)

    @active.setter
    def active(self, on: bool) -> None:
        if on and not self.hooks:
            self.hooks = [m.register_forward_hook(self._dead_units_hook(name)) for name, m in self.modules]
        elif not on:
            for handle in self.hooks:
                handle.remove()
            self.hooks = []

    def _dead_units_hook(self, name: str):
        def hook(module, inputs, output):
            # a unit is dead when its largest output over the batch is off (ReLU: 0, LeakyReLU: negative)
            largest = rows(output.detach()).amax(dim=0)
            off = largest < 0 if isinstance(module, nn.LeakyReLU) else largest <= 0
            self.dead[name] = off.float().mean()

        setattr(hook, kernels.OUTPUT_ONLY, True)  # the fused kernels may call it with the ReLU output they make
        return hook

    def grad_norms(self) -> dict[str, torch.Tensor]:
        """Each layer's gradient norm (over all its parameters) as device tensors, and first/last."""
        norms = {}
        for name, params in self.layers:
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                norms[name] = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        first, last = (self.layers[0][0], self.layers[-1][0]) if self.layers else (None, None)
        if first != last and first in norms and last in norms:  # none once trainer.freeze froze either
            norms["first_to_last"] = norms[first] / norms[last]
        return norms

    def read(self) -> dict[str, float]:
        """Everything gathered on this step, as TensorBoard tags and Python floats (one device read)."""
        values = {f"{GRAD_NORM}/{k}": v for k, v in self.grad_norms().items()}
        values.update({f"{DEAD_UNITS}/{k}": v for k, v in self.dead.items()})
        self.dead = {}
        if not values:
            return {}
        return dict(zip(values, torch.stack([v.float() for v in values.values()]).tolist()))


def rows(output: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, units), each sample's values in memory order: a view of a channels_last batch,
    whose reduction over the batch is then several times as fast as over the (N, C, H, W) view."""
    if output.dim() == 4 and output.is_contiguous(memory_format=torch.channels_last):
        output = output.permute(0, 2, 3, 1)
    return output.reshape(len(output), -1)
