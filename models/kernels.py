"""ablate's fused CPU kernels (`trainer.fused`): runs of memory-bound ops of ablate's blocks, each in
one to three passes over bf16 channels_last tensors instead of a dozen ops, forward and backward.

On a 2-core CPU the memory-bound ops of a conv block (max pooling and the zero fill of its gradient,
batch norm, ReLU) take as long as its convolution. models/kernels.cpp computes, after torch's
convolution:

- `pooled`: the block `conv -> 2x2 max pooling -> batch norm -> ReLU` (`model.pool_position:
  after_conv`, batch norm before the activation); for a block on one-channel images (a 3x3 or 5x5
  kernel, an input that needs no gradient: the first block) the convolution too, so that its
  full-size output is never written;
- `bn_relu`: batch norm followed by ReLU (a conv block `conv -> batch norm -> ReLU`, the two in each
  residual bottleneck), for any number of channels whose pixels fill the vectors whole;
- `relu_pool`: ReLU followed by the 2x2 max pooling that closes a stage of a plain network
  (models.networks.Stages), where both are exact: torch's bits.

The results are those of the eager ops up to the order of sums and bf16's rounding (the kernels sum
in a fixed order: a run repeats bit for bit, whatever the threads).

A block takes the kernels in training, and in evaluation without gradients (batch norm with its
running statistics), under bf16 autocast on the CPU, where the sizes allow and no hooks are on the
modules the kernels compute in their place, but those that read only a ReLU's output, which the
kernels call with the output they make (the diagnostics' dead units: a logging step computes the
same bits as another); anywhere else it runs torch's ops.
The kernels are compiled with the machine's C++ compiler (`$CXX`, else c++ or g++) on first use,
once per machine, source and compiler, into `<cache>/kernels/` (the cache of runner.data.cache).
"""

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules import module as module_hooks

SOURCE = Path(__file__).with_name("kernels.cpp")
FLAGS = ["-O2", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
CL = torch.channels_last

_library: list = []  # the loaded library, once per process


class BuildError(Exception):
    """The kernels could not be compiled or loaded here (no compiler, a compiler error)."""


def compiler() -> str | None:
    """$CXX where it is set, else c++ or g++ on PATH."""
    chosen = os.environ.get("CXX")
    return shutil.which(chosen) if chosen else shutil.which("c++") or shutil.which("g++")


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def library(folder: Path) -> ctypes.CDLL:
    """The compiled kernels, built into `folder` if this source, compiler and CPU have none there."""
    if _library:
        return _library[0]
    cxx = compiler()
    if cxx is None:
        chosen = os.environ.get("CXX")
        raise BuildError(
            f"no C++ compiler: $CXX={chosen} is not one" if chosen else "no C++ compiler: c++ or g++ on PATH"
        )
    source = SOURCE.read_bytes()
    stat = Path(cxx).resolve().stat()
    key = hashlib.sha256(
        b"\0".join(
            [
                source,
                " ".join(FLAGS).encode(),
                f"{cxx} {stat.st_size} {stat.st_mtime_ns}".encode(),
                cpu_flags().encode(),
            ]
        )
    )
    path = folder / f"kernels-{key.hexdigest()[:16]}.so"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:  # another process may build it at once
            built = Path(tmp) / path.name
            done = subprocess.run(
                [cxx, *FLAGS, str(SOURCE), "-o", str(built)], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                first = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip()[:200])
                raise BuildError(f"{Path(cxx).name} failed on {SOURCE.name}: {first}")
            os.replace(built, path)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise BuildError(f"{path} does not load: {e}") from e
    _declare(lib)
    _library.append(lib)
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    P, I, F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    shape = [I, I, I, I]
    lib.block_forward.argtypes = [P, *shape, P, P, F, F, P, P, P, P, P, P, P, P, I]
    lib.block_infer.argtypes = [P, *shape, P, P, F, P, P, P, P, P, P, I]
    lib.block_backward.argtypes = [P, P, P, *shape, P, P, P, P, P, P, P, P, I]
    lib.stem_takes.argtypes = [I, I]
    lib.lanes.argtypes = []
    lib.stem_forward.argtypes = [P, I, P, *shape, P, P, F, F, P, P, P, P, P, P, P, P, I]
    lib.stem_infer.argtypes = [P, I, P, *shape, P, P, F, P, P, P, P, P, P, I]
    lib.stem_backward.argtypes = [P, P, P, P, I, *shape, P, P, P, P, P, P, P, P, I]
    lib.bn_relu_takes.argtypes = [I, I]
    lib.relu_pool_forward.argtypes = [P, *shape, P, P, I]
    lib.relu_pool_backward.argtypes = [P, P, P, *shape, P, I]
    lib.bn_relu_forward.argtypes = [P, I, I, I, P, P, F, F, P, P, P, P, P, P, I]
    lib.bn_relu_infer.argtypes = [P, I, I, I, P, P, F, P, P, P, I]
    lib.bn_relu_backward.argtypes = [P, P, I, I, I, P, P, P, P, P, P, P, P, I]


POOLED = "a block of Conv2d, MaxPool2d, BatchNorm2d and ReLU (model.pool_position=after_conv, batch norm before ReLU)"
BN_RELU = "batch norm followed by ReLU: a block of Conv2d, BatchNorm2d and ReLU, or a residual bottleneck with ReLU"
RELU_POOL = "a conv block ending in ReLU followed by 2x2 max pooling (model.pool_position=after_block)"


def kind(block: nn.Module) -> str | None:
    """Which kernels a block of ablate's could take, by its modules: `pooled` (conv -> 2x2 max pooling
    -> batch norm -> ReLU), `bn_relu` (conv -> batch norm -> ReLU), `relu` (conv -> ReLU: only with the
    pooling after it), `bottleneck` (models.Bottleneck, its batch norms before ReLU), `stages`
    (models.networks.Stages: its conv blocks and the pooling after them), else None."""
    if getattr(block, "fused_stages", False):
        return "stages"
    kinds = [type(m) for m in block.children()]
    if kinds == [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU]:
        return "pooled"
    if kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]:
        return "bn_relu"
    if kinds == [nn.Conv2d, nn.ReLU]:
        return "relu"
    sub = getattr(block, "subnetwork", None)
    if isinstance(sub, nn.Sequential) and [type(m) for m in sub] == [
        *[nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 2,
        nn.Conv2d,
        nn.BatchNorm2d,
    ]:
        return "bottleneck"
    return None


def why_not(block: nn.Module, lanes: int = 8) -> str | None:
    """Why `block` cannot take the kernels (its modules are not those they compute), or None;
    `lanes`: the channels the kernels take at a time (the library's `lanes()`, 16 with AVX-512)."""
    which = kind(block)
    if which == "stages":
        pairs = [a for a, b in zip(block, list(block)[1:]) if _pair(a, b)]
        if pairs and all(a[0].out_channels % lanes for a in pairs):
            return f"{RELU_POOL}, to a multiple of {lanes} channels"
        which = "stages" if pairs else None
    if which in (None, "relu"):
        return f"{POOLED}, or {BN_RELU}, or {RELU_POOL}"
    if which == "stages":
        return None
    norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    if not all(bn.affine and bn.track_running_stats for bn in norms):
        return "batch norm with its affine parameters and running statistics"
    if which != "pooled":
        return None
    conv, pool, _, _ = block.children()
    k = conv.kernel_size[0]
    if conv.kernel_size != (k, k) or k % 2 == 0 or conv.stride != (1, 1) or conv.dilation != (1, 1):
        return "a square convolution of odd size, stride 1"
    if conv.padding not in ((k // 2, k // 2), "same") or conv.groups != 1 or conv.padding_mode != "zeros":
        return "a convolution with zero padding that keeps the size, in one group"
    if conv.bias is not None or conv.out_channels % lanes:
        return f"a convolution with no bias, to a multiple of {lanes} channels"
    if (pool.kernel_size, pool.stride, pool.padding, pool.dilation) not in ((2, 2, 0, 1), ((2, 2), (2, 2), 0, 1)):
        return "2x2 max pooling"
    if pool.ceil_mode or pool.return_indices:
        return "2x2 max pooling"
    return None


def switch_on(
    model: nn.Module, setting, device: torch.device, autocast_dtype, compiled: bool, folder: Path
) -> list[str]:
    """`trainer.fused`: the names of the blocks of `model` that now take the kernels in training.
    auto: every block that has them (why_not), where the run trains on the CPU in bf16 without
    torch.compile and the kernels build; true where none can is refused (ValueError); false: none."""
    blocks = [(name, m) for name, m in model.named_modules() if hasattr(m, "fused")]
    for _, block in blocks:
        block.fused = False
    if setting is False:
        return []
    reason, lanes = None, 8
    if device.type != "cpu":
        reason = f"a CPU (this run trains on {device.type})"
    elif autocast_dtype != torch.bfloat16:
        reason = "bf16 autocast (trainer.precision=bf16; this run computes in fp32)"
    elif compiled:
        reason = "trainer.compile=false (torch.compile fuses ops itself)"
    elif not blocks or all(why_not(m) for _, m in blocks):
        why = why_not(blocks[0][1]) if blocks else "a conv block of ablate's (model.block=null)"
        reason = f"{why}; this model has none"
    else:
        try:
            lanes = library(folder).lanes()
        except BuildError as e:
            reason = f"its kernels built here ({e})"
            if setting == "auto":
                logging.getLogger("ablate").warning(f"trainer.fused=auto: torch's ops instead of ablate's kernels: {e}")
    takers = [(name, m) for name, m in blocks if why_not(m, lanes) is None]
    if not reason and not takers:
        reason = f"{why_not(blocks[0][1], lanes)}; this model has none"
    if reason:
        if setting is True:
            raise ValueError(f"trainer.fused=true needs {reason}; allowed here: auto, false")
        return []
    for _, block in takers:
        block.fused = True
    return [name for name, _ in takers]


def _pair(block: nn.Module, pool: nn.Module) -> bool:
    """A conv block ending in ReLU whose conv keeps the size, followed by 2x2 max pooling."""
    if kind(block) not in ("relu", "bn_relu") or type(pool) is not nn.MaxPool2d:
        return False
    conv, k = block[0], block[0].kernel_size[0]
    same = conv.kernel_size == (k, k) and k % 2 and conv.padding in ((k // 2, k // 2), "same")
    same = same and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
    window = (pool.kernel_size, pool.stride, pool.padding, pool.dilation) in ((2, 2, 0, 1), ((2, 2), (2, 2), 0, 1))
    return bool(same and window and not pool.ceil_mode and not pool.return_indices)


def takes(block: nn.Module, x: torch.Tensor) -> bool:
    """Whether this call of `block` (its why_not None) computes with the kernels: in training, or in
    evaluation without gradients."""
    if not (
        (block.training or not torch.is_grad_enabled())
        and bool(_library)
        and x.device.type == "cpu"
        and x.dim() == 4
        and all(p.dtype == torch.float32 for p in block.parameters())
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and not _hooked(block)
    ):
        return False
    h, w = x.shape[2:]
    which = kind(block)
    if which in (None, "relu"):  # its modules changed since (torchrun's sync_bn converts batch norms)
        return False
    if which == "pooled":
        return block[0].out_channels % _library[0].lanes() == 0 and h % 2 == 0 and w % 2 == 0
    return True  # stages, bn_relu and bottlenecks: each part checks its own sizes (stages, bn_relu)


OUTPUT_ONLY = "reads_output_only"  # a forward hook with this attribute true reads only the output: `called`


def _hooked(block: nn.Module) -> bool:
    """Whether `block` has hooks the kernels cannot call: any on a module they compute in its place
    (in a plain network's stages, any: their ReLU's full-size output is never made), but those that
    read only the output of a ReLU whose output they make (the diagnostics' dead units,
    runner.engine.diagnostics)."""
    if module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks:
        return True
    replaced, made = _replaced(block)
    for m in replaced:
        output_only = any(m is r for r in made) and all(
            getattr(h, OUTPUT_ONLY, False) for h in m._forward_hooks.values()
        )
        if m._forward_pre_hooks or (m._forward_hooks and not output_only):
            return True
    return False


def _replaced(block: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """The modules the kernels compute in the place of `block`'s own (they are not called), and the
    ReLUs among them whose output the kernels make."""
    which = kind(block)
    if which == "bottleneck":
        sub = block.subnetwork
        return [sub[1], sub[2], sub[4], sub[5]], [sub[2], sub[5]]
    if which == "bn_relu":
        return [block[1], block[2]], [block[2]]
    if which == "pooled":
        return list(block), [block[3]]
    return list(block.modules()), []


def called(relu: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """`out`, made by the kernels in the place of `relu`'s output, after `relu`'s forward hooks (each
    one that reads the output only: _hooked) saw it."""
    for hook in relu._forward_hooks.values():
        hook(relu, (), out)
    return out


def forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's forward pass with the kernels: in training, batch norm with the batch's statistics,
    its running statistics moved; in evaluation, with the running statistics."""
    which = kind(block)
    if which == "stages":
        return stages(block, x)
    if which == "bn_relu":
        return called(block[2], bn_relu(block[1], block[0](x)))
    if which == "bottleneck":
        sub = block.subnetwork
        h = called(sub[2], bn_relu(sub[1], sub[0](x)))
        h = called(sub[5], bn_relu(sub[4], sub[3](h)))
        return block.activation(sub[7](sub[6](h)) + block.shortcut(x))
    conv, _, bn, relu = block.children()
    stem = not x.requires_grad and _library[0].stem_takes(conv.in_channels, conv.kernel_size[0])
    if not block.training:
        return called(relu, infer(conv, bn, x, stem))
    norm = _statistics(bn)
    if stem:
        x = x.to(torch.bfloat16).contiguous(memory_format=CL)
        return called(relu, Stem.apply(x, conv.weight, bn.weight, bn.bias, norm))
    return called(relu, Block.apply(conv(x).contiguous(memory_format=CL), bn.weight, bn.bias, norm))


def stages(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A feature extractor's modules in order, each conv block ending in ReLU and the 2x2 max pooling
    after it as one (its conv, batch norm and ReLU with `bn_relu`, then `relu_pool`: ReLU again changes
    nothing), where the sizes allow; the other modules as they are."""
    modules, i = list(seq), 0
    lanes = _library[0].lanes()
    while i < len(modules):
        block, pool = modules[i], modules[i + 1] if i + 1 < len(modules) else None
        c, h, w = (block[0].out_channels, *x.shape[2:]) if _pair(block, pool) else (1, 1, 1)
        if c % lanes or h % 2 or w % 2:
            x, i = block(x), i + 1
            continue
        y = block[0](x)
        x, i = relu_pool(bn_relu(block[1], y) if kind(block) == "bn_relu" else y), i + 2
    return x


def relu_pool(x: torch.Tensor) -> torch.Tensor:
    """2x2 max pooling of ReLU(x), a bf16 channels_last tensor with an even height and width."""
    x = x.contiguous(memory_format=CL)
    if torch.is_grad_enabled() and x.requires_grad:
        return ReLUPool.apply(x)
    n, c, h, w = x.shape
    out, arg = _pooled(n, c, h, w), _pooled(n, c, h, w, torch.uint8)
    _library[0].relu_pool_forward(_p(x), n, h, w, c, _p(out), _p(arg), torch.get_num_threads())
    return out


def _statistics(bn: nn.BatchNorm2d) -> tuple:
    """A training step's batch norm settings, as nn.BatchNorm2d counts and moves them: (eps, momentum,
    running mean, running variance)."""
    bn.num_batches_tracked.add_(1)
    momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum  # as nn.BatchNorm2d
    return bn.eps, momentum, bn.running_mean, bn.running_var


def bn_relu(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """ReLU(bn(x)) of a bf16 channels_last tensor: in training with the batch's statistics (the running
    ones moved), in evaluation with the running statistics; torch's ops where an image's values do
    not fill the vectors whole (bn_relu_takes)."""
    n, c, h, w = x.shape
    if x.dtype != torch.bfloat16 or not _library[0].bn_relu_takes(h * w, c):
        return torch.relu(bn(x))
    x = x.contiguous(memory_format=CL)
    if bn.training:
        return BatchNormReLU.apply(x, bn.weight, bn.bias, _statistics(bn))
    out = torch.empty_like(x, memory_format=CL)
    weight, bias = bn.weight.detach(), bn.bias.detach()
    _library[0].bn_relu_infer(
        _p(x), n, h * w, c, _p(weight), _p(bias), bn.eps, _p(bn.running_mean), _p(bn.running_var), _p(out),
        torch.get_num_threads(),
    )  # fmt: skip
    return out


def infer(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor, stem: bool) -> torch.Tensor:
    """The block's output in evaluation (no gradient)."""
    lib = _library[0]
    if stem:
        x, c = x.to(torch.bfloat16).contiguous(memory_format=CL), conv.out_channels
        weight = conv.weight.detach()  # one input channel: [C][1][K][K] in either layout
        leading, call = [_p(x), conv.kernel_size[0], _p(weight)], lib.stem_infer
        scratch = conv.weight.numel()
    else:
        x = conv(x).contiguous(memory_format=CL)
        c, leading, call, scratch = x.shape[1], [_p(x)], lib.block_infer, 0
    n, _, h, w = x.shape
    pooled, arg, out = _pooled(n, c, h, w), _pooled(n, c, h, w, torch.uint8), _pooled(n, c, h, w)
    partial = torch.empty(n * c + scratch)
    norm = [_p(t.detach()) for t in (bn.weight, bn.bias)], [_p(bn.running_mean), _p(bn.running_var)]
    call(
        *leading,
        n,
        h,
        w,
        c,
        *norm[0],
        bn.eps,
        *norm[1],
        _p(pooled),
        _p(arg),
        _p(partial),
        _p(out),
        torch.get_num_threads(),
    )
    return out


def _p(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _pooled(n: int, c: int, h: int, w: int, dtype=torch.bfloat16) -> torch.Tensor:
    return torch.empty((n, c, h // 2, w // 2), dtype=dtype, memory_format=CL)


def _normalized(lib_call, shape, gamma, beta, norm, leading: list, scratch: int = 0) -> tuple:
    """Run a forward kernel: its output, and what its backward needs."""
    n, c, h, w = shape
    eps, momentum, running_mean, running_var = norm
    pooled, arg, out = _pooled(n, c, h, w), _pooled(n, c, h, w, torch.uint8), _pooled(n, c, h, w)
    partial, mean, invstd = torch.empty(n * c + scratch), torch.empty(c), torch.empty(c)
    gamma, beta = gamma.detach(), beta.detach()
    lib_call(
        *leading, n, h, w, c, _p(gamma), _p(beta), eps, momentum, _p(running_mean), _p(running_var),
        _p(pooled), _p(arg), _p(partial), _p(mean), _p(invstd), _p(out), torch.get_num_threads(),
    )  # fmt: skip
    return out, (pooled, arg, gamma, beta, mean, invstd)


class Block(torch.autograd.Function):
    """2x2 max pooling -> batch norm (batch statistics) -> ReLU of a bf16 channels_last tensor."""

    @staticmethod
    def forward(ctx, y, gamma, beta, norm):
        out, saved = _normalized(_library[0].block_forward, y.shape, gamma, beta, norm, [_p(y)])
        ctx.save_for_backward(*saved)
        ctx.shape = y.shape
        return out

    @staticmethod
    def backward(ctx, gout):
        pooled, arg, gamma, beta, mean, invstd = ctx.saved_tensors
        n, c, h, w = ctx.shape
        gout = gout.contiguous(memory_format=CL)
        gin = torch.empty((n, c, h, w), dtype=torch.bfloat16, memory_format=CL)
        partial, dgamma, dbeta = torch.empty(n * 2 * c + 3 * c), torch.empty(c), torch.empty(c)
        _library[0].block_backward(
            _p(gout), _p(pooled), _p(arg), n, h, w, c, _p(gamma), _p(beta), _p(mean), _p(invstd),
            _p(partial), _p(dgamma), _p(dbeta), _p(gin), torch.get_num_threads(),
        )  # fmt: skip
        return gin, dgamma, dbeta, None


class Stem(torch.autograd.Function):
    """K x K convolution (no bias) of a bf16 one-channel input -> 2x2 max pooling -> batch norm (batch
    statistics) -> ReLU; the input gets no gradient. With one input channel, the weight's values lie in
    the order [C][1][K][K] in either layout."""

    @staticmethod
    def forward(ctx, x, weight, gamma, beta, norm):
        c, _, k, _ = weight.shape
        shape, leading = (x.shape[0], c, x.shape[2], x.shape[3]), [_p(x), k, _p(weight)]
        out, saved = _normalized(_library[0].stem_forward, shape, gamma, beta, norm, leading, k * k * c)
        ctx.save_for_backward(x, *saved)
        ctx.shape, ctx.kernel, ctx.weight_strides = shape, k, weight.stride()
        return out

    @staticmethod
    def backward(ctx, gout):
        x, pooled, arg, gamma, beta, mean, invstd = ctx.saved_tensors
        (n, c, h, w), k = ctx.shape, ctx.kernel
        gout = gout.contiguous(memory_format=CL)
        partial = torch.empty(n * k * k * c + 3 * c)
        dweight = torch.empty_strided((c, 1, k, k), ctx.weight_strides)  # the weight's strides, as DDP expects
        dgamma, dbeta = torch.empty(c), torch.empty(c)
        _library[0].stem_backward(
            _p(gout), _p(pooled), _p(arg), _p(x), k, n, h, w, c, _p(gamma), _p(beta), _p(mean), _p(invstd),
            _p(partial), _p(dgamma), _p(dbeta), _p(dweight), torch.get_num_threads(),
        )  # fmt: skip
        return None, dweight, dgamma, dbeta, None


class BatchNormReLU(torch.autograd.Function):
    """Batch norm (batch statistics) -> ReLU of a bf16 channels_last tensor."""

    @staticmethod
    def forward(ctx, x, gamma, beta, norm):
        eps, momentum, running_mean, running_var = norm
        n, c, h, w = x.shape
        out = torch.empty_like(x, memory_format=CL)
        partial, mean, invstd = torch.empty(n * 2 * c), torch.empty(c), torch.empty(c)
        gamma, beta = gamma.detach(), beta.detach()
        _library[0].bn_relu_forward(
            _p(x), n, h * w, c, _p(gamma), _p(beta), eps, momentum, _p(running_mean), _p(running_var),
            _p(partial), _p(mean), _p(invstd), _p(out), torch.get_num_threads(),
        )  # fmt: skip
        ctx.save_for_backward(x, gamma, beta, mean, invstd)
        return out

    @staticmethod
    def backward(ctx, gout):
        x, gamma, beta, mean, invstd = ctx.saved_tensors
        n, c, h, w = x.shape
        gout = gout.contiguous(memory_format=CL)
        gin = torch.empty_like(x, memory_format=CL)
        partial, dgamma, dbeta = torch.empty(n * 2 * c), torch.empty(c), torch.empty(c)
        _library[0].bn_relu_backward(
            _p(gout), _p(x), n, h * w, c, _p(gamma), _p(beta), _p(mean), _p(invstd), _p(partial), _p(dgamma),
            _p(dbeta), _p(gin), torch.get_num_threads(),
        )  # fmt: skip
        return gin, dgamma, dbeta, None


class ReLUPool(torch.autograd.Function):
    """ReLU -> 2x2 max pooling of a bf16 channels_last tensor."""

    @staticmethod
    def forward(ctx, x):
        n, c, h, w = x.shape
        out, arg = _pooled(n, c, h, w), _pooled(n, c, h, w, torch.uint8)
        _library[0].relu_pool_forward(_p(x), n, h, w, c, _p(out), _p(arg), torch.get_num_threads())
        ctx.save_for_backward(out, arg)
        return out

    @staticmethod
    def backward(ctx, gout):
        out, arg = ctx.saved_tensors
        n, c, h, w = arg.shape
        gout = gout.contiguous(memory_format=CL)
        gin = torch.empty((n, c, 2 * h, 2 * w), dtype=torch.bfloat16, memory_format=CL)
        _library[0].relu_pool_backward(
            _p(gout), _p(out), _p(arg), n, 2 * h, 2 * w, c, _p(gin), torch.get_num_threads()
        )  # fmt: skip
        return gin
