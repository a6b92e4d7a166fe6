"""The one GPU detection: a driver's nvidia-smi on the PATH and a /dev/nvidiaN device, shown with stand-ins for both."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.gpu import gpu_names, gpu_problem


def _nvidia_smi(directory: Path, output: str = "NVIDIA Test GPU") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    program = directory / "nvidia-smi"
    program.write_text(f"#!/bin/sh\necho '{output}'\n")
    program.chmod(0o755)
    return directory


def test_a_gpu_needs_nvidia_smi_and_a_device_node(tmp_path: Path) -> None:
    devices = tmp_path / "dev"
    devices.mkdir()
    (devices / "nvidia0").touch()
    assert gpu_problem(devices, str(_nvidia_smi(tmp_path / "bin"))) is None


def test_without_nvidia_smi_the_reason_says_so(tmp_path: Path) -> None:
    (tmp_path / "nvidia0").touch()
    assert gpu_problem(tmp_path, str(tmp_path / "empty-bin")) == "no NVIDIA GPU: the driver's nvidia-smi is not on the PATH"


def test_the_control_device_alone_is_no_gpu(tmp_path: Path) -> None:
    (tmp_path / "nvidiactl").touch()
    (tmp_path / "nvidia-uvm").touch()
    problem = gpu_problem(tmp_path, str(_nvidia_smi(tmp_path / "bin")))
    assert problem is not None and f"no {tmp_path}/nvidia[0-9]* device" in problem


def test_any_numbered_device_counts(tmp_path: Path) -> None:
    (tmp_path / "nvidia3").touch()
    assert gpu_problem(tmp_path, str(_nvidia_smi(tmp_path / "bin"))) is None


def test_gpu_names_come_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{_nvidia_smi(tmp_path, 'NVIDIA H200')}{os.pathsep}{os.environ['PATH']}")
    assert gpu_names() == ["NVIDIA H200"]
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert gpu_names() == []
