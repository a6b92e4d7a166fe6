"""The command line loads torch only for the subcommands that run a model."""

from __future__ import annotations

import subprocess
import sys

import pytest

from model_export.arch_names import ARCH_NAMES
from model_export.architectures import ARCHITECTURES

# Runs the command line in a fresh interpreter and prints the heavy modules it loaded.
PROBE = """
import runpy, sys
sys.argv = ["model_export", *sys.argv[1:]]
try:
    runpy.run_module("model_export", run_name="__main__")
except SystemExit:
    pass
print(sorted(name for name in ("torch", "torchvision", "onnxscript", "pycocotools") if name in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize("arguments", [["--help"], ["synth", "--help"], ["synth", "--out", "{tmp}", "--count", "2", "--seed", "5"]])
def test_help_and_synth_load_no_torch(arguments: list[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    argv = [argument.format(tmp=tmp_path / "data") for argument in arguments]
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120, check=False)
    assert result.stderr.strip().splitlines()[-1] == "[]", result.stderr


def test_the_command_line_offers_every_architecture_there_is() -> None:
    assert set(ARCH_NAMES) == set(ARCHITECTURES)
