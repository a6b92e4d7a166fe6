"""The command line loads torch only for the subcommands that run a model; the engine build and the parity check load
neither torch nor pycocotools."""

from __future__ import annotations

import subprocess
import sys

import pytest

from model_export.arch_names import ARCH_NAMES
from model_export.architectures import ARCHITECTURES

HEAVY = ("torch", "torchvision", "onnxscript", "pycocotools")
# Prints, as the last line of stderr, the heavy modules that this interpreter has loaded.
REPORT = f"print(sorted(name for name in {HEAVY!r} if name in sys.modules), file=sys.stderr)"
# Runs the command line in a fresh interpreter, then reports.
PROBE = f"""
import runpy, sys
sys.argv = ["model_export", *sys.argv[1:]]
try:
    runpy.run_module("model_export", run_name="__main__")
except SystemExit:
    pass
{REPORT}
"""


def _heavy_modules_after(code: str, *argv: str) -> tuple[str, str]:
    """The heavy modules loaded by ``code`` run in a fresh interpreter, and its stderr."""
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120, check=False)
    return result.stderr.strip().splitlines()[-1], result.stderr


@pytest.mark.parametrize("arguments", [["--help"], ["synth", "--help"], ["synth", "--out", "{tmp}", "--count", "2", "--seed", "5"]])
def test_help_and_synth_load_no_torch(arguments: list[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    argv = [argument.format(tmp=tmp_path / "data") for argument in arguments]
    loaded, stderr = _heavy_modules_after(PROBE, *argv)
    assert loaded == "[]", stderr


# With a directory that holds no package, build-engine loads model_export.engine and stops with exit 2, on any host.
@pytest.mark.parametrize("arguments", [["build-engine", "--help"], ["build-engine", "--package", "{tmp}"]])
def test_build_engine_loads_neither_torch_nor_pycocotools(arguments: list[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    loaded, stderr = _heavy_modules_after(PROBE, *[argument.format(tmp=tmp_path) for argument in arguments])
    assert loaded == "[]", stderr


@pytest.mark.parametrize("module", ["model_export.package", "model_export.parity", "model_export.engine", "model_export.config"])
def test_the_package_runner_parity_check_and_engine_build_load_neither_torch_nor_pycocotools(module: str) -> None:
    loaded, stderr = _heavy_modules_after(f"import sys, {module}\n{REPORT}")
    assert loaded == "[]", stderr


def test_the_command_line_offers_every_architecture_there_is() -> None:
    assert set(ARCH_NAMES) == set(ARCHITECTURES)
