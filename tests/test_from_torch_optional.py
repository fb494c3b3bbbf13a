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


@pytest.mark.slow  # a fresh interpreter importing jax: ~10 s here
def test_package_imports_without_torch():
    # A fresh interpreter in which `import torch` fails: the package and the converter import.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import jaxrobust, jaxrobust.models.from_torch, jaxrobust.cli\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


# --- `jaxrobust eval --from-torch`: bad command lines answer in one line, before JAX -----------


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give a RUN_DIR, or --from-torch FILE.pt --arch NAME"),
        (["--from-torch", "F.pt", "--eps", "0.03"], "--from-torch needs --arch, one of: "),
        (["--from-torch", "F.pt", "--arch", "vgg16", "--eps", "0.03"], "unknown PyTorch arch"),
        (["--from-torch", "F.pt", "--arch", "resnet18"], "needs --eps"),
        (
            ["--from-torch", "F.pt", "--arch", "resnet18", "--eps", "0.1", "--dataset", "digits"],
            "digits has 8x8x1 images; the PyTorch architectures take 32x32x3",
        ),
        (
            ["--from-torch", "F.pt", "--arch", "resnet18", "--eps", "0.1", "--dataset", "nope"],
            "unknown dataset",
        ),
        (
            ["--from-torch", "F.pt", "--arch", "resnet18", "--eps", "0.1", "--std", "0.2", "0"],
            "--std takes 1 or 3 values",
        ),
        (
            ["--from-torch", "F.pt", "--arch", "resnet18", "--eps", "0.1", "--std", "0", "1", "1"],
            "std must be > 0",
        ),
        (
            ["--from-torch", "F.pt", "--arch", "resnet18", "--eps", "0.1", "--mean", "nan"],
            "--mean must be finite",
        ),
        (
            ["--from-torch", "F.pt", "--arch", "resnet18", "--eps", "0.1", "--best"],
            "--best is for runs",
        ),
        (
            ["--from-torch", "F.pt", "--arch", "resnet18", "--eps", "0.1"],
            "no PyTorch checkpoint file at F.pt",
        ),
        (["RUN", "--arch", "resnet18"], "--arch applies to --from-torch only"),
        (
            ["RUN", "--from-torch", "F.pt", "--arch", "resnet18", "--eps", "0.1"],
            "either RUN_DIR (RUN) or --from-torch",
        ),
    ],
)
def test_eval_from_torch_bad_command_lines(args, message, tmp_path, monkeypatch, capsys):
    from jaxrobust import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "RUN").mkdir()
    assert cli.main(["eval", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxrobust eval: error: "), err
    assert message in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RUN"]  # nothing written
