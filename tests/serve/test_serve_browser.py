"""End-to-end: the web page in headless Chromium, driven through chromedriver's W3C WebDriver HTTP API.

No browser download and no extra package: Debian's ``chromium`` + ``chromium-driver`` (``make test``
installs them) and plain httpx requests to chromedriver (POST /session, /url, /elements, /click, /value).
The service runs under uvicorn on a free loopback port in a thread.
"""
import shutil
import socket
import subprocess
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver; `make test` does it)",
)
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver element reference key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(fn, timeout=30.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def server(digits_index):
    import uvicorn

    from deepmetric.serve.app import create_app

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(digits_index, device="cpu"), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_until(lambda: srv.started, what="uvicorn to start")
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


class WebDriver:
    """The few W3C WebDriver commands this test needs."""

    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=60)
        caps = {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"],
        }}
        self.sid = self.cmd("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]

    def cmd(self, method: str, path: str, body=None):
        r = self.http.request(method, path, json=body)
        value = r.json().get("value")
        if r.status_code != 200:
            raise AssertionError(f"WebDriver {method} {path} -> {r.status_code}: {value}")
        return value

    def s(self, method: str, path: str, body=None):
        return self.cmd(method, f"/session/{self.sid}{path}", body)

    def find_all(self, css: str):
        return [e[ELEMENT] for e in self.s("POST", "/elements", {"using": "css selector", "value": css})]

    def attr(self, element: str, name: str):
        return self.s("GET", f"/element/{element}/attribute/{name}")

    def text(self, css: str) -> str:
        found = self.find_all(css)
        return self.s("GET", f"/element/{found[0]}/text") if found else ""

    def quit(self) -> None:
        try:
            self.s("DELETE", "")
        finally:
            self.http.close()


@pytest.fixture(scope="module")
def browser():
    port = free_port()
    proc = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"

        def ready():
            try:
                return httpx.get(f"{base}/status", timeout=2).json()["value"]["ready"]
            except (httpx.HTTPError, ValueError, KeyError):
                return False

        wait_until(ready, what="chromedriver")
        driver = WebDriver(base)
        yield driver
        driver.quit()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_pick_an_example_then_upload_a_file(server, browser, digits_index, tmp_path):
    from deepmetric.retrieval.index import SearchIndex

    labels = SearchIndex.load(digits_index).labels
    browser.s("POST", "/url", {"url": server + "/"})
    examples = wait_until(lambda: browser.find_all("#examples button"), what="the example gallery items")
    assert len(examples) == 8

    # 1. Pick the first example: the default k=10 tiles appear, the item itself first and marked correct.
    example_id = int(browser.attr(examples[0], "data-id"))
    browser.s("POST", f"/element/{examples[0]}/click", {})
    tiles = wait_until(lambda: browser.find_all("#results .tile"), what="result tiles")
    assert len(tiles) == 10
    assert int(browser.attr(tiles[0], "data-id")) == example_id
    classes = [browser.attr(t, "class") for t in tiles]
    ids = [int(browser.attr(t, "data-id")) for t in tiles]
    # Marks agree with the labels: green exactly for the tiles of the query's class.
    assert classes == ["tile correct" if labels[i] == labels[example_id] else "tile incorrect" for i in ids]
    assert "results share the query's class" in browser.text("#summary")
    assert browser.text(".tile .score").startswith("1.00")
    (tmp_path / "page.png").write_bytes(__import__("base64").b64decode(browser.s("GET", "/screenshot")))

    # 2. Ask for k=4 and upload a gallery image file through the file input.
    k_input = browser.find_all("#k")[0]
    browser.s("POST", f"/element/{k_input}/clear", {})
    browser.s("POST", f"/element/{k_input}/value", {"text": "4"})
    target = 300
    file_input = browser.find_all("#file")[0]
    browser.s("POST", f"/element/{file_input}/value", {"text": str(digits_index / "thumbs" / f"{target:06d}.png")})
    wait_until(lambda: len(browser.find_all("#results .tile")) == 4 and browser.attr(browser.find_all("#results .tile")[0], "data-id") == str(target),
               what="4 tiles for the uploaded image")
    assert "4 results" in browser.text("#status")
    # The example's true class went with the example: the uploaded file is unmarked until a class is chosen
    # (it used to keep the example's class and mark every correct result ✗).
    assert browser.find_all("#results .tile.correct") == [] and browser.find_all("#results .tile.incorrect") == []
    assert browser.s("GET", f"/element/{browser.find_all('#true-class')[0]}/property/value") == ""
    assert "pick the query's true class" in browser.text("#summary")

    # 3. A non-image upload shows the server's error message.
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    browser.s("POST", f"/element/{file_input}/value", {"text": str(bad)})
    message = wait_until(lambda: browser.text("#error"), what="the error message")
    assert "not an image" in message
