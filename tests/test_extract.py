"""`jaxrobust.extract`: the query-counting prediction API, substitute extraction, transfer
attacks and noise baselines, on a fixed linear victim (no training: fast), plus the slow
smoke of experiments/extraction.py."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxrobust as jr
from jaxrobust import extract as X
from jaxrobust.errors import InputError, named_error, raise_in_jit

SHAPE = (4, 4, 1)
TINY = X.FitConfig(hidden=(8,), steps=5)
CAP = 16  # one training program (capacity rows) for every extraction here


def _linear(scale: float):
    w = jax.random.normal(jax.random.key(7), (16, 3)) * scale
    return lambda x: x.reshape(x.shape[0], -1) @ w


VICTIMS = {s: _linear(s) for s in (0.1, 1.0, 10.0)}  # one object each: compiled once


def _victim(scale: float = 1.0):
    return VICTIMS[scale]


def _inputs(n: int, seed: int = 0) -> np.ndarray:
    return np.asarray(jax.random.uniform(jax.random.key(seed), (n, *SHAPE)), np.float32)


@pytest.fixture(scope="module")
def probs_api():
    return X.prediction_api(_victim(), output="probs", budget=10, num_classes=3)


@pytest.fixture(scope="module")
def labels_api():
    return X.prediction_api(_victim(), output="labels", budget=10, num_classes=3)


# ----------------------------------------------------------------------------- the API


def test_query_counts_exactly_and_refuses_over_budget(probs_api):
    x = _inputs(10)
    a, c = X.query(probs_api, x[:5], 0)
    assert a.shape == (5, 3) and c == 5 and isinstance(c, int)
    np.testing.assert_allclose(np.asarray(a).sum(-1), 1.0, rtol=1e-5)
    a, c = X.query(probs_api, x[5:10], c)  # exactly the budget is allowed
    assert c == 10 and X.remaining(probs_api, c) == 0
    with pytest.raises(X.QueryBudgetError, match="10 queries spent, 1 more asked, budget 10"):
        X.query(probs_api, x[:1], c)
    with pytest.raises(X.QueryBudgetError):  # one call that alone exceeds it
        X.query(probs_api, _inputs(11), 0)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=1, max_size=6))
def test_count_is_the_sum_of_batch_sizes(sizes):
    api = X.prediction_api(_victim(), output="labels", budget=12, num_classes=3)
    x, count = _inputs(4), 0
    for b in sizes:
        if count + b > 12:
            with pytest.raises(X.QueryBudgetError):
                X.query(api, x[:b], count)
            return
        _, count = X.query(api, x[:b], count)
    assert count == sum(sizes)


def test_label_api_answers_labels_only(labels_api):
    x = _inputs(6)
    a, _ = X.query(labels_api, x, 0)
    assert a.dtype == jnp.int32 and a.shape == (6,)
    np.testing.assert_array_equal(np.asarray(a), np.argmax(np.asarray(_victim()(x)), -1))
    assert set(X.PredictionAPI._fields) == {"answer", "output", "budget", "num_classes", "box"}


def test_label_only_extraction_sees_no_probabilities():
    """Victims with the same labels and different probabilities (logits scaled by 0.1 and
    10) give the label-only attacker the same answers and the same substitute; through the
    probability API they differ."""
    pool, key = _inputs(12, 1), jax.random.key(3)
    got = {}
    for scale in (0.1, 10.0):
        api = X.prediction_api(_victim(scale), output="labels", budget=12, num_classes=3)
        got[scale] = X.extract(api, pool, key, budget=12, fit=TINY, capacity=CAP)
    a, b = got[0.1], got[10.0]
    np.testing.assert_array_equal(a.answers, b.answers)
    assert a.answers.dtype == np.int32 and a.answers.shape == (12,)
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    probs = [
        X.query(X.prediction_api(_victim(s), budget=12, num_classes=3), pool, 0)[0]
        for s in (0.1, 10.0)
    ]
    assert not np.allclose(probs[0], probs[1])


def test_query_under_jit_counts_and_poisons_over_budget(probs_api, labels_api):
    x = jnp.asarray(_inputs(4))
    for api in (probs_api, labels_api):
        f = jax.jit(lambda x, c, api=api: X.query(api, x, c))
        a, c = f(x, jnp.int32(2))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(X.query(api, x, 2)[0]))
        assert int(c) == 6
        bad, _ = f(x, jnp.int32(7))  # 7 + 4 > 10: poisoned
        assert np.all(np.isnan(bad)) if api.output == "probs" else np.all(np.asarray(bad) == -1)
    with raise_in_jit():
        g = jax.jit(lambda x, c: X.query(probs_api, x, c))
        with pytest.raises(Exception) as info:
            jax.block_until_ready(g(x, jnp.int32(9)))
    err = named_error(info.value)
    # The budget keeps its own error class from inside the compiled call.
    assert isinstance(err, X.QueryBudgetError) and "query budget exceeded" in str(err)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"output": "logits"}, "output must be one of"),
        ({"budget": -1}, "budget must be an integer >= 0"),
        ({"budget": 1.5}, "budget must be an integer"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"box": (1.0, 0.0)}, "box"),
    ],
)
def test_bad_api_arguments_are_named(kwargs, match):
    args = {"output": "probs", "budget": 5, "num_classes": 3, **kwargs}
    with pytest.raises(InputError, match=match):
        X.prediction_api(_victim(), **args)


def test_bad_queries_are_named(probs_api):
    x = _inputs(2)
    with pytest.raises(InputError, match="declared input range"):
        X.query(probs_api, x + 2.0, 0)
    with pytest.raises(InputError, match="NaN"):
        X.query(probs_api, np.full_like(x, np.nan), 0)
    with pytest.raises(InputError, match="count must be >= 0"):
        X.query(probs_api, x, -1)
    with pytest.raises(InputError, match="count must be an integer"):
        X.query(probs_api, x, 1.0)
    with pytest.raises(InputError, match="numeric array"):
        X.query(probs_api, "images", 0)
    with pytest.raises(InputError, match="api must be a PredictionAPI"):
        X.query(_victim(), x, 0)
    with pytest.raises(InputError, match="cannot take x"):
        X.query(probs_api, np.zeros((2, 5), np.float32), 0)


# ----------------------------------------------------------------------------- extraction


def test_extract_spends_the_budget_and_no_more():
    pool = _inputs(6, 2)
    api = X.prediction_api(_victim(), output="probs", budget=20, num_classes=3)
    e = X.extract(
        api, pool, jax.random.key(0), budget=15, augmentation="jacobian", fit=TINY, capacity=CAP
    )
    assert e.count == 15 and e.pool_queries == 6 and len(e.x) == 15 and e.answers.shape == (15, 3)
    # Pool points first (a permutation of the pool), then λ-steps from queried points.
    assert sorted(map(bytes, e.x[:6])) == sorted(map(bytes, pool))
    assert np.all((e.x >= 0) & (e.x <= 1))
    step = np.abs(e.x[6:12] - e.x[:6]).max(axis=(1, 2, 3))
    assert np.all(step <= 0.1 + 1e-6) and np.all(step > 0.09)
    # Without augmentation only the pool is spent; the count threads through.
    e2 = X.extract(api, pool, jax.random.key(0), budget=5, count=e.count, fit=TINY, capacity=CAP)
    assert e2.count == 20 and e2.pool_queries == 5
    with pytest.raises(X.QueryBudgetError):
        X.extract(api, pool, jax.random.key(0), budget=1, count=e2.count, fit=TINY)


def test_extract_is_deterministic_by_key():
    pool = _inputs(8, 4)
    api = X.prediction_api(_victim(), output="probs", budget=100, num_classes=3)
    a, b, c = (
        X.extract(api, pool, jax.random.key(k), budget=5, fit=TINY, capacity=CAP) for k in (1, 1, 2)
    )
    np.testing.assert_array_equal(a.x, b.x)
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert not np.array_equal(a.x, c.x)
    z = jnp.asarray(pool)
    np.testing.assert_array_equal(np.asarray(a.logits_fn(z)), np.asarray(b.logits_fn(z)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget": 0}, "budget must be an integer >= 1"),
        ({"augmentation": "mixup"}, "augmentation must be one of"),
        ({"seed_size": 9}, "seed_size 9 exceeds"),
        ({"capacity": 2}, r"capacity \(2\) must be >= budget"),
        ({"lam": -0.1}, "lam must be"),
        ({"fit": X.FitConfig(hidden=(0,))}, "fit.hidden"),
        ({"fit": {"steps": 3}}, "fit must be a FitConfig"),
        ({"fit": X.FitConfig(model="bn_cnn")}, "has BatchNorm: give fit.batch_size"),
        ({"fit": X.FitConfig(batch_size=0)}, "fit.batch_size"),
        ({"fit": X.FitConfig(model="small_cnn", model_kwargs=("channels",))}, "pairs"),
        ({"fit": X.FitConfig(model_kwargs=(("dense", 4),))}, "the MLP takes hidden"),
    ],
)
def test_bad_extraction_arguments_are_named(probs_api, kwargs, match):
    args = {"budget": 4, **kwargs}
    with pytest.raises(InputError, match=match):
        X.extract(probs_api, _inputs(4), jax.random.key(0), **args)


def test_a_convolutional_substitute_fits_what_it_is_given():
    """FitConfig(model="small_cnn"): the substitute is the CNN (its variables hold conv
    kernels), masked padding rows do not count, and it fits separable labels: 32 random
    images labelled by their mean brightness (half above the median), 200 full-batch steps,
    training loss falls below a fifth of its start and training accuracy reaches 90%."""
    fit = X.FitConfig(
        steps=200,
        lr=1e-2,
        model="small_cnn",
        model_kwargs=(("channels", [4, 4]), ("dense", 8)),
    )
    x = _inputs(32, seed=3)
    y = (x.mean(axis=(1, 2, 3)) > np.median(x.mean(axis=(1, 2, 3)))).astype(np.int32)
    # 8 padding rows with the wrong labels and mask 0 must not matter.
    xp = np.concatenate([x, np.zeros((8, *SHAPE), np.float32)])
    tp = jax.nn.one_hot(np.concatenate([y, np.ones(8, np.int32)]), 2)
    mask = np.r_[np.ones(32), np.zeros(8)].astype(np.float32)
    variables, logits_fn, losses = X.fit_classifier(jax.random.key(0), xp, tp, mask, fit=fit)
    assert "conv1_1" in variables["params"] and "batch_stats" not in variables
    assert float(losses[-1]) < float(losses[0]) / 5
    assert np.mean(np.asarray(jnp.argmax(logits_fn(jnp.asarray(x)), -1)) == y) >= 0.9
    model = X.substitute_model(fit._replace(model_kwargs=(("channels", (4, 4)), ("dense", 8))), 2)
    assert model.channels == (4, 4) and model.dense == 8


def test_minibatch_training_draws_only_unmasked_rows_and_is_keyed():
    """FitConfig.batch_size: each step trains on rows drawn from the unmasked ones (NaN
    padding would poison the loss if a masked row were ever drawn); the key decides the
    draws (same key, same substitute; another key, another one); full-batch fits ignore it."""
    x = np.asarray(_inputs(8)).copy()
    x[5:] = np.nan
    t = jax.nn.one_hot(jnp.arange(8) % 3, 3)
    mask = jnp.array([1, 1, 1, 1, 1, 0, 0, 0], jnp.float32)
    fit = X.FitConfig(model="small_cnn", model_kwargs=(("channels", (2, 2)), ("dense", 4)),
                      steps=6, lr=1e-2, batch_size=3)  # fmt: skip
    a, _, la = X.fit_classifier(jax.random.key(0), x, t, mask, fit=fit)
    b, _, lb = X.fit_classifier(jax.random.key(0), x, t, mask, fit=fit)
    _, _, lc = X.fit_classifier(jax.random.key(1), x, t, mask, fit=fit)
    assert la.shape == (6,) and np.all(np.isfinite(np.asarray(la)))
    np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))
    assert not np.allclose(np.asarray(la), np.asarray(lc))
    jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), a, b)
    with pytest.raises(jr.InputError, match="no row"):
        X.fit_classifier(jax.random.key(0), x, t, 0 * mask, fit=fit)
    for bad in (-mask, mask.at[0].set(jnp.nan)):
        with pytest.raises(jr.InputError, match="mask weights must be >= 0"):
            X.fit_classifier(jax.random.key(0), x, t, bad, fit=fit)


def test_batchnorm_substitute_trains_on_minibatches_and_predicts_with_running_averages():
    """A bn_cnn substitute (batch_size given): the padding rows never enter the batch
    statistics (NaN padding would make them NaN), the running averages move off their
    initial values, and the returned logits_fn is the model in inference mode."""
    from jaxrobust.models import create_model

    x = np.asarray(_inputs(8)).copy()
    x[6:] = np.nan
    t = jax.nn.one_hot(jnp.arange(8) % 3, 3)
    mask = (jnp.arange(8) < 6).astype(jnp.float32)
    fit = X.FitConfig(model="bn_cnn", model_kwargs=(("channels", (2, 2)),), steps=5,
                      batch_size=4)  # fmt: skip
    variables, logits_fn, losses = X.fit_classifier(jax.random.key(0), x, t, mask, fit=fit)
    stats = variables["batch_stats"]
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(stats))
    assert np.all(np.isfinite(np.asarray(losses)))
    assert not np.allclose(np.asarray(stats["bn1_1"]["mean"]), 0.0)
    model = create_model("bn_cnn", 3, channels=(2, 2))
    want = model.apply(variables, jnp.asarray(x[:6]), train=False)
    np.testing.assert_allclose(np.asarray(logits_fn(jnp.asarray(x[:6]))), np.asarray(want),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_empty_pool_and_bad_key_are_named(probs_api):
    with pytest.raises(InputError, match="pool is empty"):
        X.extract(probs_api, np.zeros((0, *SHAPE), np.float32), jax.random.key(0), budget=2)
    with pytest.raises(InputError, match="PRNG key"):
        X.extract(probs_api, _inputs(2), 0, budget=2)


def test_pool_disjoint_from_test_is_checked(digits_test):
    from jaxrobust.data import load_split

    x_test, _ = digits_test
    x_train, _ = load_split("digits", "train")
    assert not X.overlap(x_train, x_test).any()
    X.check_disjoint(x_train, x_test)
    leaky = np.concatenate([x_train[:5], x_test[[3, 7]]])
    np.testing.assert_array_equal(X.overlap(leaky, x_test), [False] * 5 + [True] * 2)
    with pytest.raises(InputError, match="shares 2 input"):
        X.check_disjoint(leaky, x_test)
    with pytest.raises(InputError, match="differ in shape"):
        X.overlap(x_train[:, :4], x_test)


def test_soft_targets_and_loss():
    probs = jnp.asarray([[0.2, 0.8], [1.0, 0.0]])
    np.testing.assert_array_equal(X.targets_of(probs, "probs", 2), probs)
    np.testing.assert_array_equal(
        X.targets_of(jnp.asarray([1, 0]), "labels", 2), [[0.0, 1.0], [1.0, 0.0]]
    )
    z = jnp.asarray([[0.3, -1.2], [2.0, 0.5]])
    ce = X.soft_cross_entropy(z, jax.nn.one_hot(jnp.asarray([1, 0]), 2))
    np.testing.assert_allclose(ce, jr.cross_entropy(z, jnp.asarray([1, 0])), rtol=1e-6)


# ----------------------------------------------------------------------------- transfer


def test_noise_names_other_norms():
    with pytest.raises(InputError, match="supports linf and l2"):
        X.noise_like(_inputs(2), jax.random.key(1), jr.l1(1.0))


@pytest.mark.slow
def test_transfer_attack_and_noise_stay_in_the_ball():
    x = _inputs(4)
    y = np.argmax(np.asarray(_victim()(x)), -1)
    adv = X.transfer_attack(_victim(), x, y, jax.random.key(0), threat=jr.l2(0.5), steps=3)
    assert adv.shape == x.shape
    assert np.all(np.sqrt(((adv - x) ** 2).sum(axis=(1, 2, 3))) <= 0.5 + 1e-5)
    # The attack moves towards the substitute's error: its loss at x_adv beats x's.
    z0, z1 = _victim()(jnp.asarray(x)), _victim()(jnp.asarray(adv))
    assert np.all(np.asarray(jr.cross_entropy(z1, y) >= jr.cross_entropy(z0, y) - 1e-6))
    inner = x * 0.5 + 0.25  # inside the box with room: the box never binds
    d2 = X.noise_like(inner, jax.random.key(1), jr.l2(0.5)) - inner
    np.testing.assert_allclose(np.sqrt((d2**2).sum(axis=(1, 2, 3))), 0.5, rtol=1e-4)
    dinf = X.noise_like(inner, jax.random.key(1), jr.linf(0.1)) - inner
    np.testing.assert_allclose(np.abs(dinf), 0.1, rtol=1e-4)


def test_transfer_attack_names_bad_input():
    x = _inputs(4)
    y = np.zeros(4, np.int32)
    with pytest.raises(InputError, match="attack must be one of"):
        X.transfer_attack(_victim(), x, y, jax.random.key(0), threat=jr.l2(0.5), attack="cw")
    with pytest.raises(InputError, match="y must be"):
        X.transfer_attack(_victim(), x, y[:2], jax.random.key(0), threat=jr.l2(0.5))


# ----------------------------------------------------------------------------- experiment


@pytest.mark.slow
def test_extraction_experiment_smoke(tmp_path):
    from jaxrobust.cli import main

    assert main(["experiment", "extraction", "--smoke", "--out", str(tmp_path)]) == 0
    d = json.loads((tmp_path / "digits_smoke.json").read_text())
    assert d["smoke"] is True and d["git_commit"] and d["wall_time_s"] > 0
    e = d["extraction"]
    for k in ("agreement_probs", "agreement_labels", "transfer_success", "noise_success"):
        assert e[k]["method"] == "measured" and e[k]["n"] > 0 and e[k]["se"] is not None
        assert 0.0 <= e[k]["value"] <= 1.0
    assert e["budgets"] == d["settings"]["budgets"] and e["norm"] == "l2" and e["eps"] == 1.0
    for curve in e["curves"].values():
        for pts in curve.values():
            assert all(p["queries"] <= p["budget"] for p in pts)
    assert d["settings"]["pool_dropped_as_test_duplicates"] == 0
    assert set(e["blackbox"]) == {
        "square_per_example_budget",
        "bandits_per_example_budget",
        "square_equal_total_budget",
    }
    png = tmp_path / "digits_smoke.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_extraction_experiment_smoke_bn_cnn_on_shapes(tmp_path):
    """`--model bn_cnn`: the victim is the conv-BN CNN and the substitute the same
    architecture trained on minibatches (the JSON says so), and every headline rate is
    measured within its budget."""
    from jaxrobust.cli import main

    args = ["experiment", "extraction", "--smoke", "--dataset", "shapes", "--model", "bn_cnn"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    d = json.loads((tmp_path / "shapes_bn_cnn_smoke.json").read_text())
    s = d["settings"]
    assert s["victim"].startswith("bn_cnn(channels=(4, 8))")
    assert s["substitute"].startswith("bn_cnn(channels=(4, 8)), AdamW 0.002, 30 steps of batch 16")
    e = d["extraction"]
    for k in ("agreement_probs", "agreement_labels", "transfer_success", "noise_success"):
        assert e[k]["method"] == "measured" and e[k]["n"] > 0 and 0.0 <= e[k]["value"] <= 1.0
    for curve in e["curves"].values():
        for pts in curve.values():
            assert all(p["queries"] <= p["budget"] for p in pts)
    assert (tmp_path / "shapes_bn_cnn_smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
