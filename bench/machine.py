"""What machine a benchmark ran on, recorded beside its figures."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.gpu import gpu_names


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gb() -> float | None:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    total = next((line for line in lines if line.startswith("MemTotal:")), None)
    return round(int(total.split()[1]) / 1024**2, 1) if total else None


def versions(packages: tuple[str, ...] = ("torch", "torchvision", "fastapi", "uvicorn", "httpx", "pillow")) -> dict[str, str]:
    """Installed versions, read from the package metadata (nothing is imported)."""
    found = {}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def describe() -> dict[str, Any]:
    import numpy
    import onnxruntime

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": memory_gb(),
        "gpu": ", ".join(gpu_names()),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "providers": onnxruntime.get_available_providers(),
        "numpy": numpy.__version__,
        "versions": versions(),
        "platform": platform.platform(),
        # Another busy process skews every figure: the load when the run began says whether one was there.
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }


def _cpu_seconds() -> tuple[float, float]:
    """(the machine's busy CPU seconds since boot, hypervisor steal included; this process's and its waited-for
    children's CPU seconds). The first is 0 where /proc/stat does not tell."""
    own = sum(usage.ru_utime + usage.ru_stime for usage in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0, own
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), own


@dataclass
class OtherWork:
    """How much of the machine's CPU time others took while a run measured: other processes, and a hypervisor's steal.

    A benchmark's figures assume the cores are its own; this says how far they were not.
    """

    started: float = field(default_factory=time.monotonic)
    cpu: tuple[float, float] = field(default_factory=_cpu_seconds)

    def share(self) -> float | None:
        """Others' CPU time since ``started``, as a share of all the cores' time; None where /proc/stat does not tell.

        This process's server and load generator children count as its own once they have ended.
        """
        busy, own = _cpu_seconds()
        wall = (time.monotonic() - self.started) * (os.cpu_count() or 1)
        if not self.cpu[0] or wall <= 0:
            return None
        return round(min(max((busy - self.cpu[0] - (own - self.cpu[1])) / wall, 0.0), 1.0), 3)
