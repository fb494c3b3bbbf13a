"""PyTorch is an optional extra: the package imports without it and the converter says how to
install it. No PyTorch needed (part of the default suite; the round trips are in
tests/test_from_torch.py, marked `torch`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jaxrobust.errors import CheckpointError
from jaxrobust.models.from_torch import load_torch_state_dict


def test_missing_torch_is_named(tmp_path, monkeypatch):
    f = tmp_path / "m.pt"
    f.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(
        CheckpointError, match=r"m\.pt needs PyTorch.*pip install 'jaxrobust\[torch\]'"
    ):
        load_torch_state_dict(f)


def test_package_imports_without_torch():
    # A fresh interpreter in which `import torch` fails: the package and the converter import.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import jaxrobust, jaxrobust.models.from_torch, jaxrobust.cli\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
