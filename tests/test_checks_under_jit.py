"""Bad input and bad model output never give a number (issue 11): eagerly a named error;
under `jax.jit` / `vmap` / `grad` a poisoned result by default (x_adv and value NaN, every
example broken; `raise_if_poisoned` names it on the host) and, traced under
`errors.raise_in_jit()`, a named error from inside the call. One test per (attack, case),
each on a tiny linear model.

Every jitted attack takes the bad values as arguments (x, y, ε and a logit scale that
makes the model return NaN or inf), so each attack compiles once per mode for all its cases.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrobust as jr
from jaxrobust import errors
from jaxrobust.errors import InputError, named_error

B, H, C = 4, 4, 4  # batch, image side (H × H × 1 images), classes
W = jax.random.normal(jax.random.key(0), (H * H, C))
X = np.asarray(jax.random.uniform(jax.random.key(1), (B, H, H, 1)), np.float32)
Y = np.arange(B, dtype=np.int32) % C
KEY = jax.random.key(2)


def model(scale):
    """Linear logits times `scale`: NaN or inf scales make non-finite logits."""
    return lambda x: (x.reshape(x.shape[0], -1) @ W) * scale


def _objective(scale):
    return lambda z: model(scale)(z).sum(axis=1)


def _spatial(eps):
    return jr.spatial(max_angle=30.0 * eps, max_dx=1.0)


# Each attack as fn(x, y, eps, scale) -> something with `.success` / `.result.success`.
ATTACKS = {
    "pgd": lambda x, y, e, s: jr.pgd(model(s), x, y, KEY, threat=jr.linf(e), steps=2),
    "pgd_l2": lambda x, y, e, s: jr.pgd(model(s), x, y, KEY, threat=jr.l2(e), steps=2),
    "fgsm": lambda x, y, e, s: jr.fgsm(model(s), x, y, KEY, threat=jr.linf(e)),
    "apgd": lambda x, y, e, s: jr.apgd(model(s), x, y, KEY, threat=jr.linf(e), steps=3),
    "apgd_targeted": lambda x, y, e, s: jr.apgd_targeted(
        model(s), x, y, KEY, threat=jr.linf(e), steps=3, n_target_classes=2
    ),
    "fab": lambda x, y, e, s: jr.fab(model(s), x, y, KEY, threat=jr.linf(e), steps=2),
    "fab_targeted": lambda x, y, e, s: jr.fab_targeted(
        model(s), x, y, KEY, threat=jr.l2(e), steps=2, n_target_classes=2
    ),
    "square": lambda x, y, e, s: jr.square(model(s), x, y, KEY, threat=jr.linf(e), queries=4),
    "nes": lambda x, y, e, s: jr.query_limited_attack(
        model(s), x, y, KEY, threat=jr.linf(e), estimator="nes", max_queries=6, nes_samples=2
    ),
    "bandits": lambda x, y, e, s: jr.query_limited_attack(
        model(s), x, y, KEY, threat=jr.l2(e), estimator="bandits", max_queries=6
    ),
    "grid": lambda x, y, e, s: jr.grid(model(s), x, y, threat=_spatial(e), angles=2),
    "worst_of_k": lambda x, y, e, s: jr.worst_of_k(model(s), x, y, KEY, threat=_spatial(e), k=2),
    "optimize": lambda x, y, e, s: jr.optimize(
        _objective(s), x, KEY, threat=jr.linf(e), steps=2, step_size=0.1
    ),
    "best_of": lambda x, y, e, s: jr.best_of(
        _objective(s), x, lambda i: jnp.zeros_like(x), 2, threat=jr.linf(e)
    ),
}
NO_LABELS = ("optimize", "best_of")
SPATIAL = ("grid", "worst_of_k")


class Case(NamedTuple):
    x: np.ndarray
    y: np.ndarray
    eps: float
    scale: float
    pattern: str


def _with(i, v):
    x = X.copy()
    x.flat[i] = v
    return x


CASES = {
    "x_0_255": Case(X * 255, Y, 0.1, 1.0, r"declared input range \[0\.0, 1\.0\]"),
    "x_negative": Case(X - 0.5, Y, 0.1, 1.0, r"declared input range"),
    "x_nan": Case(_with(5, np.nan), Y, 0.1, 1.0, r"x contains NaN"),
    "x_inf": Case(_with(7, np.inf), Y, 0.1, 1.0, r"x contains inf"),
    "logits_nan": Case(X, Y, 0.1, np.nan, r"non-finite logits"),
    "logits_inf": Case(X, Y, 0.1, np.inf, r"non-finite logits"),
    "label_too_large": Case(X, np.array([0, 1, 2, C], np.int32), 0.1, 1.0, r"labels in"),
    "label_negative": Case(X, np.array([0, -1, 2, 3], np.int32), 0.1, 1.0, r"labels in"),
    "eps_negative": Case(X, Y, -0.1, 1.0, r"eps must be"),
    "eps_nan": Case(X, Y, np.nan, 1.0, r"eps must be"),
    "eps_inf": Case(X, Y, np.inf, 1.0, r"eps must be"),
}


def _applies(attack, case):
    if attack in NO_LABELS and case.startswith("label"):
        return False
    return True


PAIRS = [(a, c) for a in ATTACKS for c in CASES if _applies(a, c)]
_JITTED: dict = {}


def _jitted(attack, raising=False):
    """The attack jitted as a user would (poisoning only), or traced under raise_in_jit."""
    if (attack, raising) not in _JITTED:
        fn = errors.with_callbacks(ATTACKS[attack]) if raising else ATTACKS[attack]
        _JITTED[attack, raising] = jax.jit(fn)
    return _JITTED[attack, raising]


def _pattern(attack, case):
    pattern = CASES[case].pattern
    if attack in SPATIAL and case.startswith("eps"):
        return r"max_angle must be"
    return pattern


def _result(out):
    """The Result fields of any attack's output (BlackBoxResult nests them)."""
    return out if hasattr(out, "x_adv") else out.result


def _run(fn, case):
    c = CASES[case]
    return jax.block_until_ready(fn(c.x, c.y, jnp.float32(c.eps), jnp.float32(c.scale)))


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_valid_input_runs_under_jit(attack):
    out = _result(_jitted(attack)(X, Y, jnp.float32(0.1), jnp.float32(1.0)))
    assert not np.any(np.isnan(np.asarray(out.value)))
    assert not np.any(np.isnan(np.asarray(out.x_adv)))


def _assert_poisoned(out):
    res = _result(out)
    assert np.all(np.asarray(res.success))
    assert np.all(np.isnan(np.asarray(res.value)))
    assert np.all(np.isnan(np.asarray(res.x_adv)))
    with pytest.raises(InputError, match="a check on traced values failed"):
        errors.raise_if_poisoned(out)


@pytest.mark.parametrize(("attack", "case"), PAIRS)
def test_bad_input_under_jit_is_poisoned_or_named(attack, case):
    """By default no number comes out (every example broken, NaN x_adv and value);
    traced under raise_in_jit the call fails with the problem named."""
    _assert_poisoned(_run(_jitted(attack), case))
    with pytest.raises(Exception) as info:
        _run(_jitted(attack, raising=True), case)
    err = named_error(info.value)
    assert isinstance(err, InputError), info.value
    assert re.search(_pattern(attack, case), str(err)), str(err)


@pytest.mark.parametrize(("attack", "case"), PAIRS)
def test_bad_input_named_eagerly(attack, case):
    c = CASES[case]
    with pytest.raises(InputError, match=_pattern(attack, case)):
        ATTACKS[attack](c.x, c.y, c.eps, c.scale)


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_failed_check_poisons_the_result_even_if_the_callback_cannot_raise(attack, monkeypatch):
    """Under raise_in_jit too, no confident number comes out where the host callback
    does not raise: every example broken, x_adv and value NaN (same compiled program)."""
    monkeypatch.setattr(errors, "_raise_failed", lambda *a: None)
    for case in ("x_0_255", "logits_nan"):
        _assert_poisoned(_run(_jitted(attack, raising=True), case))


def test_empty_batch_is_named_under_jit_and_eagerly():
    for attack in ("pgd", "square", "fab", "optimize"):
        fn = ATTACKS[attack]
        args = (X[:0], Y[:0], 0.1, 1.0)
        with pytest.raises(InputError, match="empty batch"):
            fn(*args)
        with pytest.raises(InputError, match="empty batch"):
            jax.jit(fn)(*args)


def test_infinite_radius_is_rejected_at_construction():
    for build in (jr.linf, jr.l2, jr.l1):
        with pytest.raises(InputError, match="finite"):
            build(float("inf"))
    with pytest.raises(InputError, match="max_angle must be finite"):
        jr.spatial(max_angle=float("inf"))
    with pytest.raises(InputError, match="finite number"):
        jr.linf(0.1, hi=float("inf"))


def test_eager_label_error_names_the_labels_not_the_logits():
    y = np.array([0, 1, 2, C + 3], np.int32)
    for attack in ("pgd", "apgd", "fgsm", "square"):
        with pytest.raises(InputError, match=rf"labels in \[0, {C + 3}\] but the model has {C}"):
            ATTACKS[attack](X, y, 0.1, 1.0)


def test_traced_target_out_of_range_is_named():
    def targeted(x, y, t):
        return jr.pgd(model(1.0), x, y, KEY, threat=jr.linf(0.1), steps=1, target=t)

    _assert_poisoned(jax.jit(targeted)(X, Y, Y + C))
    fn = jax.jit(errors.with_callbacks(targeted))
    fn(X, Y, (Y + 1) % C)
    with pytest.raises(Exception) as info:
        jax.block_until_ready(fn(X, Y, Y + C))
    assert re.search("target holds labels", str(named_error(info.value)))


def test_vmap_over_batches_names_the_bad_one():
    fn = jax.jit(jax.vmap(ATTACKS["pgd"], in_axes=(0, 0, None, None)))
    xs, ys = np.stack([X, X]), np.stack([Y, Y])
    out = jax.block_until_ready(fn(xs, ys, 0.1, 1.0))
    assert out.success.shape == (2, B)
    bad = fn(np.stack([X, X * 255]), ys, 0.1, 1.0)  # only the bad batch is poisoned
    assert not errors.is_poisoned(bad.value[0]) and errors.is_poisoned(bad.value[1])
    fn = jax.jit(errors.with_callbacks(jax.vmap(ATTACKS["pgd"], in_axes=(0, 0, None, None))))
    with pytest.raises(Exception) as info:
        jax.block_until_ready(fn(np.stack([X, X * 255]), ys, 0.1, 1.0))
    assert "declared input range" in str(named_error(info.value))


def test_vmap_over_eps_names_the_bad_radius():
    fn = jax.jit(errors.with_callbacks(jax.vmap(ATTACKS["pgd"], in_axes=(None, None, 0, None))))
    fn(X, Y, jnp.array([0.1, 0.2]), 1.0)
    with pytest.raises(Exception) as info:
        jax.block_until_ready(fn(X, Y, jnp.array([0.1, -0.2]), 1.0))
    assert "eps must be finite and >= 0, got -0.2" in str(named_error(info.value))


def test_grad_through_an_attack_names_the_problem():
    """A meta-objective differentiated through the attack (w.r.t. the model's scale)."""

    def meta(scale, x):
        return jr.pgd(model(scale), x, Y, KEY, threat=jr.linf(0.1), steps=1).value.sum()

    assert np.isnan(float(jax.jit(jax.grad(meta))(1.0, X * 255)))  # poisoned: NaN gradient
    fn = jax.jit(errors.with_callbacks(jax.grad(meta)))
    assert np.isfinite(float(fn(1.0, X)))
    with pytest.raises(Exception) as info:
        jax.block_until_ready(fn(1.0, X * 255))
    assert "declared input range" in str(named_error(info.value))


def test_named_error_passes_through_and_ignores_others():
    err = InputError("x")
    assert named_error(err) is err
    assert named_error(RuntimeError("ValueError: no")) is None


def test_only_raise_in_jit_puts_a_callback_in_the_program():
    """By default (and under poison_only, even inside raise_in_jit) an attack's program
    holds no host callback: it can be exported and persistently cached; the bad input
    still cannot give a number."""

    def lowered(fn):
        return jax.jit(fn).lower(X, Y, 0.1, 1.0).as_text().lower()

    pgd = ATTACKS["pgd"]
    assert "callback" not in lowered(pgd)
    assert "callback" in lowered(errors.with_callbacks(pgd))
    with errors.raise_in_jit():
        assert "callback" in lowered(lambda *a: pgd(*a))
        assert "callback" not in lowered(errors.without_callbacks(pgd))
    jax.export.export(jax.jit(pgd))(X, Y, 0.1, 1.0)  # exportable
    fn = jax.jit(lambda *a: pgd(*a))
    out = jax.block_until_ready(fn(X * 255, Y, 0.1, 1.0))
    assert errors.is_poisoned(out.value) and np.all(np.asarray(out.success))
    assert errors.raise_if_poisoned(fn(X, Y, 0.1, 1.0)) is not None


def test_index_checks_name_shape_dtype_and_range_eagerly_and_traced():
    """One helper checks every per-example index (target classes, feature components):
    static problems raise now, the range raises now when concrete and is a fused `Check`
    (true exactly for out-of-range values) when traced."""
    idx = np.array([0, 2, 3, 1], np.int32)
    assert errors.index_checks(idx, 4, 4, "target", "the model's classes", "class") == []
    with pytest.raises(InputError, match=r"target must hold one class per example, shape \(4,\)"):
        errors.index_checks(idx[:3], 4, 4, "target", "the model's classes", "class")
    with pytest.raises(InputError, match="component must hold integer indices, got dtype float32"):
        errors.index_checks(idx.astype(np.float32), 4, 4, "component", "the layer's size")
    with pytest.raises(InputError, match=re.escape("holds an index outside [0, 3) (the layer")):
        errors.index_checks(idx, 3, 4, "component", "the layer's size")

    @jax.jit
    def flags(v):
        (check,) = errors.index_checks(v, 3, 4, "target", "the model's classes", "class")
        return check.bad, check.values[0]

    bad, count = flags(idx)  # the 3 is outside [0, 3)
    assert bool(bad) and int(count) == 1
    bad, count = flags(idx % 3)
    assert not bool(bad) and int(count) == 0
