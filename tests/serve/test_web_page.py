"""The web page at / in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium):
a person uploads a photo, the score and the heatmap overlay appear; the test saves a screenshot. The API docs
at /docs and /redoc render too. The browser resolves no host but 127.0.0.1: every page must work offline."""

import base64
import os
import re
import shutil

import pytest

from ..conftest import DATA, REPO

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
PHOTO = DATA / "photos" / "sklearn" / "china.jpg"
SCREENSHOT_DIR = REPO / "runs" / "screenshots"


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("SPOT_REQUIRE_TOOLS"):  # CI installs chromium: there a missing browser is a failure
            pytest.fail("chromium/chromedriver missing: apt-get install chromium chromium-driver")
        pytest.skip("chromium/chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1000,1000",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):  # an air-gapped host  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_upload_shows_score_and_overlay_and_saves_screenshot(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server.url}/")
    assert browser.title == "spot-artifacts"
    browser.find_element(By.ID, "file").send_keys(str(PHOTO))
    overlay = WebDriverWait(browser, 60).until(ec.visibility_of_element_located((By.ID, "overlay")))
    score = browser.find_element(By.ID, "score").text
    assert score.startswith("artifact score ") and ", peak " in score and "tiles" in score, score
    # the overlay is a real PNG at the photo's own size (640 x 427), decoded by the browser
    src = overlay.get_attribute("src")
    assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", overlay) == [
        640,
        427,
    ]
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOT_DIR / "web-page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_a_large_photo_is_scored_downscaled_and_said_so_with_the_overlay_at_full_size(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server.url}/")
    browser.find_element(By.ID, "file").send_keys(str(DATA / "photos" / "debian_mate_nature" / "Aqua.jpg"))
    overlay = WebDriverWait(browser, 60).until(ec.visibility_of_element_located((By.ID, "overlay")))
    score = browser.find_element(By.ID, "score").text
    assert re.search(r"tiles at \d+x\d+ of 2560x1600\)$", score), score
    size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", overlay)
    assert size == [2560, 1600]


def test_bad_file_shows_the_servers_error(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    text = tmp_path / "notes.png"
    text.write_bytes(b"this is not an image")
    browser.get(f"{server.url}/")
    browser.find_element(By.ID, "file").send_keys(str(text))
    WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "score").text.startswith("Error:"))
    # the server's message, and the request ID its log names the request by
    assert re.fullmatch(r"Error: .*notes\.png.* \(request [0-9a-f]{32}\)", browser.find_element(By.ID, "score").text)
    assert not browser.find_element(By.ID, "overlay").is_displayed()


def swagger_lists_the_routes(browser) -> bool:
    paths = {e.text for e in browser.find_elements("css selector", ".opblock-summary-path")}
    return {"/features", "/spot", "/v2/models/{model_name}/infer"} <= paths


def redoc_lists_the_routes(browser) -> bool:
    menu = browser.find_elements("css selector", "[role=menuitem]")
    return len(menu) > 5 and "/features" in browser.find_element("tag name", "body").text


@pytest.mark.parametrize("page, rendered", [("docs", swagger_lists_the_routes), ("redoc", redoc_lists_the_routes)])
def test_api_docs_render_offline(browser, server, page, rendered):
    """Both documentation pages load their scripts from the server itself, not a CDN: before fastapi-offline
    /docs came up blank on a host without internet."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server.url}/{page}")
    WebDriverWait(browser, 30).until(rendered)
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOT_DIR / f"{page}.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
