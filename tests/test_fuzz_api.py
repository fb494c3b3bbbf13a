"""Fuzz the public API with bad arguments (issue 11): every attack's and threat
constructor's arguments get random bad values; each call must end in a named
`JaxRobustError` (eagerly; under jit a poisoned result that `errors.raise_if_poisoned`
names, and, traced under `errors.raise_in_jit()`, an error from inside the call), never in
another traceback and never in a silent result.

CI runs a bounded number of examples per test; set `JAXROBUST_FUZZ_EXAMPLES=2000` for a
larger run by hand. The cases tried are counted and printed at the end of the module
(and appended to the file named by `JAXROBUST_FUZZ_REPORT`, if set).
"""

from __future__ import annotations

import collections
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxrobust as jr
from jaxrobust import errors
from jaxrobust.errors import JaxRobustError, named_error

EXAMPLES = int(os.environ.get("JAXROBUST_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
COUNTS: collections.Counter = collections.Counter()

B, H, C = 4, 4, 4
W = jax.random.normal(jax.random.key(0), (H * H, C))
X = np.asarray(jax.random.uniform(jax.random.key(1), (B, H, H, 1)), np.float32)
Y = np.arange(B, dtype=np.int32) % C
KEY = jax.random.key(2)


def model(x):
    return x.reshape(x.shape[0], -1) @ W


def scaled(scale):
    return lambda x: model(x) * scale


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    line = (
        f"fuzz_api: {COUNTS['tried']} bad-input cases tried ({COUNTS['eager']} named eagerly, "
        f"{COUNTS['poisoned']} poisoned under jit, {COUNTS['traced']} named from inside jit), "
        f"{COUNTS['traceback']} other tracebacks, "
        f"{COUNTS['silent']} silent results; {EXAMPLES} examples per test"
    )
    print("\n" + line)
    if os.environ.get("JAXROBUST_FUZZ_REPORT"):
        with open(os.environ["JAXROBUST_FUZZ_REPORT"], "a") as f:
            f.write(line + "\n")


def expect_named(call, what, kind="eager"):
    """Run `call()`; it must raise a JaxRobustError (counted as `kind`) or a jit runtime
    error carrying one."""
    COUNTS["tried"] += 1
    try:
        jax.block_until_ready(call())
    except JaxRobustError:
        COUNTS[kind] += 1
        return
    except Exception as e:  # any other exception must carry a named error (traced checks)
        if named_error(e) is not None:
            COUNTS["traced"] += 1
            return
        COUNTS["traceback"] += 1
        raise AssertionError(f"{what}: {type(e).__name__} instead of a JaxRobustError: {e}") from e
    COUNTS["silent"] += 1
    raise AssertionError(f"{what}: a result, silently, for bad input")


# ----------------------------------------------------------------------------- bad values

junk = st.one_of(st.none(), st.text(max_size=3), st.just([1, "a"]), st.just(object()))
finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
nonfinite = st.sampled_from([math.nan, math.inf, -math.inf])


def bad_int(minimum):
    return st.one_of(st.integers(max_value=minimum - 1), st.floats(), junk)


def bad_number(lo, hi, *, lo_open=False, hi_open=False, allow_none=False):
    def outside(v):
        return (v < lo or (lo_open and v == lo)) or (v > hi or (hi_open and v == hi))

    out = st.one_of(finite.filter(outside), nonfinite, st.text(max_size=2), st.just([0.5]))
    return out if allow_none else st.one_of(out, st.none())


def unknown_name(*known):
    """Any text but the valid names (and junk)."""
    other = st.one_of(st.none(), st.integers(), st.just([1, "a"]), st.just(object()))
    return st.one_of(st.text(max_size=6).filter(lambda v: v not in known), other)


bad_bool = st.one_of(st.integers(), st.floats(), st.text(max_size=2), st.none())
bad_callable = st.one_of(st.none(), st.integers(), st.text(max_size=2), st.floats())
bad_eps = st.one_of(
    st.floats(max_value=0.0, exclude_max=True).filter(lambda v: v < 0),  # not -0.0
    nonfinite,
    junk,
    st.just(np.array([0.1, -0.1, 0.2, 0.1])),
    st.just(np.array([0.1, np.nan, 0.2, 0.1])),
)
bad_key = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=2),
    st.just(np.zeros(3, np.uint32)),
    st.just(jax.random.split(KEY, 2)),
    st.just(np.float32(1.0)),
)


@st.composite
def bad_x(draw):
    kind = draw(st.sampled_from(["entry", "scale", "int", "scalar", "empty", "shape", "junk"]))
    if kind == "entry":
        x = X.copy()
        i = draw(st.integers(0, x.size - 1))
        x.flat[i] = draw(st.one_of(nonfinite, st.floats(1.001, 1e30), st.floats(-1e30, -0.001)))
        return x
    if kind == "scale":
        return X * draw(st.floats(1.5, 1e4)) + 0.01
    if kind == "int":
        return (X * 255).astype(np.int32)
    if kind == "scalar":
        return np.float32(0.5)
    if kind == "empty":
        return X[:0]
    if kind == "shape":
        return X[:, :2]
    return draw(junk)


@st.composite
def bad_y(draw):
    kind = draw(st.sampled_from(["range", "float", "length", "2d", "junk"]))
    if kind == "range":
        y = Y.copy()
        y[draw(st.integers(0, B - 1))] = draw(
            st.one_of(st.integers(C, 2**31 - 1), st.integers(-(2**31), -1))
        )
        return y
    if kind == "float":
        return Y.astype(np.float32)
    if kind == "length":
        return Y[: draw(st.integers(0, B - 1))]
    if kind == "2d":
        return Y[:, None]
    return draw(junk)


bad_target = bad_y().filter(lambda v: v is not None)  # None: untargeted


def bad_threat(*kinds):
    wrong = [
        {"l1": jr.l1(0.5), "spatial": jr.spatial(), "linf": jr.linf(0.1), "l2": jr.l2(0.5)}[k]
        for k in kinds
    ]
    return st.one_of(junk, st.integers(), st.sampled_from(wrong)) if wrong else junk


bad_model = st.one_of(
    bad_callable,
    st.just(lambda x: model(x)[:, 0]),  # (B,) not (B, C)
    st.just(lambda x: model(x)[:2]),  # the wrong batch
    st.just(lambda x: model(x) * jnp.nan),  # NaN logits
    st.just(lambda x: model(x) + jnp.inf),  # inf logits
)

LINF, L2, SPATIAL = jr.linf(0.1), jr.l2(0.5), jr.spatial(10.0, 1.0)
COMMON = {"logits_fn": bad_model, "x": bad_x(), "y": bad_y(), "key": bad_key}

# attack: (function, valid keyword arguments, {argument: strategy of bad values})
ATTACKS = {
    "pgd": (
        jr.pgd,
        {"threat": LINF, "steps": 1},
        {
            **COMMON,
            "threat": bad_threat(),
            "steps": bad_int(0),
            "restarts": bad_int(1),
            "step_size": bad_eps.filter(lambda v: v is not None),
            "loss": bad_callable,
            "target": bad_target,
            "random_start": bad_bool,
            "keep_best": bad_bool,
            "unroll": bad_int(1).filter(lambda v: v is not None),
            "optimizer": st.one_of(st.integers(), st.text(max_size=2), st.just(optax.sgd)),
        },
    ),
    "fgsm": (
        jr.fgsm,
        {"threat": LINF},
        {
            **COMMON,
            "key": bad_key.filter(lambda v: v is not None),  # None: no random start
            "threat": bad_threat(),
            "step_size": bad_eps.filter(lambda v: v is not None),
            "loss": bad_callable,
            "target": bad_target,
        },
    ),
    "apgd": (
        jr.apgd,
        {"threat": LINF, "steps": 2},
        {
            **COMMON,
            "threat": bad_threat(),
            "steps": bad_int(0),
            "restarts": bad_int(1),
            "loss": st.one_of(unknown_name("ce", "dlr"), st.integers(), st.none()),
            "random_start": bad_bool,
            "momentum": bad_number(0, 1, allow_none=True),
            "rho": bad_number(0, 1),
            "topk_fraction": bad_number(0, 1, lo_open=True),
            "use_largereps": st.one_of(st.integers(), st.text(max_size=2), st.just(True)),
        },
    ),
    "apgd_targeted": (
        jr.apgd_targeted,
        {"threat": LINF, "steps": 2, "n_target_classes": 2},
        {
            **COMMON,
            "threat": bad_threat(),
            "steps": bad_int(0),
            "restarts": bad_int(1),
            "n_target_classes": bad_int(1),
            "momentum": bad_number(0, 1, allow_none=True),
            "rho": bad_number(0, 1),
        },
    ),
    "fab": (
        jr.fab,
        {"threat": LINF, "steps": 2},
        {
            **COMMON,
            "threat": bad_threat("l1", "spatial"),
            "steps": bad_int(1),
            "restarts": bad_int(1),
            "target": bad_target,
            "alpha_max": bad_number(0, 1),
            "eta": bad_number(0, math.inf, lo_open=True),
            "beta": bad_number(0, 1, lo_open=True),
            "final_search": bad_int(0),
        },
    ),
    "fab_targeted": (
        jr.fab_targeted,
        {"threat": L2, "steps": 2, "n_target_classes": 2},
        {
            **COMMON,
            "threat": bad_threat("l1", "spatial"),
            "steps": bad_int(1),
            "n_target_classes": bad_int(1),
            "final_search": bad_int(0),
        },
    ),
    "square": (
        jr.square,
        {"threat": LINF, "queries": 3},
        {
            **COMMON,
            "x": bad_x(),
            "threat": bad_threat("l1", "spatial"),
            "queries": bad_int(1),
            "p_init": bad_number(0, 1, lo_open=True),
            "loss": st.one_of(unknown_name("ce", "dlr", "margin"), st.integers(), st.none()),
            "restarts": bad_int(1),
            "target": bad_target,
            "schedule_queries": st.one_of(st.integers(max_value=0), st.floats(), junk.filter(bool)),
        },
    ),
    "query_limited_attack": (
        jr.query_limited_attack,
        {"threat": LINF, "estimator": "nes", "max_queries": 6, "nes_samples": 2},
        {
            **COMMON,
            "threat": bad_threat("l1", "spatial"),
            "estimator": st.one_of(unknown_name("nes", "bandits"), st.none(), st.integers()),
            "max_queries": bad_int(1),
            "step_size": bad_number(0, math.inf, lo_open=True, allow_none=True),
            "loss": bad_callable,
            "nes_samples": st.one_of(bad_int(2), st.integers(1, 50).map(lambda v: 2 * v + 1)),
            "nes_sigma": bad_number(0, math.inf, lo_open=True),
            "fd_eta": bad_number(0, math.inf, lo_open=True),
            "exploration": bad_number(0, math.inf, lo_open=True),
            "online_lr": bad_number(0, math.inf, lo_open=True, allow_none=True),
            "tile": bad_int(1),
        },
    ),
    "grid": (
        jr.grid,
        {"threat": SPATIAL, "angles": 2, "translations": 1},
        {
            **{k: v for k, v in COMMON.items() if k != "key"},
            "threat": bad_threat("linf", "l2").filter(lambda v: v is not None),
            "angles": bad_int(1),
            "translations": bad_int(1),
            "loss": bad_callable,
        },
    ),
    "worst_of_k": (
        jr.worst_of_k,
        {"threat": SPATIAL, "k": 2},
        {
            **COMMON,
            "threat": bad_threat("linf").filter(lambda v: v is not None),
            "k": bad_int(1),
            "loss": bad_callable,
        },
    ),
}


def _call(name, overrides):
    fn, valid, _ = ATTACKS[name]
    args = {"logits_fn": model, "x": X, "y": Y, "key": KEY, **valid, **overrides}
    if name == "grid":
        args.pop("key")
    positional = [args.pop(k) for k in ("logits_fn", "x", "y", "key") if k in args]
    return fn(*positional, **args)


PAIRS = [(a, arg) for a, (_, _, bad) in ATTACKS.items() for arg in bad]


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_valid_call_runs(attack):
    """The fuzzed calls differ from a call that works in the one bad argument only."""
    _call(attack, {})


@pytest.mark.parametrize("attack", list(ATTACKS))
@FUZZ
@given(data=st.data())
def test_one_bad_argument_is_named(attack, data):
    arg = data.draw(st.sampled_from(sorted(ATTACKS[attack][2])), label="argument")
    value = data.draw(ATTACKS[attack][2][arg], label=arg)
    expect_named(lambda: _call(attack, {arg: value}), f"{attack}({arg}={value!r:.60})")


# ----------------------------------------------------------------------------- engine

ENGINE_BAD = {
    "objective": bad_callable,
    "x": bad_x(),
    "key": bad_key,
    "threat": bad_threat(),
    "steps": bad_int(0),
    "restarts": bad_int(1),
    "step_size": bad_eps,
    "maximize": bad_bool,
    "has_aux": bad_bool,
    "unroll": bad_int(1).filter(lambda v: v is not None),
}


@FUZZ
@given(data=st.data())
def test_engine_bad_argument_is_named(data):
    arg = data.draw(st.sampled_from(sorted(ENGINE_BAD)), label="argument")
    value = data.draw(ENGINE_BAD[arg], label=arg)
    args = {
        "objective": lambda z: model(z).sum(axis=1),
        "x": X,
        "key": KEY,
        "threat": LINF,
        "steps": 1,
        "step_size": 0.1,
        arg: value,
    }
    expect_named(
        lambda: jr.optimize(args.pop("objective"), args.pop("x"), args.pop("key"), **args),
        f"optimize({arg}={value!r:.60})",
    )


# ----------------------------------------------------------------------------- threats

THREATS = {
    "linf": (
        jr.linf,
        {"eps": bad_eps, "lo": bad_number(-1e30, 1e30), "hi": bad_number(-1e30, 1e30)},
    ),
    "l2": (jr.l2, {"eps": bad_eps}),
    "l1": (jr.l1, {"eps": bad_eps, "sparsity": bad_number(0, 1, hi_open=True)}),
    "spatial": (
        jr.spatial,
        {
            "max_angle": bad_eps,
            "max_dx": bad_eps,
            "max_dy": bad_eps.filter(lambda v: v is not None),
        },
    ),
    "unconstrained": (jr.unconstrained, {"step_norm": unknown_name("linf", "l2")}),
    "get_threat": (jr.get_threat, {"name": unknown_name("linf", "l2", "l1")}),
    "masked": (jr.masked, {"threat": bad_threat("spatial"), "mask": junk}),
}
VALID_THREAT_ARGS = {
    "linf": {"eps": 0.1},
    "l2": {"eps": 0.1},
    "l1": {"eps": 0.1},
    "spatial": {},
    "unconstrained": {},
    "get_threat": {"name": "linf", "eps": 0.1},
    "masked": {"threat": LINF, "mask": np.ones((H, H, 1), np.float32)},
}


@pytest.mark.parametrize("name", list(THREATS))
@FUZZ
@given(data=st.data())
def test_threat_constructor_bad_argument_is_named(name, data):
    build, bad = THREATS[name]
    arg = data.draw(st.sampled_from(sorted(bad)), label="argument")
    value = data.draw(bad[arg], label=arg)
    if name == "linf" and arg in ("lo", "hi") and isinstance(value, float) and math.isfinite(value):
        # A finite bound is bad only against the other one: lo >= hi.
        value = 1.0 - abs(value) if arg == "hi" else 1.0 + abs(value)
    args = {**VALID_THREAT_ARGS[name], arg: value}
    positional = [args.pop(k) for k in ("name", "eps", "threat", "mask") if k in args]
    expect_named(lambda: build(*positional, **args), f"{name}({arg}={value!r:.60})")


# ----------------------------------------------------------------------------- under jit

_TRACED = {
    "pgd": lambda x, y, e, s: jr.pgd(scaled(s), x, y, KEY, threat=jr.linf(e), steps=2).value,
    "apgd": lambda x, y, e, s: jr.apgd(scaled(s), x, y, KEY, threat=jr.l2(e), steps=3).value,
    "square": lambda x, y, e, s: (
        jr.square(scaled(s), x, y, KEY, threat=jr.linf(e), queries=3).value
    ),
    "fab": lambda x, y, e, s: jr.fab(scaled(s), x, y, KEY, threat=jr.linf(e), steps=2).value,
}
_JIT = {name: jax.jit(fn) for name, fn in _TRACED.items()}  # as a user jits them
_JIT_NAMED = {name: jax.jit(errors.with_callbacks(fn)) for name, fn in _TRACED.items()}


@st.composite
def bad_traced_values(draw):
    """(x, y, eps, logit scale) with at least one bad, all of fixed shapes and dtypes."""
    x, y, eps, scale = X.copy(), Y.copy(), np.float32(0.1), np.float32(1.0)
    bad = draw(st.sets(st.sampled_from(["x", "y", "eps", "scale"]), min_size=1))
    if "x" in bad:
        for _ in range(draw(st.integers(1, 3))):
            x.flat[draw(st.integers(0, x.size - 1))] = draw(
                st.one_of(nonfinite, st.floats(1.001, 3e38), st.floats(-3e38, -0.001))
            )
    if "y" in bad:
        y[draw(st.integers(0, B - 1))] = draw(
            st.one_of(st.integers(C, 2**31 - 1), st.integers(-(2**31), -1))
        )
    if "eps" in bad:
        eps = np.float32(draw(st.one_of(nonfinite, st.floats(-1e30, -1e-6))))
    if "scale" in bad:
        scale = np.float32(draw(nonfinite))
    return x, y, eps, scale


@pytest.mark.parametrize("attack", list(_JIT))
def test_valid_values_run_under_jit(attack):
    value = _JIT[attack](X, Y, np.float32(0.1), np.float32(1.0))
    assert not np.isnan(np.asarray(value)).any()


@pytest.mark.parametrize("attack", list(_JIT))
@FUZZ
@given(values=bad_traced_values())
def test_bad_values_are_named_under_jit(attack, values):
    expect_named(lambda: errors.raise_if_poisoned(_JIT[attack](*values)), attack, "poisoned")
    expect_named(lambda: _JIT_NAMED[attack](*values), f"jit {attack}", "traced")
