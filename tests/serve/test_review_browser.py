"""The review page in a real headless Chromium (Debian's chromium + chromium-driver, through Selenium) against a real
server on loopback: open an image and see its boxes, raise a class's threshold slider (fewer boxes), reject one, draw
one with the mouse, look at a Grad-CAM, export, and find exactly the kept and drawn boxes in the exported COCO."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("selenium", reason="needs selenium (in the dev extra: pip install -e '.[dev]')")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402
from test_review import THRESHOLD, review_detector, review_folder, running  # noqa: E402  (tests/serve is on sys.path)

from retinadet.data.discover import load_splits  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or next((p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
                                               if os.path.isfile(p)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")


def wait(fn, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def browser(tmp_path, monkeypatch):
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Nothing but loopback: a proxy that does not exist for everything else, and no name resolves.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900",
                "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_review_page_in_chromium(browser, tmp_path, monkeypatch):
    from retinadet.serve.app import create_app

    folder = review_folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # exports go to tmp_path/runs/review/
    js = browser.execute_script
    idle = "const done = arguments[arguments.length - 1]; window.review.idle().then(() => done(true));"
    kept_rects = "return document.querySelectorAll('#overlay rect.det.kept').length"
    with running(create_app(review_detector(), review_dir=folder, batch_wait_ms=5)) as client:
        origin = f"http://127.0.0.1:{client.port}"
        browser.get(origin + "/")
        wait(lambda: js("return !!(window.review && window.review.ready && window.review.opened)"), "the page to load")
        queue = [li.get_attribute("data-path") for li in browser.find_elements(By.CSS_SELECTOR, "#queue li")]
        assert queue == ["a.png", "c.jpg", "sub/b.png"]

        # Open c.jpg from the queue, then a.png: each shows the boxes at or above the stored thresholds.
        for name in ("c.jpg", "a.png"):
            browser.find_element(By.CSS_SELECTOR, f"#queue li[data-path='{name}']").click()
            wait(lambda n=name: js("return window.review.opened") == n, f"{name} to open")
            dets = client.get(f"/api/review/detections?path={name}")[1]["detections"]
            shown = [d for d in dets if d["score"] >= THRESHOLD]
            assert js(kept_rects) == len(shown) > 0, name
        assert js("return document.getElementById('photo').naturalWidth") == 128

        # Raise the first class's threshold with the keyboard, as a person would: fewer boxes.
        slider = browser.find_element(By.ID, "threshold-0")
        slider.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
        t0 = js("return window.review.thresholds[0]")
        assert t0 > THRESHOLD
        thresholds = [t0, THRESHOLD]
        now = [d for d in dets if d["score"] >= thresholds[d["label"]]]
        assert 0 < js(kept_rects) == len(now) < len(shown)

        # Reject one (picked in the list, then the button), and draw a missed "debris" box with the mouse.
        target = now[0]
        browser.find_elements(By.CSS_SELECTOR, "#detections li")[target["index"]].click()
        browser.find_element(By.ID, "reject").click()
        browser.execute_async_script(idle)
        assert js(kept_rects) == len(now) - 1
        assert "rejected" in browser.find_element(By.CSS_SELECTOR, f"#overlay rect[data-index='{target['index']}']").get_attribute("class")
        Select(browser.find_element(By.ID, "draw-class")).select_by_visible_text("debris")
        browser.find_element(By.ID, "draw").click()
        svg = browser.find_element(By.ID, "overlay")
        size = svg.size
        scale = size["width"] / 128
        assert scale > 2  # the 128 px image is scaled up to fill the viewer
        start, end = (10, 12), (60, 50)  # image pixels
        ActionChains(browser).move_to_element_with_offset(svg, int(start[0] * scale - size["width"] / 2),
                                                          int(start[1] * scale - size["height"] / 2)) \
            .click_and_hold().move_by_offset(int((end[0] - start[0]) * scale), int((end[1] - start[1]) * scale)) \
            .release().perform()
        browser.execute_async_script(idle)
        drawn = js("return window.review.current.drawn")
        assert len(drawn) == 1 and drawn[0]["label"] == 1
        np.testing.assert_allclose(drawn[0]["box"], [*start, *end], atol=1.0)
        assert len(browser.find_elements(By.CSS_SELECTOR, "#overlay rect.drawn")) == 1

        # Grad-CAM of a kept detection replaces the image with its overlay, and back.
        browser.find_elements(By.CSS_SELECTOR, "#detections li")[now[1]["index"]].click()
        browser.find_element(By.ID, "cam").click()
        wait(lambda: js("return window.review.cam !== null && document.getElementById('photo').src.startsWith('blob:')"),
             "the Grad-CAM overlay")
        browser.find_element(By.ID, "show-image").click()

        # Export on the server; the folder loads as `retinadet train --data` reads it.
        name = browser.find_element(By.ID, "export-name")
        name.clear()
        name.send_keys("browser")
        browser.find_element(By.ID, "export").click()
        result = wait(lambda: js("return window.review.lastExport || null"), "the export")
        assert result["images"] == 1 and result["boxes"] == len(now) - 1 + 1
        assert "browser" in browser.find_element(By.ID, "export-result").text
        ds = load_splits(result["folder"])["train"]
        (record,) = ds.records
        assert record.path.name == "a.png" and ds.class_names == ["cell", "debris"]
        want = sorted([tuple(d["box"]) + (d["label"],) for d in now[1:]] + [tuple(drawn[0]["box"]) + (1,)])
        got = sorted(tuple(b) + (lb,) for b, lb in zip(record.boxes.tolist(), record.labels.tolist()))
        np.testing.assert_allclose(np.array(got), np.array(want), atol=2e-3)

        # Nothing but this server was asked for anything, and the page logged no error.
        fetched = js("return performance.getEntriesByType('resource').map(e => e.name)")
        assert fetched and all(u.startswith(origin) or u.startswith("blob:") for u in fetched), fetched
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
