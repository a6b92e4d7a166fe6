"""Shared by the deployment tests: the repository, the validators (installed by deploy/install-test-tools.sh)
and the check that environment variables are real settings."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import ValidationError

from service.settings import ENV_PREFIX, Settings

REPO = Path(__file__).resolve().parents[2]
INSTALL_HINT = "run deploy/install-test-tools.sh (it installs the deployment validators into .venv and Debian's prometheus)"


def require_tool(name: str) -> str:
    """The path of a command-line tool, from the virtualenv or PATH; fails (not skips) when it is missing."""
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        pytest.fail(f"{name} is not installed: {INSTALL_HINT}", pytrace=False)
    return found


def require_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        pytest.fail(f"the Python package {name} is not installed: {INSTALL_HINT}", pytrace=False)


def load_yaml_all(path: Path) -> list[Any]:
    """The YAML documents of a file (PyYAML, which install-test-tools.sh installs, is not a project dependency)."""
    yaml = require_module("yaml")
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def load_yaml(relative: str | Path) -> Any:
    return load_yaml_all(REPO / relative)[0]


def check_settings_env(env: dict[str, str], where: str) -> None:
    """Every DETECTOR_* variable names a field of service.settings.Settings and holds a value it accepts."""
    fields = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        field = name[len(ENV_PREFIX) :].lower()
        assert field in Settings.model_fields, f"{where}: {name} is not a setting of service.settings.Settings"
        # Paths inside the image do not exist here; the names are checked, the values of the others too.
        if field != "model_dir":
            fields[field] = value
    try:
        Settings.model_validate({"model_dir": REPO / "tests" / "deploy" / "no-such-package", **fields})
    except ValidationError as error:
        bad = [e for e in error.errors() if e["loc"] != ("model_dir",)]
        assert not bad, f"{where}: values the service refuses: {bad}"
