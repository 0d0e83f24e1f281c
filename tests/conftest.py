"""Every test process: one intra-op torch thread per pytest-xdist worker, since two workers on two
cores with two threads each collapse under load."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)
