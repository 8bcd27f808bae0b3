"""What a benchmark ran on, and how busy the machine was (shared by the benchmarks of issue 22)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> float | None:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
        kb = next(int(ln.split()[1]) for ln in lines if ln.startswith("MemTotal"))
        return round(kb / 2**20, 1)
    except (OSError, StopIteration):
        return None


def load() -> list[float]:
    """1, 5 and 15 minute load averages (processes wanting a CPU)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict:
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": ram_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_at_start": load(),
    }
