"""The model zoo (jaxrobust.zoo): the shipped index, loading by name, path and URL (the
network simulated: no test reaches outside this machine), damaged and tampered entries,
`jaxrobust eval zoo:NAME`, and the reproduction of the accuracies the zoo states."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxrobust as jr
from jaxrobust import zoo
from jaxrobust.cli import main
from jaxrobust.errors import CheckpointError, JaxRobustError

ROBUST = "digits-mlp-pgd-at-linf0.1"
STANDARD = "digits-mlp-standard"


@pytest.fixture(scope="module")
def robust():
    return zoo.load(ROBUST)


@pytest.fixture
def entry_copy(tmp_path):
    """A copy of the robust entry's directory (zoo.json included), safe to damage."""
    dest = tmp_path / ROBUST
    shutil.copytree(zoo.INDEX_PATH.parent / zoo.index()[ROBUST]["path"], dest)
    return dest


def test_list_models_and_index_records():
    """Both digits models are listed; each stated number is consistent with its count, n
    and SE, and says how it was measured."""
    assert {ROBUST, STANDARD} <= set(zoo.list_models())
    assert zoo.list_models() == sorted(zoo.index())
    for name, entry in zoo.index().items():
        assert entry["dataset"] == "digits"
        assert entry["training"]["git_commit"], name
        assert entry["evaluated_by"]["git_commit"], name
        assert not entry["evaluated_by"]["git_commit"].endswith("+dirty")
        metrics = [zoo.Measurement.from_dict(m) for m in entry["metrics"]]
        kinds = {m.kind for m in metrics}
        assert kinds == {"clean", "standard", "pgd-10", "pgd-50x5"}, name
        for m in metrics:
            assert m.n == 360 and m.split == "test"
            assert m.correct == round(m.value * m.n)
            assert math.isclose(m.se, math.sqrt(m.value * (1 - m.value) / m.n))
            assert m.attack and m.command and m.deterministic
            assert (m.eps == 0) == (m.kind == "clean")
        # The cascade of four attacks is at least as strong as PGD-10 at the same eps.
        std = {m.eps: m.value for m in metrics if m.kind == "standard"}
        (quick,) = [m for m in metrics if m.kind == "pgd-10"]
        assert std[quick.eps] <= quick.value


@pytest.mark.parametrize("name", [ROBUST, STANDARD])
def test_load_reproduces_stated_accuracy_exactly(name, robust, digits_test):
    """The zoo's quick measurement (PGD-10 at eps 0.1 on the 360 test images, seed 0) is
    deterministic (fixed key and batch shapes; evaluate's results do not depend on the
    device count), so the same call must give the same number of robust examples. Both
    models share one architecture, so the second reuses the first's compiled programs."""
    if name == STANDARD:
        robust = zoo.load(STANDARD)
    assert robust.name == name and robust.dataset == "digits"
    assert set(robust.variables) == {"params"}
    stated = robust.metric("pgd-10")
    clean = robust.metric("clean")
    x, y = digits_test
    report = jr.evaluate(
        robust.logits_fn,
        x,
        y,
        jax.random.key(stated.seed),
        threat=stated.threat,
        eps=stated.eps,
        attacks=list(stated.attacks),
        batch_size=stated.batch_size,
        checks=stated.checks,
    )
    assert round(report.robust_accuracy[0] * len(y)) == stated.correct
    assert round(report.clean_accuracy * len(y)) == clean.correct
    # The module and variables are the same model as logits_fn.
    direct = robust.module.apply(robust.variables, x[:8], train=False)
    np.testing.assert_allclose(direct, robust.logits_fn(x[:8]), rtol=1e-6, atol=1e-6)


def test_readme_zoo_example_runs(robust, capsys):
    import textwrap

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("\n## Model zoo\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    namespace: dict = {}
    exec(compile(textwrap.dedent(block), "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == str(zoo.list_models())
    assert printed[1] == str(robust.metric("standard", eps=0.1))
    assert namespace["logits"].shape == (360, 10)


def test_metric_lookup(robust):
    assert robust.metric("standard").eps == 0.1  # the training eps by default
    assert robust.metric("standard", eps=0.3).eps == 0.3
    with pytest.raises(zoo.ZooError, match="states no 'fab' accuracy; it states: clean@0"):
        robust.metric("fab")
    assert "SE" in str(robust.metric("standard"))


def test_unknown_name_lists_known_names():
    with pytest.raises(zoo.ZooError, match="unknown zoo model 'digits-resnet'") as e:
        zoo.load("digits-resnet")
    for name in zoo.list_models():
        assert name in str(e.value)
    assert isinstance(e.value, CheckpointError)
    with pytest.raises(zoo.ZooError, match=r"no such directory: \./nowhere"):
        zoo.load("./nowhere")


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80) | st.sampled_from(["http://", "https://x#sha256=", "/", ".", "~"]))
def test_any_other_reference_is_a_named_error(text):
    """Whatever a user types that is no zoo name: a ZooError (never another exception, never
    a network access: an URL without a valid sha256 is refused first)."""
    if text in zoo.list_models():
        return
    with pytest.raises(zoo.ZooError):
        zoo.resolve(text)


def _index_with(tmp_path, monkeypatch, entry_dir: Path) -> None:
    """Point the zoo at an index whose robust entry lives in `entry_dir`."""
    data = json.loads(zoo.INDEX_PATH.read_text())
    data["models"][ROBUST]["path"] = str(entry_dir.resolve())
    index = tmp_path / "index.json"
    index.write_text(json.dumps(data))
    monkeypatch.setattr(zoo, "INDEX_PATH", index)


def test_tampered_or_damaged_entry_is_refused(tmp_path, monkeypatch, entry_copy):
    _index_with(tmp_path, monkeypatch, entry_copy)
    assert zoo.resolve(ROBUST).run_dir == entry_copy.resolve()  # intact: accepted
    # One flipped byte in the largest file (the weights).
    weights = max(entry_copy.rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    rel = weights.relative_to(entry_copy)
    with pytest.raises(zoo.ZooError, match=f"damaged or tampered with: .*{re.escape(str(rel))}"):
        zoo.load(ROBUST)
    with pytest.raises(zoo.ZooError, match="damaged or tampered with"):  # path form too
        zoo.load(entry_copy)
    weights.unlink()
    with pytest.raises(zoo.ZooError, match="is incomplete"):
        zoo.load(ROBUST)


def test_tampered_config_and_added_file(tmp_path, monkeypatch, entry_copy):
    _index_with(tmp_path, monkeypatch, entry_copy)
    config = entry_copy / "config.json"
    config.write_text(config.read_text().replace('"eps": 0.1', '"eps": 0.3'))
    with pytest.raises(zoo.ZooError, match=r"config\.json has sha256"):
        zoo.resolve(ROBUST)
    # A file the checksums do not list (e.g. something dropped into the checkpoint).
    extra = tmp_path / "extra"
    shutil.copytree(zoo.INDEX_PATH.parent / zoo.index()[ROBUST]["path"], extra)
    (extra / "checkpoints" / "notes.txt").write_text("hello")
    with pytest.raises(zoo.ZooError, match=r"checksums do not list: .*notes\.txt"):
        zoo.resolve(extra)


def test_path_form_and_plain_run_directory(robust, entry_copy, tmp_path):
    """An unpacked entry loads by its path with the same metrics and weights; without
    zoo.json it is a plain run directory: no stated metrics, named after its folder."""
    from_path = zoo.load(entry_copy)
    assert from_path.name == ROBUST
    assert from_path.metrics == robust.metrics
    x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1))
    np.testing.assert_array_equal(from_path.logits_fn(x), robust.logits_fn(x))
    (entry_copy / zoo.ENTRY_FILE).unlink()
    plain = zoo.resolve(str(entry_copy))  # what load reads (a second load costs seconds)
    assert plain.name == entry_copy.name and plain.metrics == () and plain.entry == {}
    not_run = tmp_path / "empty"
    not_run.mkdir()
    with pytest.raises(zoo.ZooError, match="not a run directory"):
        zoo.load(not_run)


class _Network:
    """A stand-in for urllib's opener: serves `files` by URL, or fails like no network."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files = files or {}
        self.calls: list[str] = []

    def __call__(self, url: str, timeout: float):
        self.calls.append(url)
        if url not in self.files:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        return io.BytesIO(self.files[url])


def test_url_form_downloads_once_and_verifies(tmp_path, monkeypatch, entry_copy, robust):
    monkeypatch.setenv("JAXROBUST_ZOO_CACHE", str(tmp_path / "cache"))
    digest = zoo.pack(entry_copy, tmp_path / "m.tar.gz")
    url = "https://models.example.org/m.tar.gz"
    net = _Network({url: (tmp_path / "m.tar.gz").read_bytes()})
    monkeypatch.setattr(zoo, "_urlopen", net)
    # Without a checksum: refused before any download.
    with pytest.raises(zoo.ZooError, match="needs the archive's sha256"):
        zoo.load(url)
    # A wrong checksum: downloaded, refused, nothing kept in the cache.
    with pytest.raises(zoo.ZooError, match=r"downloaded archive has sha256 .* expected 0{64}"):
        zoo.load(url, sha256="0" * 64)
    assert not any((tmp_path / "cache").iterdir())
    with pytest.raises(zoo.ZooError, match="contradicts"):
        zoo.load(f"{url}#sha256={digest}", sha256="1" * 64)
    resolved = zoo.resolve(f"{url}#sha256={digest}")
    assert resolved.name == ROBUST and resolved.metrics == robust.metrics
    assert (tmp_path / "cache") in resolved.run_dir.parents
    assert net.calls == [url, url]
    # Cached: the second use reads no network.
    monkeypatch.setattr(zoo, "_urlopen", _Network())
    again = zoo.resolve(url, sha256=digest)
    assert again.run_dir == resolved.run_dir


def test_offline_url_error_names_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXROBUST_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(zoo, "_urlopen", _Network())
    url = "https://models.example.org/big.tar.gz"
    with pytest.raises(zoo.ZooError, match=f"could not download {re.escape(url)} .*offline"):
        zoo.load(url, sha256="a" * 64)
    # Through urllib itself: a local port where nothing listens refuses the connection.
    monkeypatch.undo()
    monkeypatch.setenv("JAXROBUST_ZOO_CACHE", str(tmp_path / "cache"))
    url = "http://127.0.0.1:9/big.tar.gz"
    with pytest.raises(zoo.ZooError, match=f"could not download {re.escape(url)} .*offline"):
        zoo.load(f"{url}#sha256={'a' * 64}")


def test_archive_with_a_link_out_is_refused(tmp_path, monkeypatch):
    """tarfile's "data" filter: a member pointing outside the folder is not unpacked."""
    import hashlib
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("m/config.json")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    data = buf.getvalue()
    url = "https://models.example.org/evil.tar.gz"
    monkeypatch.setenv("JAXROBUST_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(zoo, "_urlopen", _Network({url: data}))
    with pytest.raises(zoo.ZooError, match=r"not a readable \.tar\.gz archive"):
        zoo.load(url, sha256=hashlib.sha256(data).hexdigest())


def test_cli_eval_zoo_reproduces_the_quick_measurement(tmp_path, capsys, monkeypatch):
    """`jaxrobust eval zoo:NAME` with the flags of a stated measurement says whether it
    reproduces it; the report goes to runs/zoo/NAME/eval, never into the package."""
    monkeypatch.chdir(tmp_path)
    stated = zoo.resolve(ROBUST).metrics
    quick = next(m for m in stated if m.kind == "pgd-10")
    argv = ["eval", f"zoo:{ROBUST}", "--attacks", "pgd-10", "--eps", "0.1", "--no-checks"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"robust accuracy at eps=0.1 {quick.value:.4f} reproduces the zoo's stated" in out
    assert "clean accuracy" in out and "FLAG" not in out
    report = json.loads((tmp_path / "runs" / "zoo" / ROBUST / "eval" / "metrics.json").read_text())
    assert round(report["robust_accuracy"][-1] * 360) == quick.correct


def test_cli_eval_unknown_zoo_name(capsys):
    assert main(["eval", "zoo:nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown zoo model 'nope'" in err and ROBUST in err and "Traceback" not in err


def test_compare_flags_a_difference():
    stated = zoo.resolve(ROBUST).metrics
    quick = next(m for m in stated if m.kind == "pgd-10")
    report = {
        "num_examples": 360,
        "split": "test",
        "threat": "linf",
        "attacks": list(quick.attacks),
        "eps": [0.1],
        "clean_accuracy": zoo.resolve(ROBUST).metrics[0].value,
        "robust_accuracy": [(quick.correct - 1) / 360],
    }
    lines = zoo.compare(ROBUST, stated, report, seed=0, batch_size=512, checks=False)
    assert any(line.startswith("FLAG") and "differs" in line for line in lines)
    # Other flags (another seed): nothing comparable; the line names the stated commands.
    lines = zoo.compare(ROBUST, stated, report, seed=1, batch_size=512, checks=False)
    assert lines == [lines[0]] and "states no measurement made with these flags" in lines[0]


@pytest.mark.slow
def test_export_of_a_smoke_run(smoke_run, tmp_path):
    """`export` keeps the weights and resets the optimizer state; the entry loads."""
    entry = zoo.export(smoke_run, tmp_path / "e", name="smoke", description="a smoke run")
    assert entry["files"] == zoo.file_checksums(tmp_path / "e")
    loaded = zoo.load(tmp_path / "e")
    run = jr.load_run(smoke_run)
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
    np.testing.assert_array_equal(loaded.logits_fn(x), run.logits_fn()(x))
    assert loaded.step == run.step and loaded.name == "smoke"
    with pytest.raises(zoo.ZooError, match="exists"):
        zoo.export(smoke_run, tmp_path / "e", name="smoke", description="again")


@pytest.mark.slow
def test_cli_default_eval_reproduces_every_stated_number(tmp_path):
    """`jaxrobust eval zoo:NAME` as a user runs it (a subprocess, one device per core): the
    standard suite over the run's eps list gives exactly the stated counts (deterministic:
    fixed key, fixed batch shapes, results independent of the device count). The robust
    model only: 4-5 min on this loaded 2-core CPU (CI's packaging gate runs it again from
    the wheel)."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "JAXROBUST_CPU_DEVICES"}
    out = subprocess.run(
        [sys.executable, "-m", "jaxrobust", "eval", f"zoo:{ROBUST}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    stated = [m for m in zoo.resolve(ROBUST).metrics if m.kind in ("clean", "standard")]
    lines = [line for line in out.stdout.splitlines() if "reproduces the zoo's stated" in line]
    assert len(lines) == len(stated), out.stdout
    assert "FLAG zoo" not in out.stdout


def test_zoo_error_is_a_jaxrobust_error():
    assert issubclass(zoo.ZooError, JaxRobustError)
