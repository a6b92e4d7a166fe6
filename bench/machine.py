"""What machine a benchmark ran on, recorded beside its figures."""

from __future__ import annotations

import importlib.metadata
import os
import platform
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
