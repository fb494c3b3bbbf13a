"""`jaxrobust certify RUN_DIR --method ibp|crown-ibp --eps EPS`: verified accuracy by interval
bound propagation next to the clean and PGD robust accuracy of the same examples (issue 16,
item 4), on the shared smoke run (a 32-unit MLP, conftest's `smoke_run`)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

import jaxrobust
from jaxrobust.certify import ibp
from jaxrobust.cli import main

# 40 examples in batches of 32 (the second one padded), a short PGD: a few seconds.
_FAST = ["--limit", "40", "--batch-size", "32", "--pgd-steps", "10", "--pgd-restarts", "1"]
_EPS = "0.01"  # the smoke model is weak (clean ~0.4): a radius where some points verify


def _certify(run, out, method, *extra):
    return main(
        ["certify", str(run), "--method", method, "--eps", _EPS, *_FAST, "--out", str(out), *extra]
    )


def _one_line_error(capsys, code):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(("jaxrobust certify: error: ", "jaxrobust: error: ")), err
    return err[0]


@pytest.mark.slow  # compile-heavy: runs with the slow tests, keeping the default suite < 15 min
def test_ibp_and_crown_ibp_write_verified_pgd_clean(smoke_run, tmp_path, capsys):
    runs = {}
    for method in ("ibp", "crown-ibp"):
        out = tmp_path / method
        assert _certify(smoke_run, out, method) == 0
        stdout = capsys.readouterr().out
        m = json.loads((out / "metrics.json").read_text())
        key = method.replace("-", "_")
        assert m["method"] == method and m["num_examples"] == 40 and key in m
        sec = m[key]
        assert sec["eps"] == float(_EPS) and sec["pgd"] == {"steps": 10, "restarts": 1, "seed": 0}
        per = np.load(out / "certificates.npz")
        v, r, c = per["verified"], per["pgd_robust"], per["correct"]
        assert len(v) == len(r) == len(c) == 40
        # Per example: verified => not broken by PGD => correct; the JSON is their means.
        assert not np.any(v & ~r) and not np.any(r & ~c) and sec["violations"] == 0
        for name, arr in (("verified_accuracy", v), ("pgd_accuracy", r), ("clean_accuracy", c)):
            p = float(np.mean(arr))
            assert sec[name]["value"] == pytest.approx(p) and sec[name]["n"] == 40
            assert sec[name]["se"] == pytest.approx(np.sqrt(p * (1 - p) / 40))
        vv, pp, cc = (
            sec[k]["value"] for k in ("verified_accuracy", "pgd_accuracy", "clean_accuracy")
        )
        assert vv <= pp <= cc and sec["verified_le_pgd_le_clean"] is True
        assert 0 < cc and f"verified {vv:.4f}" in stdout and f"clean {cc:.4f}" in stdout
        runs[key] = per
    # The same model and data: the same clean predictions; CROWN-IBP takes the elementwise
    # better of its bound and IBP's, so it verifies every example IBP verifies.
    np.testing.assert_array_equal(runs["ibp"]["correct"], runs["crown_ibp"]["correct"])
    assert np.all(runs["crown_ibp"]["verified"] >= runs["ibp"]["verified"])
    # Against the library directly: the CLI's verdicts are `ibp.verified` on the same split.
    from jaxrobust.data import load_split
    from jaxrobust.train.loop import restore_run

    run, state, _ = restore_run(smoke_run)
    x, y = load_split(run.cfg.dataset, "test", data_dir=run.data_dir, limit=40)
    net = ibp.from_flax(state.apply_fn.__self__, state.variables())
    direct = np.asarray(ibp.verified(net, jnp.asarray(x), jnp.asarray(y), float(_EPS)))
    np.testing.assert_array_equal(runs["ibp"]["verified"], direct)


def test_a_verified_example_broken_by_pgd_is_flagged(smoke_run, tmp_path, capsys, monkeypatch):
    """An attack that 'breaks' everything (a stand-in for an unsound bound): the verified
    examples become violations, counted in the JSON and named on a warning line."""

    def breaks_all(logits_fn, x, y, key, **kw):
        return SimpleNamespace(success=jnp.ones(len(y), bool))

    monkeypatch.setattr(jaxrobust, "pgd", breaks_all)
    out = tmp_path / "flag"
    assert _certify(smoke_run, out, "ibp", "--eps", "0") == 0  # eps 0: some points verify
    err = capsys.readouterr().err
    sec = json.loads((out / "metrics.json").read_text())["ibp"]
    # eps 0 skips the attack (the ball is the point): no violation.
    assert sec["violations"] == 0 and "FLAG" not in err
    assert sec["pgd_accuracy"]["value"] == sec["clean_accuracy"]["value"]
    assert _certify(smoke_run, out, "ibp") == 0
    err = capsys.readouterr().err
    sec = json.loads((out / "metrics.json").read_text())["ibp"]
    per = np.load(out / "certificates.npz")
    assert per["verified"].sum() > 0 and sec["violations"] == int(per["verified"].sum())
    assert sec["pgd_accuracy"]["value"] == 0 and sec["verified_le_pgd_le_clean"] is False
    assert "FLAG" in err and f"{sec['violations']} example(s) verified by ibp" in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--method", "ibp"], "needs --eps"),
        (["--method", "crown-ibp", "--limit", "4"], "needs --eps"),
        (["--method", "ibp", "--eps", "-0.1"], "eps must be a finite number >= 0"),
        (["--method", "ibp", "--eps", "nan"], "eps must be a finite number >= 0"),
        (["--method", "ibp", "--eps", "0.1", "--sigma", "0.25"], "--sigma is an option of"),
        (["--method", "ibp", "--eps", "0.1", "--radii", "0.5"], "--radii is an option of"),
        (["--method", "smoothing", "--eps", "0.1"], "--eps is an option of"),
        (["--method", "smoothing", "--pgd-steps", "5"], "--pgd-steps is an option of"),
        (["--method", "ibp", "--eps", "0.1", "--pgd-restarts", "0"], "must be >= 1"),
    ],
)
def test_bad_options_answer_one_line(argv, says, smoke_run, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["certify", str(smoke_run), *argv, "--out", str(out)])
    assert says in _one_line_error(capsys, code)
    assert not out.exists()


def test_unsupported_model_answers_one_line_naming_the_supported(
    smoke_run, tmp_path, capsys, monkeypatch
):
    """A model `from_flax` does not convert (here the MLP, taken out of its table): exit 2,
    one line naming the supported models, nothing written."""
    real = ibp._builders
    monkeypatch.setattr(
        ibp, "_builders", lambda: {k: v for k, v in real().items() if k.__name__ != "MLP"}
    )
    out = tmp_path / "out"
    line = _one_line_error(capsys, _certify(smoke_run, out, "crown-ibp"))
    assert "--method crown-ibp: bound propagation does not support MLP" in line
    assert "supported models: MadryCNN, SmallCNN" in line
    assert not out.exists()


def test_help_says_ibp_does_not_resume(capsys):
    assert main(["certify", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--eps" in text and "crown-ibp" in text and "do not resume" in text
