"""Whether this machine has an NVIDIA GPU: one answer for the service, the engine build, the tests and the benchmarks.

Only files and programs are looked at (no CUDA library is loaded), so the answer
is cheap and safe on a machine without a driver. A GPU counts as present when
the driver's ``nvidia-smi`` is on the PATH and a ``/dev/nvidiaN`` device node
exists: inside a container, the second is what the NVIDIA runtime mounts for a
GPU handed to it (``/dev/nvidiactl`` alone is not a GPU).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

DEVICE_GLOB = "nvidia[0-9]*"


def gpu_problem(device_dir: Path = Path("/dev"), search_path: str | None = None) -> str | None:
    """Why no NVIDIA GPU is usable here, as a sentence; None when one is.

    ``device_dir`` and ``search_path`` (a PATH string) default to the machine's own.
    """
    if shutil.which("nvidia-smi", path=search_path) is None:
        return "no NVIDIA GPU: the driver's nvidia-smi is not on the PATH"
    if not any(device_dir.glob(DEVICE_GLOB)):
        return f"no NVIDIA GPU: no {device_dir / DEVICE_GLOB} device (is the GPU passed to this container?)"
    return None


def has_gpu() -> bool:
    return gpu_problem() is None


def gpu_names() -> list[str]:
    """The NVIDIA GPUs' names as nvidia-smi reports them (``NVIDIA H100 80GB HBM3``); none where it cannot tell."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []


if __name__ == "__main__":
    # ``python -m service.gpu``: exits 2 with the reason where there is no GPU (make gpu-check's first step; stdlib only).
    import sys

    problem = gpu_problem()
    print(problem or f"NVIDIA GPU: {', '.join(gpu_names()) or 'present'}", file=sys.stderr if problem else sys.stdout)
    sys.exit(2 if problem else 0)
