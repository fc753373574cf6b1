"""The model's first step, tried on two training images before a run trains or writes anything
(runner.engine.job.build): what no signature can tell, a model of any origin (ablate's, torchvision's,
timm's, one copied from another project) shows here, in one line naming the group at fault:

- its output must be logits of shape (batch, num_classes) (a width that is not the data's class
  count would end in an IndexError, or train silently on classes that do not exist);
- a forward or backward pass that raises is blamed on `activation` when it raised inside the
  activation, else on `model`, with the key that changes it where the model has one (a ViT's image size);
- under `trainer.layout=auto` the step runs in channels_last only where it works there (user code
  such as `x.view(batch, -1)` does not), else contiguous; an explicit channels_last that fails is refused.

The step changes nothing: the random generators, the buffers (BatchNorm's running statistics) and the
gradients are as before it, so a run is bitwise the same with or without this check.
"""

import inspect
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from runner.config.targets import locate
from runner.engine.parts import PartError, blamed, reason

PROBE_BATCH = 2  # BatchNorm in training mode needs more than one value per channel
TORCH = Path(torch.__file__).resolve().parent
SIZE_KEYS = ("image_size", "img_size", "input_size")  # where a model with a fixed input size takes it


class OutputError(PartError):
    """The model ran, but what it returns is not the logits the run needs."""


def first_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg, layout: str) -> str:
    """Run one forward and backward pass of `model` on `images` (uint8, a few training images) in the
    layout `layout` (contiguous | channels_last) and check its output; the layout the run uses:
    contiguous where channels_last fails and `cfg.trainer.layout` is auto. Raises PartError."""
    x = images[:PROBE_BATCH].float() / 255
    y = labels[:PROBE_BATCH]
    if layout == "channels_last":
        failure = attempt(model, x, y, num_classes, torch.channels_last, cfg)
        if failure is None:
            return layout
        if attempt(model, x, y, num_classes, torch.contiguous_format, cfg) is None:
            if cfg.trainer.layout == "auto":
                return "contiguous"
            raise PartError(
                f"trainer.layout=channels_last is not allowed for model._target_={cfg.model._target_}: its step fails "
                f"in channels_last ({type(failure).__name__}: {reason(failure)}); allowed: auto or contiguous"
            )
    else:
        failure = attempt(model, x, y, num_classes, torch.contiguous_format, cfg)
        if failure is None:
            return layout
    raise at_fault(failure, model, cfg, tuple(images.shape[1:]))


def attempt(model, x, y, num_classes: int, memory_format, cfg) -> Exception | None:
    """The exception of one training step in `memory_format`, or None; an OutputError is raised at
    once (no layout mends it). The model is left in `memory_format` and as it was otherwise."""
    model.to(memory_format=memory_format)
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    was_training = model.training
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices, device_type=x.device.type if devices else "cuda"):
            model.train()
            out = model(x.contiguous(memory_format=memory_format))
            check_output(out, len(x), num_classes, model, cfg)
            F.cross_entropy(out.float(), y).backward()
    except OutputError:
        raise
    except Exception as e:
        return e
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
        for p in model.parameters():
            p.grad = None
        model.train(was_training)
    return None


def check_output(out, batch: int, num_classes: int, model, cfg) -> None:
    """Logits (batch, num_classes), or one line saying what came back and the key that mends it."""
    target = cfg.model._target_
    if not isinstance(out, torch.Tensor):
        kind = type(out).__name__
        mend = " (model.aux_logits=false)" if "aux_logits" in init_parameters(model) else ""
        raise OutputError(
            f"model._target_={target} returns a {kind}, not a tensor of logits ({batch}, {num_classes}); "
            f"allowed: a model that returns the logits{mend}"
        )
    if tuple(out.shape) != (batch, num_classes):
        shape = ", ".join(map(str, out.shape))
        width = f"{out.shape[-1]} outputs" if out.ndim == 2 and out.shape[0] == batch else f"shape ({shape})"
        mend = (
            f"; give it the data's class count, e.g. model.num_classes=${{data:num_classes}}"
            if out.ndim == 2 and out.shape[0] == batch
            else ""
        )
        raise OutputError(
            f"model._target_={target} returns {width} for a batch of {batch}, the data has {num_classes} classes; "
            f"allowed: a model whose output is (batch, {num_classes}){mend}"
        )


def at_fault(error: Exception, model, cfg, in_shape: tuple) -> PartError:
    """The line for a step that raised: the activation's fault where it raised inside the activation,
    else the model's, with where it raised and the key that changes its input size, if it has one."""
    if in_activation(error, cfg):
        return blamed("activation", cfg.activation, "fails in the model", error)
    shape = "x".join(map(str, in_shape))
    mend = ""
    size_keys = [k for k in SIZE_KEYS if k in init_parameters(model)]
    if size_keys:
        h, w = in_shape[1:]
        mend = f"; or model.{size_keys[0]}={h if h == w else f'[{h},{w}]'} for these images"
    return PartError(
        f"model._target_={cfg.model._target_} fails on {shape} images ({type(error).__name__}: {reason(error)}, "
        f"at {where(error)}); allowed: a model that takes (batch, {', '.join(map(str, in_shape))}) input{mend}"
    )


def in_activation(error: BaseException, cfg) -> bool:
    """Whether `error` was raised inside the activation: a frame of its traceback is a method of an
    instance of the activation's class (a model may run it while it is built, as ablate's do)."""
    cls = locate(cfg.activation._target_)
    if not inspect.isclass(cls):
        return False
    return any(isinstance(frame.f_locals.get("self"), cls) for frame, _ in traceback.walk_tb(error.__traceback__))


def init_parameters(model) -> set[str]:
    """The parameter names of the model's class's constructor (and its bases' where it takes **kwargs)."""
    found: set[str] = set()
    for cls in type(model).__mro__:
        if cls is torch.nn.Module or "__init__" not in vars(cls):
            continue
        params = inspect.signature(cls.__init__).parameters.values()
        found |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return found


def where(error: BaseException) -> str:
    """The file and line where `error` was raised: its innermost frame outside torch's own code (the
    model's line that called the failing operation), relative to the current directory where inside it."""
    frames = traceback.extract_tb(error.__traceback__)
    outside = [f for f in frames if not Path(f.filename).resolve().is_relative_to(TORCH)]
    frame = (outside or frames or [None])[-1]
    if frame is None:
        return "unknown"
    path = Path(frame.filename).resolve()
    return f"{path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}:{frame.lineno}"
