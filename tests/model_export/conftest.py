from __future__ import annotations

from pathlib import Path

import pytest

from model_export.synth import SynthConfig, write_dataset


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 synthetic images, written once for the session."""
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, SynthConfig(count=16, seed=7))
    return root
