"""torch.optim's optimizers without importing torch._dynamo, which takes about 2 s on a 2-core
machine: after `import torch`, the longest part of a small run's start-up.

torch.optim imports it only to keep torch.compile from tracing into an optimizer:
- `step` calls torch._dynamo.graph_break() (a no-op outside compiled code) around the update;
- `add_param_group`, `zero_grad`, `state_dict` and `load_state_dict` mark themselves with
  torch._dynamo.disable on their first call (which calls them as they are outside compiled code).

ablate compiles the model alone (trainer.compile), never the optimizer's step, so its optimizers
run torch's own update, the same function, without the graph break (`eager`), and a run that
compiles nothing gives the methods their mark beforehand (`mark_not_compiled`). Where torch's
internals are not as this expects, both leave torch's optimizers as they are.
"""

import sys

import torch


def eager(optimizer_class: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """A subclass of torch.optim's `optimizer_class` whose step is torch's update without the graph break."""
    update = getattr(optimizer_class.step, "__wrapped__", None)  # under torch's _use_grad_for_differentiable
    if update is None:
        return optimizer_class

    def step(self, closure=None):
        with torch.set_grad_enabled(self.defaults["differentiable"]):  # what the graph break's wrapper sets
            return update(self, closure)

    doc = f"torch.optim.{optimizer_class.__name__}, its step without torch.compile's graph break (optim.eager)."
    return type(optimizer_class.__name__, (optimizer_class,), {"step": step, "__doc__": doc, "__module__": __name__})


SGD = eager(torch.optim.SGD)
Adam = eager(torch.optim.Adam)
AdamW = eager(torch.optim.AdamW)


def mark_not_compiled() -> None:
    """Give torch.optim's (and DDP's) methods their not-to-be-compiled mark without importing
    torch._dynamo. For runs that compile nothing; where torch._dynamo is imported already, nothing to do."""
    if "torch._dynamo" in sys.modules or not hasattr(torch, "_disable_dynamo"):
        return
    from torch.nn.parallel import DistributedDataParallel

    lazy_mark = torch._disable_dynamo(lambda: None).__code__  # the wrapper that imports torch._dynamo when first called
    classes = [DistributedDataParallel, torch.optim.Optimizer]
    while classes:
        cls = classes.pop()
        classes += cls.__subclasses__()
        for method in vars(cls).values():
            inner = getattr(method, "__wrapped__", None)
            if getattr(method, "__code__", None) is lazy_mark and inner is not None:
                setattr(inner, "__dynamo_disable", inner)  # the mark torch caches there: the method as it is
