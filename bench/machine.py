"""What machine a benchmark ran on, for its JSON and bench/RESULTS.md."""

from __future__ import annotations

import contextlib
import os
import platform


def machine() -> dict:
    memory = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1])
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(memory / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
