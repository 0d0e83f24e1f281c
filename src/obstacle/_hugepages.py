"""Transparent huge pages for torch's large CPU tensors, in the processes obstacle owns.

With ``THP_MEM_ALLOC_ENABLE=1`` set before its first allocation, PyTorch aligns each CPU block of
2 MiB or more to 2 MiB and asks the kernel for huge pages for it (``madvise(MADV_HUGEPAGE)``,
honoured when /sys/kernel/mm/transparent_hugepage/enabled is ``always`` or ``madvise``). The
battery's vectors are large and short-lived: glibc maps every block of 32 MiB or more afresh (4 MiB
or more once ``battery.allocator.map_large_allocations`` has run), and each first touch of a
4 KiB page is a page fault. A 100 MB vector (25M float32 parameters) costs 25,000 faults, one per
2 MiB with huge pages. Measured on a 2-core AMD EPYC: 40 rounds of two fresh 100 MB temporaries
took 12.1 s (9.6 s of it in the kernel, 2.9M faults) and 2.8 s with huge pages (48k faults).

Set by the ``obstacle`` command and the worker's Celery app, never by ``import obstacle``: a
training process that uses the SDK keeps its own allocator settings. A value already in the
environment is kept (``THP_MEM_ALLOC_ENABLE=0`` turns it off).
"""

from __future__ import annotations

import os

__all__ = ["HUGE_PAGES_ENV", "use_huge_pages"]

HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


def use_huge_pages() -> bool:
    """Ask torch for huge pages in this process and its children, unless the environment says
    otherwise; True when it is on. Torch reads the variable at its first CPU allocation, so call
    this before any tensor is made."""
    os.environ.setdefault(HUGE_PAGES_ENV, "1")
    return os.environ[HUGE_PAGES_ENV] == "1"
