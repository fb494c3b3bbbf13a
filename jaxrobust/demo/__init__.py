"""`jaxrobust demo`: interactive image class manipulation in the browser.

A local web page (`server`) where a user draws or edits an image and watches a robust
model move it toward (or away from) a class with targeted ℓ2 steps of the
`jaxrobust.optimize` engine (`model`), with live class probabilities.
"""

from jaxrobust.demo.model import DemoModel, default_model, from_run, tiny_model
from jaxrobust.demo.server import DemoServer, make_server, serve_in_thread

__all__ = [
    "DemoModel",
    "DemoServer",
    "default_model",
    "from_run",
    "make_server",
    "serve_in_thread",
    "tiny_model",
]
