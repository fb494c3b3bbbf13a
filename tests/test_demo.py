"""`jaxrobust demo`: the JSON API (request checks, 4xx answers, serving on after bad
requests, steps toward and away from a class, determinism), the command line's bad input,
and (marked slow) the page end to end in headless Chromium against `jaxrobust demo RUN_DIR`.

The default-suite tests share one server on a free port over an untrained MLP (hidden 16)
of the digits' shape: two small compilations."""

from __future__ import annotations

import http.client
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrobust.cli import main
from jaxrobust.demo.model import MAX_STEPS, DemoModel, tiny_model
from jaxrobust.demo.server import RequestError, make_server, parse_step, serve_in_thread

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(digits_test):
    x, y = digits_test
    srv = make_server(tiny_model(x, y), "127.0.0.1", 0)
    thread = serve_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def request(srv, method, path, body=None, headers=None):
    """(status, parsed JSON or raw bytes, response headers) of one request."""
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        if isinstance(body, dict | list):
            body = json.dumps(body).encode()
        h = {"Content-Type": "application/json"} if body is not None else {}
        h.update(headers or {})
        conn.request(method, path, body=body, headers=h)
        res = conn.getresponse()
        data = res.read()
        if res.getheader("Content-Type", "").startswith("application/json"):
            data = json.loads(data)
        return res.status, data, res
    finally:
        conn.close()


def _image(srv, index=0):
    return [float(v) for v in srv.model.examples[index].reshape(-1)]


def test_page_and_info(server):
    status, page, res = request(server, "GET", "/")
    assert status == 200 and b'src="/static/demo.js"' in page
    assert "script-src 'self'" in res.getheader("Content-Security-Policy")
    for path in ("/static/demo.js", "/static/demo.css"):
        assert request(server, "GET", path)[0] == 200
    assert request(server, "GET", "/favicon.ico")[:2] == (204, b"")
    status, info, _ = request(server, "GET", "/api/info")
    assert status == 200
    assert info["image_shape"] == [8, 8, 1] and info["class_names"] == [str(i) for i in range(10)]
    assert info["max_steps"] == MAX_STEPS and info["max_step_size"] == pytest.approx(8.0)
    # Two test images of each class, each in [0, 1].
    assert info["example_labels"] == [c for c in range(10) for _ in range(2)]
    assert all(len(e) == 64 and 0 <= min(e) and max(e) <= 1 for e in info["examples"])


def test_predict_matches_the_model(server):
    image = _image(server, 3)
    status, out, _ = request(server, "POST", "/api/predict", {"image": image})
    assert status == 200
    expected = server.model.predict(np.asarray(image).reshape(8, 8, 1))
    np.testing.assert_allclose(out["probs"], expected, atol=1e-6)
    assert math.isclose(sum(out["probs"]), 1.0, abs_tol=1e-4)
    assert out["pred"] == int(np.argmax(expected))
    # Nested (H, W, C) lists are the same image.
    nested = np.asarray(image).reshape(8, 8, 1).tolist()
    assert request(server, "POST", "/api/predict", {"image": nested})[1] == out


def test_step_moves_toward_target_and_is_deterministic(server):
    image = _image(server, 0)
    _, before, _ = request(server, "POST", "/api/predict", {"image": image})
    target = int(np.argmin(before["probs"]))
    body = {"image": image, "target": target, "steps": 5, "step_size": 0.3}
    status, out, _ = request(server, "POST", "/api/step", body)
    assert status == 200, out
    trace = out["target_probs"]
    assert len(trace) == 5 and trace[-1] == pytest.approx(out["probs"][target])
    assert trace[0] > before["probs"][target] and trace[-1] > trace[0]
    new, old = np.asarray(out["image"]), np.asarray(image)
    assert new.min() >= 0 and new.max() <= 1
    change = np.linalg.norm(new - old)
    assert 0.1 < change <= 5 * 0.3 + 1e-4  # it moved, by at most steps × step size
    # The same request, the same answer (no randomness anywhere).
    assert request(server, "POST", "/api/step", body)[1] == out
    # One 5-step request = five 1-step requests (the page's "run N" does the latter).
    x = image
    for _ in range(5):
        x = request(server, "POST", "/api/step", {**body, "image": x, "steps": 1})[1]["image"]
    np.testing.assert_allclose(x, out["image"], atol=1e-5)


def test_move_away_lowers_that_class(server):
    image = _image(server, 7)
    _, before, _ = request(server, "POST", "/api/predict", {"image": image})
    cls = before["pred"]
    body = {"image": image, "target": cls, "away": True, "steps": 3, "step_size": 0.3}
    status, out, _ = request(server, "POST", "/api/step", body)
    assert status == 200
    assert out["target_probs"][0] < before["probs"][cls]
    assert out["probs"][cls] < before["probs"][cls]


def test_serves_rgb_images():
    """32×32×3 images (the `shapes` runs' shape): the page's info, the body limit, a step."""
    rng = np.random.default_rng(0)
    model = tiny_model(rng.uniform(size=(20, 32, 32, 3)), np.arange(20) % 10)
    srv = make_server(model, "127.0.0.1", 0, warm_up=False)
    thread = serve_in_thread(srv)
    try:
        info = request(srv, "GET", "/api/info")[1]
        assert info["image_shape"] == [32, 32, 3] and len(info["examples"][0]) == 3072
        assert info["max_step_size"] == pytest.approx(np.sqrt(3072))
        image = rng.uniform(0.3, 0.7, size=3072).round(6).tolist()  # no pixel reaches the box
        body = {"image": image, "target": 4, "steps": 2, "step_size": 1.5}
        status, out, _ = request(srv, "POST", "/api/step", body)
        assert status == 200 and out["target_probs"][1] > out["target_probs"][0]
        one = request(srv, "POST", "/api/step", {**body, "steps": 1})[1]["image"]
        # One step moves the image by the step size (ℓ2), two by at most twice that.
        assert np.linalg.norm(np.subtract(one, image)) == pytest.approx(1.5, rel=1e-3)
        assert 1.5 < np.linalg.norm(np.subtract(out["image"], image)) <= 3.0 + 1e-3
        assert request(srv, "POST", "/api/step", {**body, "image": image[:64]})[0] == 400
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


GOOD = {"target": 3, "steps": 2, "step_size": 0.2, "away": False}
BAD_BODIES = [
    # (body, words the error must contain)
    ([1, 2], "JSON object"),
    ({"target": 1}, "missing field(s) ['image']"),
    ({**GOOD, "image": [0.5] * 63}, "64 numbers"),
    ({**GOOD, "image": [[0.5] * 8] * 8}, "image[0][0] must be a list of length 1"),
    ({**GOOD, "image": [0.5] * 63 + [1.5]}, "value 63 is 1.5: pixel values must be in [0, 1]"),
    ({**GOOD, "image": [-0.01] + [0.5] * 63}, "value 0 is -0.01"),
    ({**GOOD, "image": ["0.5"] * 64}, "value 0 must be a number, got str"),
    ({**GOOD, "image": [True] * 64}, "must be a number, got bool"),
    ({**GOOD, "image": None}, "image must be a list"),
    ({**GOOD, "target": 10}, "target must be in [0, 9], got 10"),
    ({**GOOD, "target": -1}, "target must be in [0, 9]"),
    ({**GOOD, "target": "3"}, "target must be an integer"),
    ({**GOOD, "target": 2.5}, "target must be an integer"),
    ({**GOOD, "target": True}, "target must be an integer"),
    ({**GOOD, "steps": 0}, f"steps must be in [1, {MAX_STEPS}]"),
    ({**GOOD, "steps": MAX_STEPS + 1}, f"steps must be in [1, {MAX_STEPS}]"),
    ({**GOOD, "steps": 10**30}, "steps must be in"),
    ({**GOOD, "step_size": 0}, "step_size must be in (0, 8]"),
    ({**GOOD, "step_size": -0.1}, "step_size must be in (0, 8]"),
    ({**GOOD, "step_size": 9}, "step_size must be in (0, 8]"),
    ({**GOOD, "step_size": "big"}, "step_size must be a finite number"),
    ({**GOOD, "away": "yes"}, "away must be true or false"),
    ({**GOOD, "extra": 1}, "unknown field(s) ['extra']"),
]


@pytest.mark.parametrize(("body", "words"), BAD_BODIES, ids=[w[:30] for _, w in BAD_BODIES])
def test_bad_step_request_gets_400_naming_the_problem(server, body, words):
    if isinstance(body, dict) and "image" not in body and not words.startswith("missing"):
        body = {"image": _image(server), **body}
    status, out, _ = request(server, "POST", "/api/step", body)
    assert status == 400 and out["status"] == 400, out
    assert words in out["error"], out["error"]


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server):
    ok = {"image": _image(server)}
    raw = json.dumps(ok).encode()
    cases = [
        # (method, path, body, extra headers, status, words in the error)
        ("POST", "/api/predict", b"{not json", {}, 400, "not valid JSON"),
        ("POST", "/api/predict", b"\xff\xfe", {}, 400, "not UTF-8"),
        ("POST", "/api/predict", b'{"image": [NaN]}', {}, 400, "NaN"),
        ("POST", "/api/predict", b'{"image": [' + b"9" * 5000 + b"]}", {}, 400, "not valid JSON"),
        ("POST", "/api/predict", raw.replace(b"0.0", b"1e400", 1), {}, 400, "not finite"),
        ("POST", "/api/predict", raw, {"Content-Length": "9999999"}, 413, "exceeds the limit"),
        ("POST", "/api/predict", b"[" * 30_000 + b"]" * 30_000, {}, 400, "nested too deeply"),
        ("POST", "/api/predict", raw, {"Content-Type": "text/plain"}, 415, "application/json"),
        ("POST", "/api/predict", raw, {"Content-Length": "-5"}, 400, "bad Content-Length"),
        ("POST", "/api/other", raw, {}, 404, "no API"),
        ("GET", "/api/step", None, {}, 405, "takes POST"),
        ("PUT", "/api/step", raw, {}, 405, "not allowed"),
        ("GET", "/../jaxrobust/demo/server.py", None, {}, 404, "no page"),
        ("GET", "/static/../server.py", None, {}, 404, "no page"),
        ("GET", "/static/%2e%2e/model.py", None, {}, 404, "no page"),
        ("GET", "/", None, {"Host": "attacker.example:80"}, 403, "loopback"),
    ]
    for method, path, body, headers, status, words in cases:
        got, out, _ = request(server, method, path, body, headers)
        assert (got, words in out["error"]) == (status, True), (path, body and body[:40], out)
        # ... and the next good request is answered.
        got, out, _ = request(server, "POST", "/api/predict", ok)
        assert got == 200 and len(out["probs"]) == 10


def test_a_stalled_body_gets_408_and_frees_the_server(server, monkeypatch):
    import socket

    from jaxrobust.demo import server as demo_server

    monkeypatch.setattr(demo_server._Handler, "timeout", 0.3)
    with socket.create_connection(server.server_address[:2], timeout=30) as sock:
        sock.sendall(
            b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"ima'
        )
        answer = b""
        while chunk := sock.recv(65536):  # the server closes the connection after it
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 408") and "did not arrive within 0.3 s" in answer
    monkeypatch.undo()
    assert request(server, "POST", "/api/predict", {"image": _image(server)})[0] == 200


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
_MODEL = DemoModel(
    logits_fn=lambda x: x.reshape(x.shape[0], -1)[:, :3],
    image_shape=(2, 2, 1),
    class_names=("a", "b", "c"),
    examples=np.zeros((1, 2, 2, 1)),
    example_labels=np.zeros(1),
    description="parsing only",
)


@settings(max_examples=60, deadline=None)
@given(
    body=JSON
    | st.fixed_dictionaries(
        {"image": JSON | st.lists(st.floats(), min_size=4, max_size=4), "target": JSON},
        optional={"away": JSON, "steps": JSON, "step_size": JSON},
    )
)
def test_parse_step_accepts_only_valid_bodies(body):
    """Any JSON body either parses into checked arguments or is refused with a 400."""
    try:
        args = parse_step(body, _MODEL)
    except RequestError as e:
        assert e.status == 400 and str(e)
        return
    assert args["image"].shape == (2, 2, 1) and np.all((args["image"] >= 0) & (args["image"] <= 1))
    assert 0 <= args["target"] < 3 and 1 <= args["steps"] <= MAX_STEPS
    assert isinstance(args["away"], bool) and 0 < args["step_size"] <= 2.0


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["demo", "/nonexistent/run"], "does not exist"),
        (["demo", "--port", "70000"], "must be in 0..65535"),
        (["demo", "--port", "x"], "expected an integer"),
        (["demo", "--best"], "--best needs a RUN_DIR"),
    ],
)
def test_demo_command_bad_input(argv, words, capsys):
    assert main(argv) == 2
    assert words in capsys.readouterr().err


def test_demo_help_and_bad_input_answer_without_jax(tmp_path):
    code = (
        "import sys\n"
        "from jaxrobust.cli import main\n"
        "codes = [main(['demo', '--help']), main(['demo', sys.argv[1]]),\n"
        "         main(['demo', '--best']), main(['demo', '--port', '-1'])]\n"
        "assert codes == [0, 2, 2, 2], codes\n"
        "assert 'jax' not in sys.modules, 'jax was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True)
    assert proc.returncode == 0, proc.stderr


def test_demo_command_refuses_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["demo", str(tmp_path)]) == 2
    assert "not a run directory (no config.json)" in capsys.readouterr().err


# ------------------------------------------------------------------ end to end (slow)


@pytest.fixture(scope="module")
def demo_process(smoke_run, tmp_path_factory):
    """`jaxrobust demo SMOKE_RUN --port 0` in a subprocess; yields its URL."""
    log = tmp_path_factory.mktemp("demo") / "out.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jaxrobust", "demo", str(smoke_run), "--port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            for line in log.read_text().splitlines():
                if "serving at " in line:
                    url = line.split("serving at ")[1].split()[0]
            time.sleep(0.2)
        assert url, f"the demo did not start:\n{log.read_text()}"
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: stops serving, exit status 0
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait(30)
    assert rc == 0 and "jaxrobust demo: stopped" in log.read_text(), log.read_text()


def _browser():
    """A headless Chromium through Selenium and Debian's chromedriver (no downloads)."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    missing = [p for p in (chromium, driver) if not Path(p).exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package")
    if missing:
        reason = f"no browser for the demo test: missing {missing} (apt-get install chromium "
        reason += "chromium-driver; pip install selenium)"
        if os.environ.get("JAXROBUST_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " but JAXROBUST_REQUIRE_BROWSER=1")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=900,760"):
        options.add_argument(arg)
    options.add_argument("--disable-dev-shm-usage")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console
    return webdriver.Chrome(service=Service(driver), options=options)


def _wait(driver, condition, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(condition)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _dom_probs(driver) -> list[float]:
    rows = driver.find_elements("css selector", "#probs .bar-row .prob")
    return [float(r.text) for r in rows]


@pytest.mark.slow
def test_demo_command_serves_a_run(demo_process):
    """The CLI serves the smoke run's checkpoint: info, a step, a bad request, a step."""
    import urllib.error
    import urllib.request

    with urllib.request.urlopen(demo_process + "api/info", timeout=30) as res:
        info = json.load(res)
    assert info["image_shape"] == [8, 8, 1] and "checkpoint step 22" in info["description"]
    body = {"image": info["examples"][0], "target": 5, "steps": 3}

    def post(data: bytes):
        req = urllib.request.Request(
            demo_process + "api/step", data, {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as res:
                return res.status, json.load(res)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    status, out = post(json.dumps(body).encode())
    assert status == 200 and out["target_probs"][-1] > 0
    assert post(json.dumps({**body, "target": 11}).encode())[0] == 400
    assert post(json.dumps(body).encode()) == (status, out)


@pytest.mark.slow
def test_demo_page_in_headless_chromium(demo_process, tmp_path):
    """Draw strokes, pick the least likely class, press step: its probability (read from
    the page's bars) rises and the image (the canvas' pixels) changes; bad requests from
    the page's context get 4xx answers and the page goes on working."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    driver = _browser()
    try:
        driver.get(demo_process)
        _wait(driver, "return document.body.dataset.ready === '1' && window.demo.probs", "page")
        canvas = driver.find_element("id", "canvas")
        pixels = "return Array.from(document.getElementById('canvas').getContext('2d')"
        pixels += ".getImageData(0, 0, 320, 320).data.filter((_, i) => i % 4 === 0))"
        blank = driver.execute_script(pixels)
        assert max(blank) < 80  # a black image and a faint grid
        # Draw a "7": a stroke along the top and one down the diagonal.
        requests = driver.execute_script("return window.demo.requests")
        chain = ActionChains(driver)
        chain.move_to_element_with_offset(canvas, -100, -110).click_and_hold()
        chain.move_by_offset(180, 0).move_by_offset(-90, 200).release().perform()
        _wait(driver, f"return window.demo.requests > {requests}", "the prediction")
        drawn = driver.execute_script("return Array.from(window.demo.image)")
        assert sum(v > 0.5 for v in drawn) >= 8, drawn
        before = _dom_probs(driver)
        assert len(before) == 10 and abs(sum(before) - 1) < 0.02
        target = int(np.argmin(before))
        Select(driver.find_element("id", "target")).select_by_value(str(target))
        for n in range(1, 6):
            driver.find_element("id", "step").click()
            _wait(driver, f"return window.demo.stepsTaken === {n} && !window.demo.running", "step")
        after = _dom_probs(driver)
        assert after[target] > before[target] + 0.01, (before, after)
        stepped = driver.execute_script("return Array.from(window.demo.image)")
        assert np.linalg.norm(np.subtract(stepped, drawn)) > 0.1
        assert driver.execute_script(pixels) != blank
        assert "steps taken: 5" in driver.find_element("id", "status").text
        # "run N steps" animates N one-step requests.
        driver.find_element("id", "run-steps").clear()
        driver.find_element("id", "run-steps").send_keys("3")
        driver.find_element("id", "run").click()
        _wait(driver, "return window.demo.stepsTaken === 8 && !window.demo.running", "run")
        assert _dom_probs(driver)[target] >= after[target] - 1e-3
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors  # no script error, no failed request so far
        # Bad requests from the page's origin: 4xx with a named problem; then a good one.
        script = """
          const done = arguments[arguments.length - 1];
          const post = (b) => fetch('/api/step', {method: 'POST',
              headers: {'Content-Type': 'application/json'}, body: b})
            .then(async (r) => [r.status, (await r.json()).error || null]);
          Promise.all([post('{"image": [2]}'), post('nope'),
                       post(JSON.stringify({image: Array.from(window.demo.image), target: 99})),
                       post(JSON.stringify({image: Array.from(window.demo.image), target: 1}))])
            .then(done);"""
        answers = driver.execute_async_script(script)
        assert [a[0] for a in answers] == [400, 400, 400, 200], answers
        assert "target must be in [0, 9]" in answers[2][1]
        out = Path(os.environ.get("JAXROBUST_DEMO_SCREENSHOT", tmp_path / "demo.png"))
        driver.save_screenshot(str(out))
        assert out.stat().st_size > 1000
    finally:
        driver.quit()


def test_a_missing_browser_skips_here_and_fails_where_required(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: f"/nonexistent/{name}")
    monkeypatch.delenv("JAXROBUST_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"missing.*/nonexistent/chromium"):
        _browser()
    monkeypatch.setenv("JAXROBUST_REQUIRE_BROWSER", "1")  # as .ci/run sets it
    with pytest.raises(pytest.fail.Exception, match=r"JAXROBUST_REQUIRE_BROWSER=1"):
        _browser()
