"""The C allocator kept from returning freed memory to the system between training steps.

A training step frees and allocates the same few megabytes of activations again and again. glibc's
malloc serves the larger ones from fresh mmap()ed pages and gives the top of its heap back to the
system once enough of it is free, so each step touches brand-new pages, and the kernel zeroes every
one of them at its first touch: in a process that holds little data (a large data set raises glibc's
thresholds by itself), about 700 page faults a step of experiment=fmnist_speed's net and 4,000 of
model=residual's; experiment=quick took 1.46 million before and 0.16 million after. With mmap's
threshold at 32 MiB and the heap trimmed only above 1 GiB free, the pages stay with the process and
a step faults almost none.
The process then keeps the memory of its largest step until it ends, as torch's CUDA caching
allocator does on a GPU.

Only on glibc, and only where the user set no malloc tunable of their own (GLIBC_TUNABLES).
"""

import ctypes
import functools
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters, from glibc's malloc.h
MMAP_THRESHOLD = 32 * 1024**2  # glibc's largest on 64-bit systems
TRIM_THRESHOLD = 1024**3


@functools.cache  # once per process
def keep_freed_memory() -> bool:
    """Set glibc's thresholds; whether they were set."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
