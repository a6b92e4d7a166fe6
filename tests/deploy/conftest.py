"""Deployment tests' report: what the image tests measured. (The small model package is tests/conftest.py's.)"""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What the image tests measured (their record_property values named image_*), shown whatever -s or -q say."""
    for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
        for name, value in getattr(report, "user_properties", []):
            if name.startswith("image_"):
                terminalreporter.write_line(f"{name}: {value}")
