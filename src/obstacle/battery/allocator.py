"""How the battery's process gets memory from the OS and gives it back (glibc, Linux).

The memory plan (:mod:`obstacle.battery.memory`) counts tensors; these make the process' RSS
follow them: large blocks mapped on their own so that freeing them returns them
(:func:`map_large_allocations`), the heap's free pages trimmed between quantities
(:func:`return_freed_memory_to_the_os`), and the pages of a block whose values are no longer
needed released while the block lives on (:func:`release_pages`, Lanczos' basis). Each is a
no-op that says so (False or 0) off glibc/Linux or off the CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import sys
from collections.abc import Callable

from torch import Tensor

__all__ = [
    "LARGE_VECTOR_BYTES",
    "MMAP_THRESHOLD_BYTES",
    "map_large_allocations",
    "release_pages",
    "return_freed_memory_to_the_os",
]


def return_freed_memory_to_the_os() -> bool:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim``); False off glibc.

    glibc serves blocks below its mmap threshold (dynamic, up to 32 MiB) from the heap and keeps
    them resident when freed, so without this the RSS of a process that frees vector-sized and
    block-sized buffers keeps the high-water mark of every earlier phase. The analysis calls it
    between quantities. Cheap (no effect on how allocations are made), unlike a fixed small
    mmap threshold, which returned the same memory but doubled the system time (page faults on
    every fresh buffer).
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


_MADV_DONTNEED = 4  # Linux: the pages' memory is freed now; reading them later gives zeros


def release_pages(tensor: Tensor) -> int:
    """Give back to the OS the whole pages inside a contiguous CPU tensor whose values are no
    longer needed (``madvise(MADV_DONTNEED)``, Linux); returns the bytes released, 0 when
    nothing was done (another device, off Linux, or less than a page).

    The tensor stays valid; the values in the released pages become zeros (the partial pages at
    its ends, shared with memory outside it, are kept). For a block
    of which a few rows are still used (Lanczos' basis when its Ritz vectors are formed in it).
    """
    if tensor.device.type != "cpu" or not tensor.is_contiguous() or tensor.numel() == 0:
        return 0
    libc = _libc()
    if libc is None or not hasattr(libc, "madvise") or not sys.platform.startswith("linux"):
        return 0
    page = mmap.PAGESIZE
    start = -(-tensor.data_ptr() // page) * page
    end = (tensor.data_ptr() + tensor.numel() * tensor.element_size()) // page * page
    if end <= start:
        return 0
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    if madvise(start, end - start, _MADV_DONTNEED) != 0:
        return 0
    return end - start


# From this vector size the battery maps every allocation of MMAP_THRESHOLD_BYTES or more on its
# own (glibc's M_MMAP_THRESHOLD, fixed), so a freed per-layer gradient or HVP piece leaves RSS at
# once. Below it the heap's reuse is kept: it is fast, and small models' RSS is mostly the
# process. Measured (bench/memory_phases.py, 25M-parameter MLP, float32): with glibc's dynamic
# threshold the heap held ~1.4 GB of freed 25 MB layer-sized blocks during Lanczos, 15 vectors
# above the plan; on a 4M MLP a fixed 1 MiB threshold cut the peak 1,992 -> 1,233 MiB but took
# 8× the system time (a page fault per fresh page of every vector), so small models keep the heap.
LARGE_VECTOR_BYTES = 64 * 2**20
MMAP_THRESHOLD_BYTES = 4 * 2**20
_M_MMAP_THRESHOLD = -3


def map_large_allocations(vector_bytes: int) -> bool:
    """For a model whose vectors are LARGE_VECTOR_BYTES or more: glibc maps blocks of
    MMAP_THRESHOLD_BYTES and more on their own (returned to the OS when freed). Process-wide;
    False (nothing done) for smaller models or off glibc."""
    if vector_bytes < LARGE_VECTOR_BYTES:
        return False
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _malloc_trim() -> Callable[[int], int] | None:
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return None
    trim = libc.malloc_trim
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]
