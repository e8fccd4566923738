"""glibc malloc settings that keep a forward pass's buffers mapped from one pass to the next.

torch takes its CPU tensors from malloc. glibc returns large freed blocks to the OS (``munmap``, or
``madvise`` when it trims an arena's free top), so the next pass page-faults the same memory in again, a page
at a time, zero-filled: about 3,800 minor faults per batch-1 ``/reconstruct`` of a 256x256 slice in the service,
42,500 per default training step (``python -m benchmarks.bench_malloc``, docs/bench_malloc.txt, which also times
both). glibc raises its thresholds by itself as large blocks come and go, so how often it happens depends on what
the process freed before. Two settings are needed together:
- ``M_MMAP_THRESHOLD``: blocks from this size up are ``mmap``-ed and unmapped on free. We fix it at glibc's
  ceiling.
- ``M_TRIM_THRESHOLD``: free memory at the top of an arena beyond this is handed back.
Fixing either alone turns glibc's self-adjustment off and made things worse: 36,000 and 6,600 faults per
``/reconstruct`` (an ad-hoc A/B of servers). The price: each arena (one per thread that ran a pass) keeps up to
``trim_bytes`` of freed memory mapped, so the process's RSS stays near its peak after a burst.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's largest accepted value on 64-bit (HEAP_MAX_SIZE / 2)
DEFAULT_RETAIN_MB = 256  # the service's VQVAE_MALLOC_RETAIN_MB and vqvae-train's --malloc-retain-mb
MAX_RETAIN_MB = (2**31 - 1) // (1024 * 1024)  # mallopt takes a C int of bytes: 2047 MB


def retain_freed_memory(trim_bytes: int) -> bool:
    """Keep freed blocks up to 32 MiB, and up to ``trim_bytes`` free per arena, mapped (see the module).

    Process-wide, and it affects allocations from now on. Returns False, changing nothing, where the C library
    is not glibc (musl, macOS) or refuses a value.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    trim = min(trim_bytes, 2**31 - 1)  # mallopt takes an int
    if libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1 or libc.mallopt(M_TRIM_THRESHOLD, trim) != 1:
        logger.warning("glibc refused the malloc settings; freed memory goes back to the OS as usual")
        return False
    return True
