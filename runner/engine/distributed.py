"""One run over several processes: DistributedDataParallel under torchrun, or in a submitit job of
several tasks (nccl on GPUs, gloo on CPUs).

torchrun starts one process per GPU (or per share of the CPU cores) and tells each its place in
the environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT). Every rank
holds the whole data set on its device and trains on its part of each global batch
(runner.data.Batches); DDP averages the gradients, so a step sees the same `data.batch_size`
images as in one process. Rank 0 alone writes the run directory. The ranks agree on it before Hydra
names it: the start time (`${started:...}` in configs/config.yaml) and a new sweep directory are
rank 0's, shared through torchrun's rendezvous store, which the process group then uses too.

Nothing here imports torch at module level: `run --help` imports this module.
"""

import atexit
import functools
import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime

_store = None  # the rendezvous store of this process's group, once asked for


@dataclass(frozen=True)
class World:
    """This process's place among the processes that train one run together."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # on this machine: the GPU it takes
    local_size: int = 1  # processes of the run on this machine
    core_sharers: int = 1  # processes that share the CPU cores this one sees (1: they are its own)

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run directory, TensorBoard files, checkpoints and metrics."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def sum(self, tensor):
        """`tensor` summed over the ranks (a new tensor; `tensor` itself in one process)."""
        if not self.active:
            return tensor
        import torch.distributed as dist

        total = tensor.clone()
        dist.all_reduce(total)
        return total

    def stack(self, tensor):
        """Every rank's `tensor`, stacked in rank order (`tensor[None]` in one process)."""
        if not self.active:
            return tensor[None]
        import torch
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    def max(self, values: list[int], device) -> list[int]:
        """Each value's maximum over the ranks: the ranks agree on a stop or a checkpoint."""
        if not self.active:
            return values
        import torch
        import torch.distributed as dist

        agreed = torch.tensor(values, device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
        return agreed.tolist()


def world() -> World:
    """This process's place, from torchrun's environment (or a submitit job's, see below); one process
    when neither started it."""
    env = os.environ
    if "WORLD_SIZE" not in env and env.get("SUBMITIT_EXECUTOR"):
        export_submitit_tasks()
    size = int(env.get("WORLD_SIZE", "1"))
    local_size = int(env.get("LOCAL_WORLD_SIZE", str(size)))
    return World(
        rank=int(env.get("RANK", "0")),
        size=size,
        local_rank=int(env.get("LOCAL_RANK", "0")),
        local_size=local_size,
        # torchrun's processes see all the machine's cores; SLURM gives each task its cpus_per_task
        core_sharers=1 if env.get("SUBMITIT_EXECUTOR") == "slurm" else local_size,
    )


def export_submitit_tasks() -> None:
    """In a submitit job of several tasks (hydra.launcher.tasks_per_node > 1 with submitit_slurm or
    submitit_local), the variables torchrun would set, from submitit's: the tasks train one run."""
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def store():
    """The key-value store of torchrun's rendezvous (MASTER_ADDR:MASTER_PORT), opened once per process."""
    global _store
    if _store is None:
        import torch.distributed as dist

        _store, _, _ = next(dist.rendezvous("env://"))
    return _store


_asked: dict[str, int] = {}  # how many times each key was shared: the ranks ask in the same order


def shared(key: str, make) -> str:
    """`make()` on rank 0, and the same string on every other rank; `make()` in one process."""
    here = world()
    if not here.active:
        return make()
    _asked[key] = _asked.get(key, 0) + 1
    full_key = f"ablate/{key}/{_asked[key]}"
    if here.main:
        store().set(full_key, make())
    return store().get(full_key).decode()


def started(pattern: str) -> str:
    """Resolver `${started:%Y-%m-%d_%H-%M-%S}`: when the run started, on rank 0's clock, so that every
    rank names the same run directory (each rank's `${now:}` would name its own)."""
    return datetime.fromtimestamp(float(shared("started", lambda: repr(time.time())))).strftime(pattern)


def start(here: World, device) -> None:
    """Join the process group of the run (once per process): nccl on CUDA, gloo otherwise."""
    import torch
    import torch.distributed as dist

    if not here.active or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=store(), rank=here.rank, world_size=here.size)
    atexit.register(dist.destroy_process_group)  # a job a launcher runs without `run`'s main (see leave)


def leave(code) -> None:
    """The end of `run` in a process of a distributed run (nothing in one process): wait for the
    other ranks if all went well (rank 0 may still write a sweep's summary), leave the process group,
    flush, and exit with `code` at once. An interpreter that exits as usual destroys the objects of
    the process group's C++ threads in no set order, and now and then the process aborts there
    ("terminate called without an active exception", in 2 of about 100 sweeps under torchrun)."""
    if "torch.distributed" not in sys.modules:
        return  # `run --help`, a refused config: torch was not even imported
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return
    if code in (0, None):
        dist.barrier()
    dist.destroy_process_group()
    from runner.engine import lock

    lock.release_all()  # what atexit would release: os._exit below skips it
    logging.shutdown()
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)  # sys.exit("message"), as the interpreter would print it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)


def wrap(model, device, sync_bn: bool):
    """The module that trains: `model` in DDP (after its BatchNorm layers are made to normalize
    over the global batch, if `sync_bn`). `model` itself stays the one to evaluate and save."""
    import torch

    if sync_bn:
        convert_batchnorm(model, device)
    ids = [device.index or 0] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def rewrap(ddp):
    """`ddp`'s module in a new DDP, which reduces the gradients of the parameters that train now
    (after trainer.freeze stopped some: DDP takes those that require a gradient when it is made)."""
    import torch

    return torch.nn.parallel.DistributedDataParallel(ddp.module, device_ids=ddp.device_ids)


def convert_batchnorm(model, device) -> None:
    """Replace each BatchNorm layer of `model` (not the model itself) with one that computes its
    statistics over the global batch: torch's SyncBatchNorm on GPUs, GlobalBatchNorm elsewhere
    (SyncBatchNorm runs on GPUs only). Parameters and buffers are kept, so is the state_dict."""
    import torch

    for name, child in model.named_children():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
            kind = torch.nn.SyncBatchNorm if device.type == "cuda" else global_batchnorm_class()
            synced = kind(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            synced.to(device)
            if child.affine:  # the optimizer holds these very parameters
                synced.weight, synced.bias = child.weight, child.bias
            setattr(model, name, synced)
        else:
            convert_batchnorm(child, device)


@functools.cache
def global_batchnorm_class():
    """GlobalBatchNorm, defined on first use (it subclasses a torch module: torch is imported then)."""
    import torch
    import torch.distributed as dist

    class SumOverRanks(torch.autograd.Function):
        """all_reduce(SUM) with a gradient: each rank's input moves every rank's output, so the
        gradient of an input is the sum of the output gradients over the ranks."""

        @staticmethod
        def forward(ctx, x):
            total = x.clone()
            dist.all_reduce(total)
            return total

        @staticmethod
        def backward(ctx, grad):
            total = grad.clone()
            dist.all_reduce(total)
            return total

    class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
        """Batch norm whose mean and variance in training are those of the global batch (all ranks'
        parts): (x - mu) / sqrt(var + eps) * gamma + beta, with mu and var from the per-channel sums
        of x and x^2 over every rank. One process, or evaluation: plain batch norm."""

        def _check_input_dim(self, x):
            if x.dim() not in (2, 3, 4, 5):
                raise ValueError(f"expected a 2D to 5D input, got {x.dim()}D")

        def forward(self, x):
            if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
                return super().forward(x)
            dims = [d for d in range(x.dim()) if d != 1]
            c = x.shape[1]
            xf = x.float()
            count = torch.tensor([xf.numel() / c], device=x.device)
            sums = SumOverRanks.apply(torch.cat([xf.sum(dims), count]))
            n = sums[c]
            mean = sums[:c] / n
            shape = [1, c] + [1] * (x.dim() - 2)
            centered = xf - mean.view(shape)
            var = SumOverRanks.apply((centered * centered).sum(dims)) / n  # two passes, as exact as torch's
            if self.track_running_stats:
                with torch.no_grad():
                    self.num_batches_tracked.add_(1)
                    factor = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked.item()
                    self.running_mean.lerp_(mean.detach(), factor)
                    self.running_var.lerp_(var.detach() * n / (n - 1), factor)  # unbiased, as torch keeps it
            y = centered * torch.rsqrt(var.view(shape) + self.eps)
            if self.affine:
                y = y * self.weight.view(shape) + self.bias.view(shape)
            return y.to(x.dtype)

    return GlobalBatchNorm


def gather(value: str) -> list[str]:
    """Every rank's `value`, in rank order, on every rank (the process group is started)."""
    import torch.distributed as dist

    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def broadcast_buffers(model) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank, so that they evaluate one model."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
