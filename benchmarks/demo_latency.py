"""Latency of one `jaxrobust demo` step, as the page sees it, and the page's screenshot.

Serves the demo's model (default: the robust digits model of `jaxrobust demo` without a
RUN_DIR, trained once into its cache) from a server thread on a free loopback port, then
sends `--requests` POST /api/step requests (one targeted ℓ2 step each, as the page's
"step" button does, each from the image the previous one returned) over one keep-alive HTTP
connection, after `--warmup` unmeasured ones. A request's latency is the wall time from
sending it to having parsed its JSON answer: JSON encoding, HTTP, validation, the jitted
step, the answer. The model-only time of the same steps (`DemoModel.step`, no HTTP) is
measured beside it. Reported: median, 95th percentile (numpy's linear interpolation), mean
and its standard error, in milliseconds.

With `--screenshot PNG` it also opens the page in headless Chromium (Debian's chromium and
chromedriver, through Selenium), starts from the first test image of class `--source`,
runs `--screenshot-steps` steps toward class `--target` and saves the window.

    python benchmarks/demo_latency.py [RUN_DIR] [--out experiments/results/demo/latency.json]
                                      [--screenshot experiments/results/demo/screenshot.png]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "experiments" / "results" / "demo" / "latency.json"
TARGET_MS = 200.0


def _post(conn: http.client.HTTPConnection, path: str, body: dict) -> dict:
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    res = conn.getresponse()
    data = json.loads(res.read())
    if res.status != 200:
        raise RuntimeError(f"{path}: {res.status} {data}")
    return data


def _stats(ms: list[float], how: str) -> dict:
    a = np.asarray(ms)
    return {
        "median_ms": round(float(np.median(a)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
        "mean_ms": round(float(a.mean()), 2),
        "mean_se_ms": round(float(a.std(ddof=1) / np.sqrt(len(a))), 2),
        "max_ms": round(float(a.max()), 2),
        "n": len(a),
        "how": how,
    }


def measure(model, server, *, requests: int, warmup: int, source: int, target: int) -> dict:
    host, port = server.server_address[:2]
    start = model.examples[int(np.flatnonzero(model.example_labels == source)[0])]
    step_size = model.default_step_size
    conn = http.client.HTTPConnection(host, port, timeout=60)
    image = [float(v) for v in start.reshape(-1)]
    http_ms = []
    for i in range(warmup + requests):
        t0 = time.perf_counter()
        out = _post(conn, "/api/step", {"image": image, "target": target, "step_size": step_size})
        if i >= warmup:
            http_ms.append(1000 * (time.perf_counter() - t0))
        image = out["image"]
    conn.close()
    x = start
    model_ms = []
    for i in range(warmup + requests):
        t0 = time.perf_counter()
        x, _, _ = model.step(x, target, False, 1, step_size)
        if i >= warmup:
            model_ms.append(1000 * (time.perf_counter() - t0))
    return {
        "http": _stats(
            http_ms,
            f"{requests} POST /api/step requests (1 step each, after {warmup} unmeasured) "
            "over one keep-alive connection from a Python client on the same machine",
        ),
        "model_only": _stats(model_ms, f"{requests} calls of DemoModel.step (1 step, no HTTP)"),
        "final_target_probability": out["target_probs"][-1],
        "step_size": step_size,
    }


def screenshot(url: str, path: Path, *, source: int, target: int, steps: int) -> None:
    """The page after `steps` steps from the first example of `source` toward `target`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import Select

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=840,700"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url)
        _wait(driver, "return document.body.dataset.ready === '1' && window.demo.probs")
        labels = driver.execute_script("return window.demo.info.example_labels")
        driver.find_elements("css selector", "#examples canvas")[labels.index(source)].click()
        _wait(driver, "return window.demo.requests >= 2")
        Select(driver.find_element("id", "target")).select_by_value(str(target))
        driver.find_element("id", "run-steps").clear()
        driver.find_element("id", "run-steps").send_keys(str(steps))
        driver.find_element("id", "run").click()
        _wait(driver, f"return window.demo.stepsTaken === {steps} && !window.demo.running")
        path.parent.mkdir(parents=True, exist_ok=True)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(path))
    finally:
        driver.quit()


def _wait(driver, condition: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not driver.execute_script(condition):
        if time.monotonic() > deadline:
            raise TimeoutError(condition)
        time.sleep(0.05)


def _shown(path: Path | None) -> str | None:
    """A path as the JSON records it: relative to the repository when inside it."""
    if path is None:
        return None
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", help="a run directory (default: the demo's model)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON path")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--source", type=int, default=0, help="class of the start image")
    parser.add_argument("--target", type=int, default=6, help="class to step toward")
    parser.add_argument("--screenshot", type=Path, help="PNG path of a page screenshot")
    parser.add_argument("--screenshot-steps", type=int, default=12)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "experiments"))
    import _common as C
    import jax

    from jaxrobust.compilation_cache import enable_compilation_cache
    from jaxrobust.demo import model as demo_model
    from jaxrobust.demo.server import make_server, serve_in_thread

    enable_compilation_cache()
    t0 = time.perf_counter()
    # The commit of the code that runs, read before this run rewrites its own (tracked)
    # results and screenshot, which would mark the tree dirty.
    provenance = C.run_info()
    if args.run_dir:
        model, run_dir = demo_model.from_run(args.run_dir), Path(args.run_dir)
    else:
        model = demo_model.default_model()
        run_dir = demo_model.default_cache_dir() / demo_model.DEFAULT_RUN_NAME
    server = make_server(model)
    serve_in_thread(server)
    try:
        result = measure(
            model,
            server,
            requests=args.requests,
            warmup=args.warmup,
            source=args.source,
            target=args.target,
        )
        if args.screenshot:
            screenshot(
                server.url,
                args.screenshot,
                source=args.source,
                target=args.target,
                steps=args.screenshot_steps,
            )
    finally:
        server.shutdown()
        server.server_close()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    payload = {
        **C.header(
            "demo_latency",
            False,
            0,
            {
                "requests": args.requests,
                "warmup": args.warmup,
                "source": args.source,
                "target": args.target,
                "screenshot_steps": args.screenshot_steps if args.screenshot else None,
            },
        ),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "jax": jax.__version__,
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "model": model.description,
        "model_clean_accuracy": C.measured(
            metrics["clean_accuracy"],
            n=metrics["num_test"],
            how="the run's final evaluation on the digits test split",
        ),
        "model_robust_accuracy": {
            "eps": metrics["curve"]["eps"],
            "accuracy": C.jsonable(metrics["curve"]["robust_accuracy"]),
            "method": "measured",
            "n": metrics["num_test"],
            "how": "the run's final evaluation on the digits test split, l2 PGD (`attack`)",
            "attack": metrics["attack"],
        },
        "target_ms": TARGET_MS,
        **result,
        "screenshot": _shown(args.screenshot),
    }
    payload["wall_time_s"] = round(time.perf_counter() - t0, 2)
    payload.update(provenance)
    from jaxrobust import report

    report.write_json(args.out, payload)
    h = result["http"]
    print(f"step latency over HTTP: median {h['median_ms']} ms, p95 {h['p95_ms']} ms ", end="")
    print(f"(n={h['n']}) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
