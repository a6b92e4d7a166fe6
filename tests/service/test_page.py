"""The page at /, served by a real server and driven in headless Chromium through Selenium.

The browser tests (marked ``browser``) need Debian's chromium and chromium-driver and the selenium package
(deploy/install-browser-tools.sh); they skip where those are missing, and fail instead where CI is set.

``python -m docs.screenshot`` takes the README's screenshot with the same helpers.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.servers import ServerProcess
from model_export.synth import generate_image
from service import render
from tests.service.helpers import png_bytes

KEY = "page-test-key-0123456789"
SCENE_QUERY = {"score_threshold": "0.05", "iou_threshold": "0.5"}  # the random test model finds objects in a scene
WAIT_S = 60
CSS = "css selector"  # selenium's By.CSS_SELECTOR, without importing selenium where it may be missing


# The browser


def browser_problem() -> str | None:
    """Why no browser can be driven here; None where one can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (deploy/install-browser-tools.sh)"
    if chromium_binary() is None:
        return "no chromium on PATH (deploy/install-browser-tools.sh installs Debian's chromium)"
    if shutil.which("chromedriver") is None:
        return "no chromedriver on PATH (deploy/install-browser-tools.sh installs Debian's chromium-driver)"
    return None


def chromium_binary() -> str | None:
    return next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None)


def skip_or_fail(reason: str) -> None:
    """Skips where a developer has no browser; in CI (CI set) a missing browser is a failure."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def start_browser() -> Any:
    """Headless Chromium through the chromedriver on PATH: nothing is downloaded (the machine may be offline)."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium_binary() or ""
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1100,1300"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")))
    driver.set_page_load_timeout(WAIT_S)
    return driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    problem = browser_problem()
    if problem is not None:
        skip_or_fail(problem)
    driver = start_browser()
    yield driver
    driver.quit()


class Page:
    """The page at / in the browser, read the way a user sees it."""

    def __init__(self, driver: Any, url: str) -> None:
        self.driver = driver
        driver.get(f"{url}/")

    def find(self, css: str) -> Any:
        return self.driver.find_element(CSS, css)

    def find_all(self, css: str) -> list[Any]:
        return list(self.driver.find_elements(CSS, css))

    def wait(self, condition: Callable[[], object], what: str) -> None:
        from selenium.webdriver.support.wait import WebDriverWait

        WebDriverWait(self.driver, WAIT_S).until(lambda _: condition(), message=f"the page never showed {what}")

    def answers(self) -> int:
        return int(self.find("#status").get_attribute("data-answers") or 0)

    def type_into(self, css: str, text: str) -> None:
        field = self.find(css)
        field.clear()
        field.send_keys(text)

    def upload(self, path: Path) -> None:
        """Picks the file in the page's file input, and waits for the answer it gets."""
        before = self.answers()
        self.find("#file").send_keys(str(path))
        self.wait(lambda: self.answers() > before, f"an answer for {path.name}")

    def wait_for_model(self) -> None:
        self.wait(lambda: "version" in self.find("#model").text, "the model's name and version")

    def error(self) -> str:
        return str(self.find("#error").text)


def scene_file(directory: Path, seed: int = 5, index: int = 1) -> Path:
    image, _ = generate_image(seed=seed, index=index)
    path = directory / f"scene-{seed}-{index}.png"
    path.write_bytes(png_bytes(image))
    return path


def detect(http: httpx.Client, path: Path, headers: dict[str, str] | None = None, **query: str) -> httpx.Response:
    return http.post(
        "/detect", params=query, content=path.read_bytes(), headers={"Content-Type": "application/octet-stream", **(headers or {})}
    )


def drawn_boxes(page: Page) -> list[dict[str, Any]]:
    """The SVG rectangles over the image, in the answer's order (data-index): their geometry and colour, as the browser holds them."""
    names = ("x", "y", "width", "height")
    rects = sorted(page.find_all("#overlay rect.box"), key=lambda rect: int(rect.get_attribute("data-index")))
    return [{**{name: float(rect.get_attribute(name)) for name in names}, "stroke": rect.get_attribute("stroke")} for rect in rects]


def table_rows(page: Page) -> list[list[str]]:
    return [[str(cell.text) for cell in row.find_elements(CSS, "td")] for row in page.find_all("#detections tbody tr")]


def expected_boxes(answer: dict[str, Any]) -> list[dict[str, Any]]:
    boxes = [(d["box"], "rgb({}, {}, {})".format(*render.colour(d["label"]))) for d in answer["detections"]]
    return [{"x": b["x1"], "y": b["y1"], "width": b["x2"] - b["x1"], "height": b["y2"] - b["y1"], "stroke": stroke} for b, stroke in boxes]


def expected_rows(answer: dict[str, Any]) -> list[list[str]]:
    return [
        [str(index), d["class_name"], f"{d['score']:.3f}", *(f"{d['box'][name]:.1f}" for name in ("x1", "y1", "x2", "y2"))]
        for index, d in enumerate(answer["detections"], start=1)
    ]


def set_scene_thresholds(page: Page) -> None:
    page.type_into("#score", SCENE_QUERY["score_threshold"])
    page.type_into("#iou", SCENE_QUERY["iou_threshold"])


# Served without a key, with the rest of the API still behind it (no browser needed)


def test_the_page_and_its_files_need_no_key_and_the_api_still_does(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(DETECTOR_API_KEYS=KEY)
    http = server.wait_ready(headers={"X-API-Key": KEY})
    with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as anonymous:
        page = anonymous.get("/")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert 'href="/docs"' in page.text
        for path, media_type in (("/static/page.js", "text/javascript"), ("/static/page.css", "text/css")):
            asset = anonymous.get(path)
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(media_type), path
        for path in ("/static/other.js", "/v1/models/default"):
            assert anonymous.get(path).status_code == 401, path
        assert anonymous.post("/detect", content=b"x", headers={"Content-Type": "image/png"}).status_code == 401
    assert "/" not in http.get("/openapi.json").json()["paths"], "the page is not part of the API"


def test_the_page_calls_only_the_public_api_of_its_own_server() -> None:
    script = (Path(render.__file__).parent / "static" / "page.js").read_text()
    assert set(re.findall(r"fetch\(\s*[`\"']([^`\"'?$]+)", script)) == {"/detect", "/v1/models/default"}
    assert len(re.findall(r"fetch\(", script)) == 2
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", script), "nothing from elsewhere: the service may run offline"


# In the browser


@pytest.mark.browser
def test_the_page_draws_detects_boxes_and_lists_them(browser: Any, server: ServerProcess, http: httpx.Client, tmp_path: Path) -> None:
    page = Page(browser, server.url)
    page.wait_for_model()
    assert "shapes" in page.find("#model").text and "version 7" in page.find("#model").text
    assert page.find("a[href='/docs']").is_displayed()
    set_scene_thresholds(page)
    scene = scene_file(tmp_path)
    page.upload(scene)
    assert page.find("#status").get_attribute("data-state") == "done", page.error()
    answer = detect(http, scene, **SCENE_QUERY).json()
    assert answer["detections"], "the scene should give detections"
    assert drawn_boxes(page) == expected_boxes(answer)
    assert table_rows(page) == expected_rows(answer)
    summary = page.find("#summary").text
    assert (
        f"shapes version 7: {len(answer['detections'])} detection(s) in {answer['image']['width']} × {answer['image']['height']} px"
        in summary
    )
    assert "inference" in summary and "total" in summary
    # The overlay lies exactly over the image as shown.
    image, overlay = (
        browser.execute_script("return arguments[0].getBoundingClientRect().toJSON()", page.find(css)) for css in ("#picture", "#overlay")
    )
    assert all(abs(image[side] - overlay[side]) < 1 for side in ("left", "top", "width", "height")), (image, overlay)
    assert (
        image["width"] > 0 and browser.execute_script("return arguments[0].naturalWidth", page.find("#picture")) == answer["image"]["width"]
    )

    # One class left out: the page asks for the others, and shows what /detect answers for them.
    kept = sorted({d["class_name"] for d in answer["detections"]})
    dropped = kept[0]
    before = page.answers()
    page.find(f"#classes input[value='{dropped}']").click()
    page.wait(lambda: page.answers() > before, "an answer after leaving a class out")
    others = [name for name in ("class1", "class2", "class3") if name != dropped]
    filtered = detect(http, scene, classes=",".join(others), **SCENE_QUERY).json()
    assert table_rows(page) == expected_rows(filtered) and drawn_boxes(page) == expected_boxes(filtered)
    assert all(row[1] != dropped for row in table_rows(page))
    page.find(f"#classes input[value='{dropped}']").click()  # back to every class, for the screenshot
    page.wait(lambda: len(table_rows(page)) == len(answer["detections"]), "every class again")

    screenshot = Path(os.environ.get("PAGE_SCREENSHOT") or tmp_path / "page.png")
    assert browser.save_screenshot(str(screenshot)) and screenshot.read_bytes().startswith(b"\x89PNG")


@pytest.mark.browser
def test_the_page_shows_the_servers_message_for_a_file_that_is_not_an_image(
    browser: Any, server: ServerProcess, http: httpx.Client, tmp_path: Path
) -> None:
    page = Page(browser, server.url)
    page.wait_for_model()
    notes = tmp_path / "notes.txt"
    notes.write_text("these are notes, not an image\n")
    page.upload(notes)
    problem = detect(http, notes).json()
    assert problem["status"] == 422
    assert page.find("#status").get_attribute("data-state") == "error"
    assert problem["detail"] in page.error() and "422" in page.error()
    assert not page.find_all("#overlay rect.box") and not page.find("#detections").is_displayed()


@pytest.mark.browser
def test_the_page_asks_for_a_key_and_shows_the_servers_message_for_a_wrong_one(
    browser: Any, start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server(DETECTOR_API_KEYS=KEY)
    http = server.wait_ready(headers={"X-API-Key": KEY})
    without_key = http.get("/v1/models/default", headers={"X-API-Key": ""}).json()["detail"]
    wrong_key = http.get("/v1/models/default", headers={"X-API-Key": "not-the-key"}).json()["detail"]
    assert without_key != wrong_key

    page = Page(browser, server.url)
    page.wait(lambda: page.find("#key-form").is_displayed() and without_key in page.error(), "that it needs a key")
    page.type_into("#api-key", "not-the-key")
    page.find("#use-key").click()
    page.wait(lambda: wrong_key in page.error(), "that the key is wrong")

    page.type_into("#api-key", KEY)
    page.find("#use-key").click()
    page.wait_for_model()
    assert page.error() == ""
    set_scene_thresholds(page)
    scene = scene_file(tmp_path)
    page.upload(scene)
    assert table_rows(page) == expected_rows(detect(http, scene, **SCENE_QUERY).json())

    # The key goes bad (rotated, say) while the page is open: /detect's own refusal is shown.
    page.type_into("#api-key", "not-the-key")
    page.find("#use-key").click()
    page.wait(lambda: wrong_key in page.error(), "that the key is wrong")
    page.upload(scene)
    assert page.find("#status").get_attribute("data-state") == "error"
    assert wrong_key in page.error() and "401" in page.error()
    assert detect(http, scene, headers={"X-API-Key": "not-the-key"}).json()["detail"] == wrong_key
    browser.execute_script("sessionStorage.clear()")
