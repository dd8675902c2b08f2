"""Shared measuring helpers for the benchmarks: the machine's matmul peak and a median timer."""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict

import torch


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> Dict[str, str]:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"cpus": str(os.cpu_count()), "torch_threads": str(torch.get_num_threads()), "torch": torch.__version__,
            "device": dev, "python": platform.python_version()}


def median_time(fn: Callable[[], object], *, repeat: int = 5, warmup: int = 1, sync: bool = False) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peak(n: int = 2048, dtype=torch.float32, device: str = "cpu") -> float:
    """Measured float32 matmul rate in FLOP/s (square n×n products), the physical bound we quote against."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    t = median_time(lambda: a @ b, repeat=5, warmup=2, sync=device != "cpu")
    return 2 * n**3 / t
