"""Where and how a run computes: the device, the precision (autocast dtype), the memory layout and
the number of CPU threads, each chosen per machine under `auto` and forced by `trainer.*`.

`auto` takes bf16 autocast on CPUs with native bf16 (AVX512-BF16 or AMX) and fp32 elsewhere: on
CPUs without native bf16, autocast emulates it and is 3 to 10 times slower, and on CUDA GPUs fp32
convolutions already run on the tensor cores (cuDNN's TF32, on by default), so for these small
networks autocast's casts cost more than bf16 gains (0.74-0.93x of fp32 on an H100). It takes
channels_last (NHWC) on CPUs and CUDA GPUs: oneDNN's convolutions run 1.3-1.4x faster in it even in
fp32 on an AVX2 CPU, cuDNN's up to 1.7x (`benchmarks/throughput.py --compute` measures both).
"""

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Compute:
    device: torch.device
    precision: str  # fp32 | bf16
    layout: str  # contiguous | channels_last
    threads: int  # torch's intra-op threads (CPU)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.layout == "channels_last" else torch.contiguous_format


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[name]:
        raise ValueError(f"trainer.device={name!r} is not available on this machine; allowed here: auto, cpu")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Is `device` a CPU that computes in bf16 natively (and so fast)? Where `auto` takes bf16."""
    if device.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def pick_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return name


def pick_layout(name: str, device: torch.device) -> str:
    if name == "auto":
        return "channels_last" if device.type in ("cpu", "cuda") else "contiguous"
    return name


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, and in a SLURM job at most the task's
    `--cpus-per-task` (SLURM_CPUS_PER_TASK), also where the cluster does not bind tasks to cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    granted = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return min(cores, int(granted)) if granted.isdigit() and int(granted) > 0 else cores


def pick_threads(threads, parallel_jobs: int) -> int:
    """`auto`: the cores this process may use, shared out among the jobs that run at once."""
    if threads == "auto":
        return max(1, usable_cores() // max(1, parallel_jobs))
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"trainer.threads={threads!r} is not allowed; allowed: auto or an integer >= 1")
    return threads


def gpu_for_job(job: int, gpus: int) -> int:
    """The GPU of a sweep's job `job` (Hydra's job number) when a launcher runs several jobs at once:
    job j on GPU j mod `gpus`, so that the jobs running at once spread evenly over the GPUs, and
    share them when there are more jobs than GPUs."""
    return job % max(1, gpus)


def pick(trainer_cfg, parallel_jobs: int = 1, world=None, job: int = 0) -> Compute:
    """The Compute that `trainer.device/precision/layout/threads` ask for, on this machine. Under
    DDP (`world`, runner.engine.distributed), the process of local rank r takes GPU r, and the processes
    that share the CPU cores share them out. A sweep's job `job`, one of `parallel_jobs` that a
    launcher runs at once, takes its GPU by gpu_for_job."""
    device = pick_device(trainer_cfg.device)
    if world is not None and device.type == "cuda" and world.local_size > 1:
        device = torch.device("cuda", world.local_rank)
    elif device.type == "cuda" and parallel_jobs > 1:
        device = torch.device("cuda", gpu_for_job(job, torch.cuda.device_count()))
    sharers = parallel_jobs * (world.core_sharers if world is not None else 1)
    return Compute(
        device=device,
        precision=pick_precision(trainer_cfg.precision, device),
        layout=pick_layout(trainer_cfg.layout, device),
        threads=pick_threads(trainer_cfg.threads, sharers),
    )
