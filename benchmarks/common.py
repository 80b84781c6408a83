"""Helpers every benchmark uses: a description of the machine, and a timer."""
from __future__ import annotations

import os
import platform
import time


def machine() -> str:
    """One line naming the CPU, core count and library versions, for RESULTS.md."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    line = f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
    try:
        import torch

        line += f", torch {torch.__version__}"
        if torch.cuda.is_available():
            line += f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return line


class Timer:
    """`with Timer() as t: ...` then `t.seconds`."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
