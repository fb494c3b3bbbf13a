"""`experiments/transferability.py`: the transfer-matrix definition on small fixed models
(a source identical to the target gives its white-box success; a constant target is never
fooled; entries, n and SEs by hand), the random-noise baseline's norm, and the smoke runs of
the experiment on digits and shapes (slow: they train seven models each)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_experiments import _module

from jaxrobust.cli import main


def _threshold(c: float):
    """A 2-class model on (B, 1) inputs: class 1 iff x > c."""
    return lambda x: jnp.concatenate([c - x, x - c], axis=-1) * 10.0


def _linear(seed: int):
    w = jax.random.normal(jax.random.key(seed), (4, 3))
    return lambda x: x.reshape(x.shape[0], -1) @ w


def _constant(c: int, num_classes: int = 3):
    return lambda x: jnp.zeros((x.shape[0], num_classes)).at[:, c].set(1.0)


def test_entries_n_and_se_by_hand():
    T = _module("transferability")
    models = {"a": _threshold(0.5), "b": _threshold(0.3)}
    x = np.array([[0.6], [0.7], [0.2], [0.4], [0.9], [0.1]], np.float32)
    y = np.array([1, 1, 0, 0, 1, 0])
    # a predicts [1,1,0,0,1,0]: all correct; b predicts [1,1,0,1,1,0]: wrong at index 3.
    x_adv = np.array([[0.45], [0.2], [0.6], [0.4], [0.35], [0.1]], np.float32)
    m = T.transfer_matrix(models, x, y, {"a": x_adv}, noisy=x_adv)
    # a at x_adv predicts [0,0,1,0,0,0]: wrong at 0, 1, 2, 4 of its 6 correct points.
    assert m["white_box"]["a"]["value"] == pytest.approx(4 / 6) and m["white_box"]["a"]["n"] == 6
    # b at x_adv predicts [1,0,1,1,1,0]; both correct at {0,1,2,4,5}; b wrong at 1, 2.
    e = m["transfer"]["a"]["b"]
    assert e["n"] == 5 and e["value"] == pytest.approx(2 / 5)
    assert e["se"] == pytest.approx(np.sqrt(0.4 * 0.6 / 5))
    assert m["transfer"]["a"]["a"] is m["white_box"]["a"]
    # noise baseline over each target's own correct points: b wrong at 1, 2 of 5.
    assert m["noise"]["b"]["n"] == 5 and m["noise"]["b"]["value"] == pytest.approx(2 / 5)
    assert m["clean_accuracy"]["b"]["value"] == pytest.approx(5 / 6)
    assert set(m["transfer"]) == {"a"} and set(m["transfer"]["a"]) == {"a", "b"}


def test_identical_target_gives_white_box_success_and_constant_target_zero():
    T = _module("transferability")
    f = _linear(0)
    x = np.array(jax.random.uniform(jax.random.key(1), (64, 2, 2, 1)))
    y = np.array(jnp.argmax(f(jnp.asarray(x)), -1))  # f is right everywhere ...
    y[:8] = (y[:8] + 1) % 3  # ... but on 8 points
    c = int(np.bincount(y[8:]).argmax())  # the constant model's class: one f often predicts
    models = {"src": f, "copy": f, "const": _constant(c)}
    key = jax.random.key(2)
    x_adv = T.craft(f, x, y, key, eps=1.0, steps=10)
    m = T.transfer_matrix(models, x, y, {"src": x_adv}, noisy=T.random_noise(x, key, 1.0))
    correct = np.asarray(jnp.argmax(f(jnp.asarray(x)), -1)) == y
    success = np.asarray(jnp.argmax(f(jnp.asarray(x_adv)), -1)) != y
    wb = m["white_box"]["src"]
    assert wb["n"] == int(correct.sum()) == 56
    assert wb["value"] == pytest.approx(success[correct].mean())
    copy = m["transfer"]["src"]["copy"]
    assert [copy[k] for k in ("value", "n", "se")] == [wb[k] for k in ("value", "n", "se")]
    assert 0 < wb["value"] < 1  # the attack does something at this radius, not everything
    const = m["transfer"]["src"]["const"]
    assert const["value"] == 0.0 and const["se"] == 0.0
    assert const["n"] == int(np.sum(correct & (y == c))) > 0
    assert m["noise"]["const"]["value"] == 0.0 and m["noise"]["const"]["n"] == int(np.sum(y == c))
    # A model that is never right has no points to measure on.
    m = T.transfer_matrix({"const": _constant(0)}, x, np.full(64, 1), {"const": x_adv})
    assert m["white_box"]["const"] == {
        "value": None,
        "method": "measured",
        "n": 0,
        "se": None,
        "how": m["white_box"]["const"]["how"],
    }


def test_random_noise_has_the_norm_and_stays_in_the_box():
    T = _module("transferability")
    x = np.array(jax.random.uniform(jax.random.key(0), (32, 8, 8, 1)))
    x[:4] = 0.0  # on the box's corner half of every direction is clipped away
    for eps in (0.5, 2.0):
        z = T.random_noise(x, jax.random.key(1), eps)
        d = (z - x).reshape(32, -1)
        assert np.allclose(np.linalg.norm(d, axis=1), eps, rtol=1e-4)
        assert z.min() >= 0.0 and z.max() <= 1.0
    a, b = (T.random_noise(x, jax.random.key(k), 1.0) - x for k in (1, 2))
    cos = np.sum((a * b).reshape(32, -1), 1)  # both have norm 1
    assert np.all(np.abs(cos[4:]) < 0.9)  # independent draws point elsewhere


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["digits", "shapes"])
def test_transferability_smoke(tmp_path, dataset):
    args = ["experiment", "transferability", "--smoke", "--dataset", dataset]
    assert main([*args, "--out", str(tmp_path)]) == 0
    d = json.loads((tmp_path / f"{dataset}_smoke.json").read_text())
    names = [
        "standard_a",
        "standard_b",
        "standard_wide",
        "robust_linf",
        "robust_l2",
        "d_rand",
        "d_det",
    ]
    assert d["smoke"] is True and list(d["models"]) == names
    assert d["constructions"]["d_det"]["label_check"]["passed"] is True
    assert len(d["matrices"]) == len(_module("transferability").ATTACK_EPS[dataset])
    for m in d["matrices"].values():
        assert list(m["transfer"]) == names and list(m["noise"]) == names
        for s in names:
            assert m["white_box"][s] == m["transfer"][s][s]
            for e in m["transfer"][s].values():
                assert e["n"] <= 64 and (e["value"] is None or 0 <= e["value"] <= 1)
        assert m["perturbation_l2_mean"]["noise"] == pytest.approx(m["eps"], rel=1e-3)
    assert (tmp_path / f"{dataset}_smoke.png").read_bytes()[:4] == b"\x89PNG"
    assert d["git_commit"] and d["wall_time_s"] > 0
