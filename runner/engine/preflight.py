"""The model's first step, tried on two training images before a run trains or writes anything
(runner.engine.run.build): what no signature can tell, a model of any origin (ablate's, torchvision's,
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

import torch
import torch.nn.functional as F

from runner.config import targets
from runner.config.rules import reason
from runner.engine import failures
from runner.engine.builders import PartError, blamed

PROBE_BATCH = 2  # BatchNorm in training mode needs more than one value per channel
SIZE_KEYS = ("image_size", "img_size", "input_size")  # where a model with a fixed input size takes it


class OutputError(PartError):
    """The model ran, but what it returns is not the logits the run needs."""


def first_step(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg, layout: str
) -> str:
    """Run one forward and backward pass of `model` on `images` (uint8, a few training images) in the
    layout `layout` (contiguous | channels_last) and check its output; the layout the run uses:
    contiguous where channels_last fails and `cfg.trainer.layout` is auto. Raises PartError. Once
    per process for the same model config, data shape and layout (a sweep's later seeds)."""
    key = passed_key(model, images, num_classes, cfg, layout)
    if key in _passed:  # the same model, data shape and layout passed in this process: the same step passes
        return _passed[key]
    _passed[key] = layout = checked_layout(model, images, labels, num_classes, cfg, layout)
    return layout


_passed: dict = {}  # passed_key: the layout chosen, for the later jobs of a sweep in this process


def passed_key(model, images: torch.Tensor, num_classes: int, cfg, layout: str) -> tuple:
    """What decides the first step's outcome: the model's class and config, its activation, the
    images' shape, the classes, the layout asked for and the device."""
    from omegaconf import OmegaConf

    parts = [
        OmegaConf.to_container(cfg[group], resolve=True) if group in cfg else None for group in ("model", "activation")
    ]
    return (
        type(model),
        repr(parts),
        tuple(images.shape[1:]),
        num_classes,
        layout,
        str(cfg.trainer.layout),
        images.device.type,
    )


def checked_layout(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg, layout: str
) -> str:
    x = images[:PROBE_BATCH].float() / 255
    y = labels[:PROBE_BATCH]
    if layout == "channels_last":
        failure = attempt(model, x, y, num_classes, torch.channels_last, cfg)
        if failure is None:
            return layout
    plain = attempt(model, x, y, num_classes, torch.contiguous_format, cfg)
    if plain is not None:  # the model's own failure, whatever the layout
        raise at_fault(plain, model, cfg, tuple(images.shape[1:]))
    if layout == "channels_last" and cfg.trainer.layout != "auto":
        raise PartError(
            f"trainer.layout=channels_last is not allowed for model._target_={cfg.model._target_}: its step fails "
            f"in channels_last ({type(failure).__name__}: {reason(failure)}); allowed: auto or contiguous"
        )
    return "contiguous"


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
    except Exception as e:  # noqa: BLE001 what the model's step raises is the finding
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
        logits = out.ndim == 2 and out.shape[0] == batch  # of another width
        what = f"{out.shape[-1]} outputs" if logits else f"shape ({', '.join(map(str, out.shape))})"
        mend = "; give it the data's class count, e.g. model.num_classes=${data:num_classes}" if logits else ""
        raise OutputError(
            f"model._target_={target} returns {what} for a batch of {batch}, the data has {num_classes} classes; "
            f"allowed: a model whose output is (batch, {num_classes}){mend}"
        )


def at_fault(error: Exception, model, cfg, in_shape: tuple) -> PartError:
    """The line for a step that raised: the activation's fault where it raised inside the activation,
    else the model's, with where it raised and the key that changes its input size, if it has one."""
    if in_activation(error, cfg):
        return blamed("activation", cfg.activation, "fails in the model", error)
    shape = "x".join(map(str, in_shape))
    mend = ""
    takes = init_parameters(model)
    size_keys = [k for k in SIZE_KEYS if k in takes]
    if size_keys:
        mend = f"; or model.{size_keys[0]}={size_value(takes[size_keys[0]], *in_shape[1:])} for these images"
    return PartError(
        f"model._target_={cfg.model._target_} fails on {shape} images ({type(error).__name__}: {reason(error)}, "
        f"at {where(error)}); allowed: a model that takes (batch, {', '.join(map(str, in_shape))}) input{mend}"
    )


def in_activation(error: BaseException, cfg) -> bool:
    """Whether `error` was raised inside the activation: a frame of its traceback is a method of an
    instance of the activation's class (a model may run it while it is built, as ablate's do)."""
    cls = targets.locate(cfg.activation._target_)
    if not inspect.isclass(cls):
        return False
    return any(isinstance(frame.f_locals.get("self"), cls) for frame, _ in traceback.walk_tb(error.__traceback__))


def init_parameters(model) -> dict[str, inspect.Parameter]:
    """The keyword parameters of the model's class's constructor, and of its bases' where it hands
    them `**kwargs` (runner.config.targets.constructor_chain)."""
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    chain = targets.constructor_chain(type(model))
    return {p.name: p for params in reversed(chain) for p in params if p.kind in keyword}


def size_value(param: inspect.Parameter, height: int, width: int) -> str:
    """The data's image size as a model's size parameter takes it: `[h,w]` where it is a pair, else `h` for a square."""
    pair = isinstance(param.default, (tuple, list)) or str(param.annotation).lower().startswith(
        ("tuple", "typing.tuple")
    )
    return f"[{height},{width}]" if pair or height != width else str(height)


def where(error: BaseException) -> str:
    """Where `error` was raised: the user's line, else the line of the model's own code (torchvision's,
    timm's, ablate's) that called the failing operation (runner.engine.failures.location)."""
    return failures.location(error) or "an unknown line"
