"""Deployment fixtures: a small real model package for the service the deployment files describe."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_export.export import ExportConfig, export_package


@pytest.fixture(scope="session")
def small_package(tmp_path_factory: pytest.TempPathFactory, random_model) -> Path:  # type: ignore[no-untyped-def]
    """A random compact model exported as a real package (as tests/service/conftest.py makes it)."""
    package = tmp_path_factory.mktemp("deploy") / "package"
    loaded = random_model("fasterrcnn_compact_fpn", num_classes=4, canvas=(128, 160), seed=3)
    config = ExportConfig(
        name="shapes", version="7", max_batch=8, max_detections=30, score_threshold=0.3, parity_images=2, parity_batches=(2,)
    )
    export_package(loaded, package, config)
    return package


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What the image tests measured (their record_property values named image_*), shown whatever -s or -q say."""
    for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
        for name, value in getattr(report, "user_properties", []):
            if name.startswith("image_"):
                terminalreporter.write_line(f"{name}: {value}")
