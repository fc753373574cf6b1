"""The training step as one CUDA graph (`trainer.graphs`): forward, loss, backward, gradient
clipping and the optimizer's step recorded once, then replayed for every batch, so that the host
launches one graph a step instead of a hundred small kernels (at batch 128 on a GPU, launching
them takes longer than running them).

What makes the step capturable:
- every training batch has one shape (training drops the last partial batch); each is copied into
  the graph's static inputs;
- the optimizer takes its fused update (SGD, Adam, AdamW), which reads the learning rate from a
  tensor on the device: each param group's `lr` cell, filled from the schedule's value before every
  step, so that the schedule and the optimizer's state_dict keep their float;
- the first WARMUP_STEPS steps run eagerly (on a side stream, as capturing asks), then the step is
  captured and replayed. Eager steps and replays run the same kernels, so a run resumed from a
  checkpoint (which warms up again) ends bitwise equal to one that never stopped;
- a logging step that reads the gradients (diagnostics, histograms) runs eagerly, between replays;
- when `trainer.freeze` stops some parameters, the step is captured anew (`again`), as it no longer
  computes their gradients.

`pick(...)` says whether a run captures (auto: where all of the above holds) or why it cannot.
"""

import contextlib

import torch

from runner.engine.train import train_step

WARMUP_STEPS = 3
FUSED = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)  # optimizers with a fused, capturable step


def obstacle(device: torch.device, optimizer: torch.optim.Optimizer, compile: bool, processes: int) -> str | None:
    """Why this run's step cannot be captured, or None where it can."""
    if device.type != "cuda":
        return f"a CUDA GPU (this run trains on {device.type})"
    if compile:
        return "trainer.compile=false (torch.compile makes its own graphs)"
    if processes > 1:
        return f"one process (this run has {processes}, under torchrun)"
    if not isinstance(optimizer, FUSED):
        return f"an optimizer with a fused step, SGD, Adam or AdamW (this run's is {type(optimizer).__name__})"
    return None


def pick(graphs, device: torch.device, optimizer, compile: bool, processes: int) -> bool:
    """`trainer.graphs`: auto captures where the step can be; true where it cannot is refused."""
    why_not = obstacle(device, optimizer, compile, processes)
    if graphs is True and why_not:
        raise ValueError(f"trainer.graphs=true needs {why_not}; allowed here: auto, false")
    return graphs is not False and why_not is None


class GraphedStep:
    """Training steps of `model` and `optimizer` on batches of one shape, captured in a CUDA graph
    after WARMUP_STEPS eager ones (`capture=False`: all eager, the same update: how the CPU tests it)."""

    def __init__(self, model, optimizer, autocast_dtype: torch.dtype | None, grad_clip: float | None, capture=True):
        self.model, self.optimizer, self.grad_clip, self.capture = model, optimizer, grad_clip, capture
        self.device = next(model.parameters()).device
        self.autocast_dtype = autocast_dtype
        self.cells = [torch.zeros((), device=self.device) for _ in optimizer.param_groups]
        self.steps = 0  # taken by this object: a resumed run warms up again
        self.graph = self.inputs = self.outputs = None

    def again(self) -> None:
        """Capture the step anew, after WARMUP_STEPS eager steps: it changed (trainer.freeze)."""
        self.steps = 0
        self.graph = self.inputs = self.outputs = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, eager: bool = False, after_backward=None):
        """One step on (x, y): (the loss, the number of correct predictions), on the device. Eager
        for the warm-up, with `eager` (then `after_backward()` runs before the optimizer's step), or
        without capture; else the graph's replay."""
        for cell, group in zip(self.cells, self.optimizer.param_groups):
            cell.fill_(group["lr"])
        self.steps += 1
        if eager or not self.capture:
            return self._step(x, y, after_backward)
        if self.steps <= WARMUP_STEPS:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                outputs = self._step(x, y, None)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return outputs
        if self.graph is None:
            self.inputs = (x.clone(), y.clone())
            self.optimizer.zero_grad(set_to_none=True)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.outputs = self._step(*self.inputs, None)
        else:
            self.inputs[0].copy_(x)
            self.inputs[1].copy_(y)
        self.graph.replay()
        return self.outputs

    def _step(self, x, y, after_backward):
        autocast, stepping = self._autocast(), self._fused_with_cells()
        return train_step(self.model, self.optimizer, x, y, autocast, self.grad_clip, after_backward, stepping)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        # no cache of cast weights: capturing asks for it
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=False)

    @contextlib.contextmanager
    def _fused_with_cells(self):
        """The optimizer's fused update, its learning rates read from the cells; the floats back after."""
        groups = self.optimizer.param_groups
        rates = [group["lr"] for group in groups]
        for group, cell in zip(groups, self.cells):
            group.update(lr=cell, fused=True, foreach=False)
            if "capturable" in group:
                group["capturable"] = True
        try:
            yield
        finally:
            for group, rate in zip(groups, rates):
                group["lr"] = rate
