"""`jaxrobust.poison`: triggers, the dirty-label and label-consistent backdoors, spectral
signatures and feature collision — invariants, known answers, determinism, jit, named
errors. Tiny inputs and linear models: every compile here is small."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxrobust as jr
from jaxrobust import poison
from jaxrobust.errors import InputError
from jaxrobust.poison.targeted import feature_collision

C = 3  # classes of the synthetic set
TRIG = poison.make_trigger((8, 8, 1), size=3)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (60, 8, 8, 1)).astype(np.float32)
    y = np.arange(60, dtype=np.int32) % C  # 20 per class
    return x, y


def _linear(seed=0):
    w = jax.random.normal(jax.random.key(seed), (64, C))
    return lambda x: x.reshape(x.shape[0], -1) @ w


# ------------------------------------------------------------------------------- triggers


def test_make_trigger_corners_and_pattern():
    assert (TRIG.row, TRIG.col) == (5, 5)
    np.testing.assert_array_equal(
        np.asarray(TRIG.pattern)[..., 0], [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    )
    t = poison.make_trigger((8, 8, 3), size=2, location="top_left", margin=1, pattern="solid")
    assert (t.row, t.col) == (1, 1) and t.pattern.shape == (2, 2, 3)
    assert poison.make_trigger((8, 8, 1), size=2, location=(0, 6)).col == 6


def test_stamp_writes_the_patch_only(data):
    x = data[0][:4]
    out = np.asarray(poison.stamp(x, TRIG))
    np.testing.assert_array_equal(out[:, 5:8, 5:8], np.broadcast_to(TRIG.pattern, (4, 3, 3, 1)))
    mask = np.ones((8, 8), bool)
    mask[5:8, 5:8] = False
    np.testing.assert_array_equal(out[:, mask], x[:, mask])
    one = np.asarray(poison.stamp(x[0], TRIG))  # a single image
    np.testing.assert_array_equal(one, out[0])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    amp=st.floats(0.0, 1.0),
    size=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_stamp_blends_and_stays_in_range(amp, size, seed):
    x = np.random.default_rng(seed).uniform(0, 1, (2, 8, 8, 1)).astype(np.float32)
    t = poison.make_trigger((8, 8, 1), size=size, amplitude=amp, location="top_right")
    out = np.asarray(poison.stamp(x, t))
    assert out.min() >= 0.0 and out.max() <= 1.0
    patch = x[:, :size, 8 - size :]
    want = (1 - amp) * patch + amp * np.asarray(t.pattern)
    np.testing.assert_allclose(out[:, :size, 8 - size :], want, atol=1e-6)


def test_trigger_errors():
    with pytest.raises(InputError, match="larger than the image"):
        poison.make_trigger((8, 8, 1), size=9)
    with pytest.raises(InputError, match="does not fit"):
        poison.make_trigger((8, 8, 1), size=3, location=(6, 0))
    with pytest.raises(InputError, match="location"):
        poison.make_trigger((8, 8, 1), location="middle")
    with pytest.raises(InputError, match="pattern"):
        poison.make_trigger((8, 8, 1), pattern="stripes")
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        poison.make_trigger((8, 8, 1), pattern=np.full((2, 2), 2.0))
    with pytest.raises(InputError, match="amplitude"):
        poison.make_trigger((8, 8, 1), amplitude=1.5)
    with pytest.raises(InputError, match="does not fit"):
        poison.stamp(np.zeros((1, 4, 4, 1), np.float32), TRIG._replace(row=2))


# ------------------------------------------------------------------------------ backdoors


@pytest.mark.parametrize("rate", [0.0, 0.25])
def test_dirty_label_invariants(data, rate):
    x, y = data
    p = poison.dirty_label(
        jax.random.key(1), x, y, target=1, rate=rate, trigger=TRIG, num_classes=C
    )
    px, py, mask = np.asarray(p.x), np.asarray(p.y), np.asarray(p.poisoned)
    assert mask.sum() == round(rate * len(y)) == len(set(np.asarray(p.indices).tolist()))
    assert np.all(y[mask] != 1) and np.all(py[mask] == 1)  # non-target images, relabelled
    np.testing.assert_array_equal(py[~mask], y[~mask])
    np.testing.assert_array_equal(px[~mask], x[~mask])
    np.testing.assert_array_equal(
        px[mask][:, 5:, 5:], np.broadcast_to(TRIG.pattern, px[mask][:, 5:, 5:].shape)
    )
    assert px.min() >= 0 and px.max() <= 1


def test_dirty_label_is_a_function_of_the_key_and_jits(data):
    x, y = data
    kw = dict(target=0, rate=0.2, trigger=TRIG, num_classes=C)
    a = poison.dirty_label(jax.random.key(3), x, y, **kw)
    b = poison.dirty_label(jax.random.key(3), x, y, **kw)
    c = poison.dirty_label(jax.random.key(4), x, y, **kw)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert set(np.asarray(a.indices).tolist()) != set(np.asarray(c.indices).tolist())
    jitted = jax.jit(lambda k, xx, yy: poison.dirty_label(k, xx, yy, **kw))(
        jax.random.key(3), jnp.asarray(x), jnp.asarray(y)
    )
    np.testing.assert_array_equal(jitted.x, a.x)
    np.testing.assert_array_equal(jitted.y, a.y)


def test_label_consistent_trigger_only(data):
    x, y = data
    p = poison.label_consistent(
        jax.random.key(2), x, y, target=2, rate=0.25, trigger=TRIG, num_classes=C
    )
    px, mask = np.asarray(p.x), np.asarray(p.poisoned)
    assert mask.sum() == 15 and np.all(y[mask] == 2)
    np.testing.assert_array_equal(np.asarray(p.y), y)
    np.testing.assert_array_equal(px[~mask], x[~mask])
    off = np.ones((8, 8, 1), bool)
    off[5:, 5:] = False
    np.testing.assert_array_equal(px[mask][:, off], x[mask][:, off])
    np.testing.assert_array_equal(px[mask][:, 5:, 5:], np.broadcast_to(TRIG.pattern, (15, 3, 3, 1)))


@pytest.mark.slow  # compiles PGD
def test_label_consistent_changes_only_target_images(data):
    x, y = data
    eps = 0.2
    p = poison.label_consistent(
        jax.random.key(2), x, y, target=2, rate=0.25, trigger=TRIG, num_classes=C,
        logits_fn=_linear(), threat=jr.linf(eps), steps=3,
    )  # fmt: skip
    px, mask = np.asarray(p.x), np.asarray(p.poisoned)
    assert mask.sum() == 15 and np.all(y[mask] == 2)
    np.testing.assert_array_equal(np.asarray(p.y), y)  # labels unchanged
    np.testing.assert_array_equal(px[~mask], x[~mask])
    off = np.ones((8, 8, 1), bool)
    off[5:, 5:] = False
    d = np.abs(px[mask] - x[mask])[:, off]
    assert d.max() <= eps + 1e-6 and d.max() > 0.5 * eps  # the perturbation, within ε
    np.testing.assert_array_equal(px[mask][:, 5:, 5:], np.broadcast_to(TRIG.pattern, (15, 3, 3, 1)))
    assert px.min() >= 0 and px.max() <= 1
    q = poison.label_consistent(
        jax.random.key(2), x, y, target=2, rate=0.25, trigger=TRIG, num_classes=C
    )
    np.testing.assert_array_equal(q.indices, p.indices)  # same key, same images


def test_backdoor_errors(data):
    x, y = data
    kw = dict(trigger=TRIG, num_classes=C)
    k = jax.random.key(0)
    for rate in (-0.1, 1.5, float("nan")):
        with pytest.raises(InputError, match="rate"):
            poison.dirty_label(k, x, y, target=0, rate=rate, **kw)
    with pytest.raises(InputError, match="target class 3"):
        poison.dirty_label(k, x, y, target=3, rate=0.1, **kw)
    with pytest.raises(InputError, match="only 40"):
        poison.dirty_label(k, x, y, target=0, rate=0.9, **kw)
    with pytest.raises(InputError, match="only 20"):
        poison.label_consistent(k, x, y, target=0, rate=0.5, **kw)
    with pytest.raises(InputError, match="needs a threat"):
        poison.label_consistent(k, x, y, target=0, rate=0.1, logits_fn=_linear(), **kw)
    big = poison.make_trigger((16, 16, 1), size=10)
    with pytest.raises(InputError, match="larger than the images"):
        poison.dirty_label(k, x, y, target=0, rate=0.1, trigger=big, num_classes=C)
    with pytest.raises(InputError, match="input range"):
        poison.dirty_label(k, x + 2, y, target=0, rate=0.1, **kw)


def test_backdoor_metrics_counts(data):
    x, y = data

    def corner_model(z):  # predicts class 1 iff the trigger's corner pixel is lit
        lit = z[:, 7, 7, 0] > 0.99
        return jax.nn.one_hot(jnp.where(lit, 1, 0), C) * 10.0

    m = poison.backdoor_metrics(corner_model, x, y, trigger=TRIG, target=1)
    assert m.n_triggered == 40 and m.attack_success == 1.0
    assert m.n_clean == 60 and m.clean_accuracy == pytest.approx(np.mean(y == 0))
    xt, yt = poison.triggered_test_split(x, y, trigger=TRIG, target=1)
    assert xt.shape == (40, 8, 8, 1) and np.all(yt == 1)


# ------------------------------------------------------------------------ spectral signatures


def _planted(seed=0, n_clean=200, n_bad=20, d=20):
    rng = np.random.default_rng(seed)
    clean0 = rng.normal(size=(n_clean, d))
    bad = rng.normal(size=(n_bad, d)) + 6.0 * np.eye(d)[0]  # a planted direction e_1
    clean1 = rng.normal(size=(n_clean, d))
    reps = np.concatenate([clean0, bad, clean1]).astype(np.float32)
    labels = np.array([0] * (n_clean + n_bad) + [1] * n_clean, np.int32)
    planted = np.zeros(len(labels), bool)
    planted[n_clean : n_clean + n_bad] = True
    return reps, labels, planted


def test_spectral_scores_match_the_svd_and_find_the_planted_points():
    reps, labels, planted = _planted()
    scores = np.asarray(poison.spectral_scores(reps, labels, 2))
    for c in (0, 1):
        r = reps[labels == c].astype(np.float64)
        r = r - r.mean(0)
        v = np.linalg.svd(r, full_matrices=False)[2][0]
        np.testing.assert_allclose(scores[labels == c], (r @ v) ** 2, rtol=2e-3, atol=2e-3)
    top = np.argsort(-scores[labels == 0])[:20]
    assert set(top.tolist()) == set(range(200, 220))  # the planted points score highest
    keep = np.asarray(poison.remove_top(scores, labels, np.ones(len(labels), bool),
                                        num_classes=2, eps=0.1))  # fmt: skip
    removed = ~keep
    assert removed[labels == 0].sum() == 33 and removed[labels == 1].sum() == 30  # ⌊1.5·0.1·n_c⌋
    d = poison.detection(removed, planted)
    assert d.recall == 1.0 and d.precision == pytest.approx(20 / 63)


def test_spectral_keep_mask_is_respected_and_jits():
    reps, labels, planted = _planted(seed=1)
    keep = ~planted  # the planted points already removed
    scores = poison.spectral_scores(reps, labels, 2, keep)
    new = np.asarray(poison.remove_top(scores, labels, keep, num_classes=2, eps=0.1))
    assert not new[planted].any()  # removed stays removed
    assert (keep & ~new)[labels == 0].sum() == 30  # ⌊1.5·0.1·200⌋ of the kept ones
    j = jax.jit(poison.spectral_scores, static_argnums=2)(jnp.asarray(reps), jnp.asarray(labels), 2)
    np.testing.assert_allclose(np.asarray(j), np.asarray(poison.spectral_scores(reps, labels, 2)))


def test_spectral_scores_of_wide_representations_match_the_svd_eager_and_jitted():
    # D = 300 above every class size (220 and 200 rows): the scores come from the rows'
    # Gram (64-row slots eagerly, all N rows under jit), and must equal the SVD's.
    reps, labels, _ = _planted(d=300)
    keep = np.ones(len(labels), bool)
    keep[:7] = False  # a kept subset: centring and the vector ignore the removed rows
    eager = np.asarray(poison.spectral_scores(reps, labels, 2, keep))
    jitted = np.asarray(
        jax.jit(poison.spectral_scores, static_argnums=2)(
            jnp.asarray(reps), jnp.asarray(labels), 2, jnp.asarray(keep)
        )
    )
    for c in (0, 1):
        kept = reps[(labels == c) & keep].astype(np.float64)
        mu = kept.mean(0)
        v = np.linalg.svd(kept - mu, full_matrices=False)[2][0]
        want = ((reps[labels == c] - mu) @ v) ** 2
        for got in (eager, jitted):
            np.testing.assert_allclose(got[labels == c], want, rtol=2e-3, atol=2e-2)
    top = np.argsort(-eager[labels == 0])[:20]
    assert set(top.tolist()) == set(range(200, 220))


def test_spectral_errors():
    reps, labels, _ = _planted()
    with pytest.raises(InputError, match=r"\(N, D\)"):
        poison.spectral_scores(reps[:, :, None], labels, 2)
    with pytest.raises(InputError, match="labels"):
        poison.spectral_scores(reps, labels, 1)
    with pytest.raises(InputError, match="eps"):
        poison.remove_top(np.zeros(len(labels)), labels, np.ones(len(labels), bool),
                          num_classes=2, eps=1.5)  # fmt: skip


# --------------------------------------------------------------------------- feature collision


@pytest.mark.slow  # compiles the engine
def test_feature_collision_moves_the_representation_to_the_target(data):
    x, _ = data
    w = jax.random.normal(jax.random.key(5), (64, 6))
    phi = lambda z: jnp.tanh(z.reshape(z.shape[0], -1) @ w)  # noqa: E731
    col = feature_collision(phi, x[:3], x[3:6], jax.random.key(0), beta=0.01, steps=30,
                            learning_rate=0.05)  # fmt: skip
    p = np.asarray(col.x)
    assert p.min() >= 0 and p.max() <= 1
    assert np.all(np.asarray(col.feature_distance) < 0.5 * np.asarray(col.start_feature_distance))
    with pytest.raises(InputError, match="same shape"):
        feature_collision(phi, x[:3], x[3:5], jax.random.key(0))
    with pytest.raises(InputError, match="beta"):
        feature_collision(phi, x[:3], x[3:6], jax.random.key(0), beta=-1.0)


# ----------------------------------------------------------------------------- as a dataset


@pytest.mark.slow  # writes a tfds dataset
def test_poisoned_dataset_reads_back(data, tmp_path):
    from jaxrobust.data import get_info, load_split

    x, y = data
    p = poison.dirty_label(jax.random.key(1), x, y, target=1, rate=0.1, trigger=TRIG, num_classes=C)
    name = poison.write_poisoned_dataset(tmp_path / "ds", p, (x[:9], y[:9]), trigger=TRIG,
                                         target=1, info=get_info("digits"))  # fmt: skip
    xb, yb = load_split(name, "train")
    np.testing.assert_array_equal(xb, np.asarray(p.x))
    np.testing.assert_array_equal(yb, np.asarray(p.y))
    xt, yt = load_split(name, "test_triggered")
    assert len(yt) == int(np.sum(y[:9] != 1)) and np.all(yt == 1)
    np.testing.assert_array_equal(xt, np.asarray(poison.stamp(x[:9][y[:9] != 1], TRIG)))
    from jaxrobust.data.derived import read_metadata

    meta = read_metadata(name)
    assert meta["poison"]["indices"] == sorted(np.asarray(p.indices).tolist())
    assert meta["poison"]["count"] == 6


@pytest.mark.slow  # a (smoke) training run
def test_jaxrobust_train_reads_a_poisoned_dataset(tmp_path):
    from jaxrobust.cli import main
    from jaxrobust.data import get_info, load_split

    x, y = load_split("digits", "train")
    xt, yt = load_split("digits", "test")
    p = poison.dirty_label(jax.random.key(0), x, y, target=0, rate=0.05, trigger=TRIG,
                           num_classes=10)  # fmt: skip
    name = poison.write_poisoned_dataset(tmp_path / "ds", p, (xt, yt), trigger=TRIG, target=0,
                                         info=get_info("digits"))  # fmt: skip
    out = tmp_path / "run"
    argv = ["train", "--config", "smoke", "--quiet", "--out", str(out), "--set",
            f"dataset={name}", "--set", "objective=standard", "--set", "epochs=3"]  # fmt: skip
    assert main(argv) == 0
    f = jr.load_run(out).logits_fn()
    m = poison.backdoor_metrics(f, xt, yt, trigger=TRIG, target=0)
    assert m.clean_accuracy > 0.5  # it learned digits from the poisoned set
    assert m.attack_success > 0.3  # and the trigger (a clean model: ~0)
