"""The demo's web server: a page and a small JSON API over a `DemoModel` (stdlib only).

    GET  /                   the page (static/index.html; /static/demo.js, /static/demo.css)
    GET  /api/info           image shape, class names, example images, step bounds, model
    POST /api/predict        {"image": IMAGE} -> {"probs": [K], "pred": int}
    POST /api/step           {"image": IMAGE, "target": int, "away": bool = false,
                              "steps": int = 1, "step_size": float = default}
                             -> {"image": [H·W·C], "probs": [K], "pred": int,
                                 "target_probs": [steps]}

IMAGE is a flat list of H·W·C numbers (row-major H, W, C) or nested lists of shape
(H, W, C), every value finite and in [0, 1]. Every request is checked before the model
sees it; a bad one gets a 4xx answer `{"error": "<what is wrong>"}` and the server goes on
serving. Only the three static files above are served (a fixed table, no file system
paths from the request); no request runs code. The server binds 127.0.0.1 by default and
then answers only requests addressed to a loopback name (DNS-rebinding guard).
"""

from __future__ import annotations

import ipaddress
import json
import math
import socket
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import numpy as np

from jaxrobust.demo.model import MAX_STEPS, DemoModel

STATIC = Path(__file__).resolve().parent / "static"
# The only files served: URL path -> (file in static/, content type).
ROUTES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
    "/static/demo.css": ("demo.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
REQUEST_TIMEOUT_S = 10.0  # a client that stops sending mid-request is dropped after this


class RequestError(Exception):
    """A request the demo refuses: the HTTP status and a message naming the problem."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def _bad(message: str) -> RequestError:
    return RequestError(HTTPStatus.BAD_REQUEST, message)


def max_body_bytes(model: DemoModel) -> int:
    """The largest request body accepted: ~32 bytes of JSON per pixel value, plus room for
    the other fields (64 KiB at least)."""
    return max(64 * 1024, 32 * int(np.prod(model.image_shape)) + 4096)


# --------------------------------------------------------------------------- validation


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _flatten(value: Any, shape: tuple[int, ...], where: str) -> list:
    """The numbers of nested lists of exactly `shape`, in row-major order."""
    if not shape:
        return [value]
    if not isinstance(value, list) or len(value) != shape[0]:
        got = f"a list of length {len(value)}" if isinstance(value, list) else type(value).__name__
        raise _bad(f"image{where} must be a list of length {shape[0]}, got {got}")
    out = []
    for i, v in enumerate(value):
        out.extend(_flatten(v, shape[1:], f"{where}[{i}]"))
    return out


def parse_image(value: Any, shape: tuple[int, int, int]) -> np.ndarray:
    """A request's image: a flat list of H·W·C numbers or nested lists (H, W, C), every
    value a finite number in [0, 1]. Returns float32 (H, W, C); raises RequestError (400)."""
    size = int(np.prod(shape))
    if not isinstance(value, list):
        raise _bad(f"image must be a list of {size} numbers, got {type(value).__name__}")
    flat = value if len(value) == size and not isinstance(value[0], list) else None
    if flat is None:
        if len(value) != shape[0] or not all(isinstance(v, list) for v in value):
            raise _bad(
                f"image must be a flat list of {size} numbers (H·W·C for shape {list(shape)}) "
                f"or nested lists of shape {list(shape)}, got a list of length {len(value)}"
            )
        flat = _flatten(value, shape, "")
    for i, v in enumerate(flat):
        if not _is_number(v):
            raise _bad(f"image value {i} must be a number, got {type(v).__name__}")
        if not math.isfinite(v):
            raise _bad(f"image value {i} is not finite ({v})")
        if not 0.0 <= v <= 1.0:
            raise _bad(f"image value {i} is {v:g}: pixel values must be in [0, 1]")
    return np.asarray(flat, np.float32).reshape(shape)


def _int_field(body: dict, name: str, lo: int, hi: int, default: int | None = None) -> int:
    if name not in body:
        if default is None:
            raise _bad(f"missing field {name!r} (an integer in [{lo}, {hi}])")
        return default
    v = body[name]
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise _bad(f"{name} must be an integer in [{lo}, {hi}], got {json.dumps(v)[:40]}")
    if not lo <= v <= hi:
        raise _bad(f"{name} must be in [{lo}, {hi}], got {v}")
    return v


def _check_keys(body: Any, required: set[str], optional: set[str]) -> dict:
    if not isinstance(body, dict):
        raise _bad(f"the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - required - optional)
    if unknown:
        raise _bad(f"unknown field(s) {unknown}; known: {sorted(required | optional)}")
    missing = sorted(required - set(body))
    if missing:
        raise _bad(f"missing field(s) {missing}")
    return body


def parse_predict(body: Any, model: DemoModel) -> np.ndarray:
    """The image of a /api/predict request."""
    body = _check_keys(body, {"image"}, set())
    return parse_image(body["image"], model.image_shape)


def parse_step(body: Any, model: DemoModel) -> dict:
    """The arguments of a /api/step request, checked: image, target, away, steps, step_size."""
    body = _check_keys(body, {"image", "target"}, {"away", "steps", "step_size"})
    image = parse_image(body["image"], model.image_shape)
    target = _int_field(body, "target", 0, model.num_classes - 1)
    away = body.get("away", False)
    if not isinstance(away, bool):
        raise _bad(f"away must be true or false, got {json.dumps(away)[:40]}")
    steps = _int_field(body, "steps", 1, MAX_STEPS, default=1)
    step_size = body.get("step_size", model.default_step_size)
    top = model.max_step_size
    if not _is_number(step_size) or not math.isfinite(step_size):
        raise _bad(f"step_size must be a finite number in (0, {top:g}], got {step_size!r:.40}")
    if not 0 < step_size <= top:
        raise _bad(
            f"step_size must be in (0, {top:g}] (ℓ2 norm in input units; {top:g} is the "
            f"norm of an all-ones image), got {step_size:g}"
        )
    return {
        "image": image,
        "target": target,
        "away": away,
        "steps": steps,
        "step_size": float(step_size),
    }


def _reject_constant(name: str) -> Any:
    raise _bad(f"the JSON holds {name}: every number must be finite")


def _loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The host of a Host header, without its port ("[::1]:80" -> "::1")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


# ------------------------------------------------------------------------------- server


def _round(values: np.ndarray, digits: int = 6) -> list[float]:
    return [round(float(v), digits) for v in np.asarray(values).reshape(-1)]


class DemoServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer serving one `DemoModel` (`model` attribute)."""

    daemon_threads = True

    def __init__(self, model: DemoModel, host: str = "127.0.0.1", port: int = 0):
        self.model = model
        self.max_body = max_body_bytes(model)
        self.loopback_only = _loopback(host)
        self.files = {
            route: ((STATIC / name).read_bytes(), ctype) for route, (name, ctype) in ROUTES.items()
        }
        self.info = json.dumps(
            {
                "image_shape": list(model.image_shape),
                "class_names": list(model.class_names),
                "examples": [_round(x, 4) for x in model.examples],
                "example_labels": [int(y) for y in model.example_labels],
                "default_step_size": model.default_step_size,
                "max_step_size": model.max_step_size,
                "max_steps": MAX_STEPS,
                "description": model.description,
            }
        ).encode()
        if ":" in host and not host.startswith("["):
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = cast(tuple[str, int], self.server_address[:2])  # an IP (not AF_UNIX) socket
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    server: DemoServer
    server_version = "jaxrobust-demo"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S
    protocol_version = "HTTP/1.1"
    # An answer goes out in one buffered write (flushed after each request), and with
    # TCP_NODELAY: headers and body as two small writes let Nagle hold the body back for
    # the client's delayed ACK (~40 ms a request on Linux).
    wbufsize = -1
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    # ------------------------------------------------------------------ responses
    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message, "status": int(status)})

    def _guarded(self, handler: Callable[[], None]) -> None:
        try:
            if self.server.loopback_only:
                host = _host_name(self.headers.get("Host", ""))
                if not _loopback(host):
                    raise RequestError(
                        HTTPStatus.FORBIDDEN,
                        f"Host {host!r} refused: this demo serves loopback addresses only",
                    )
            handler()
        except RequestError as e:
            self._error(e.status, str(e))
        except Exception as e:  # a bug, not the client's fault: say so, keep serving
            print(f"jaxrobust demo: internal error: {e!r}", file=sys.stderr)
            self.close_connection = True
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(e).__name__}")

    # ------------------------------------------------------------------ methods
    def do_GET(self) -> None:
        self._guarded(self._get)

    def do_HEAD(self) -> None:
        self._guarded(self._get)

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _not_allowed(self) -> None:
        self.close_connection = True
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"method {self.command} not allowed")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _get(self) -> None:
        path = urlsplit(self.path).path
        if path == "/api/info":
            self._send(HTTPStatus.OK, self.server.info, "application/json")
        elif path in self.server.files:
            body, ctype = self.server.files[path]
            self._send(HTTPStatus.OK, body, ctype)
        elif path == "/favicon.ico":  # browsers ask for one: none, without an error
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        elif path.startswith("/api/"):
            raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} takes POST")
        else:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no page {path[:100]!r}")

    def _read_json(self) -> Any:
        ctype = self.headers.get("Content-Type", "")
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length, not chunks")
        if length is None:
            self.close_connection = True
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "missing Content-Length")
        if not length.strip().isdigit():
            self.close_connection = True
            raise _bad(f"bad Content-Length {length[:20]!r}")
        size = int(length)
        if size > self.server.max_body:
            self.close_connection = True  # the body is not read: the connection cannot go on
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {size} bytes exceeds the limit of {self.server.max_body} bytes",
            )
        try:
            raw = self.rfile.read(size)
        except TimeoutError:
            self.close_connection = True
            raise RequestError(
                HTTPStatus.REQUEST_TIMEOUT,
                f"the body did not arrive within {self.timeout:g} s",
            ) from None
        if len(raw) != size:
            self.close_connection = True
            raise _bad(f"body ended after {len(raw)} of {size} bytes")
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise RequestError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Type must be application/json, got {ctype[:60]!r}",
            )
        try:
            return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except UnicodeDecodeError:
            raise _bad("the body is not UTF-8") from None
        except RecursionError:
            raise _bad("the JSON is nested too deeply") from None
        except ValueError as e:  # malformed JSON, or an integer of over 4300 digits
            raise _bad(f"the body is not valid JSON: {e}") from None

    def _post(self) -> None:
        path = urlsplit(self.path).path
        if path not in ("/api/predict", "/api/step"):
            self.close_connection = True
            raise RequestError(HTTPStatus.NOT_FOUND, f"no API {path[:100]!r}")
        body = self._read_json()
        model = self.server.model
        if path == "/api/predict":
            probs = model.predict(parse_predict(body, model))
            self._json(HTTPStatus.OK, {"probs": _round(probs), "pred": int(np.argmax(probs))})
            return
        args = parse_step(body, model)
        image, probs, trace = model.step(**args)
        self._json(
            HTTPStatus.OK,
            {
                "image": _round(image),
                "probs": _round(probs),
                "pred": int(np.argmax(probs)),
                "target_probs": _round(np.asarray(trace)),
            },
        )


def make_server(
    model: DemoModel, host: str = "127.0.0.1", port: int = 0, *, warm_up: bool = True
) -> DemoServer:
    """A bound (not yet serving) demo server; `port=0` picks a free port (see `.url`).
    `warm_up` compiles the model's programs first, so the first request is fast."""
    if warm_up:
        model.warm_up()
    return DemoServer(model, host, port)


def serve_in_thread(server: DemoServer) -> threading.Thread:
    """Serve `server` from a daemon thread (stop with `server.shutdown()`)."""
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="jaxrobust-demo")
    thread.start()
    return thread
