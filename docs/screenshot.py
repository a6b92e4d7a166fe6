"""The README's screenshot (docs/page.png): the page at / on the default model, with a synthetic scene's detections.

    .venv/bin/python -m docs.screenshot [PATH]

Needs the browser tools (deploy/install-browser-tools.sh); the scene is one the default model never saw in training.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.conftest import DEFAULT_MODEL_DIR
from tests.service.helpers import serving
from tests.service.test_page import Page, browser_problem, scene_file, start_browser


def screenshot(path: Path, package: Path) -> None:
    problem = browser_problem()
    if problem is not None:
        raise SystemExit(problem)
    driver = start_browser()
    try:
        with serving(package) as server, tempfile.TemporaryDirectory() as directory:
            page = Page(driver, server.url)
            page.wait_for_model()
            page.upload(scene_file(Path(directory), seed=77, index=4))
            driver.save_screenshot(str(path))
    finally:
        driver.quit()
    print(f"wrote {path}")


if __name__ == "__main__":
    screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/page.png").resolve(), DEFAULT_MODEL_DIR / "package")
