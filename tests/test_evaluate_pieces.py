"""The pieces of `evaluate`, each on its own: planning (devices, chunks, the program
cache), the books of the cascade, validity of adversarial inputs, and the sanity checks as
functions of measured numbers. (tests/test_evaluate.py runs them together.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.attacks import eval_checks
from jaxrobust.attacks.cascade import Books, valid
from jaxrobust.attacks.eval_plan import (
    Placement,
    compiled_program,
    granule_for,
    select_mesh,
)
from jaxrobust.attacks.eval_report import CLEAN_WRONG, UNBROKEN
from jaxrobust.errors import InputError


def test_select_mesh_follows_the_request():
    n = jax.device_count()
    assert select_mesh(8 * n, None).devices.size == n  # default: all devices
    assert select_mesh(7 * n + 1, None) is None or n == 1  # not a multiple: unsharded
    assert select_mesh(8, 1).devices.size == 1
    assert select_mesh(8, jax.devices()[:1]).devices.size == 1
    with pytest.raises(InputError, match="devices must be between 1 and"):
        select_mesh(8, n + 1)


def test_granule_is_an_eighth_of_the_batch_and_divides_over_devices():
    one = Placement.create(lambda x: x, None)
    assert granule_for(256, one) == 32 and granule_for(5, one) == 1
    mesh = select_mesh(4, 1)
    assert granule_for(4, Placement.create(lambda x: x, mesh)) == 1


def _linear(w, x):
    return x @ w


def test_compiled_programs_are_reused_for_new_weights_not_new_shapes():
    """The cache key is the static configuration and the arguments' signature: new
    weights of the same shapes reuse the program, a new batch shape compiles another."""
    model = jax.tree_util.Partial(_linear, jnp.ones((3, 2)))
    p = Placement.create(model, None)
    built = []

    def build():
        built.append(1)
        return lambda m, a: m(a)

    key = ("test-program", object())  # unique to this test
    x = jnp.ones((4, 3))
    prog, seconds = compiled_program(p.key(*key), build, {}, (p.carried, x))
    assert seconds > 0 and len(built) == 1
    q = Placement.create(jax.tree_util.Partial(_linear, 2 * jnp.ones((3, 2))), None)
    prog2, seconds2 = compiled_program(q.key(*key), build, {}, (q.carried, x))
    assert prog2 is prog and seconds2 == 0.0 and len(built) == 1
    np.testing.assert_allclose(prog2(q.carried, x), 6 * np.ones((4, 2)))
    compiled_program(q.key(*key), build, {}, (q.carried, jnp.ones((5, 3))))
    assert len(built) == 2
    # A closed-over model is keyed on itself: another callable is another program.
    closed = Placement.create(lambda a: a, None)
    assert closed.carried is None and closed.key("k") != Placement.create(lambda a: a, None).key(
        "k"
    )


def test_books_start_from_clean_correctness_and_resume_from_state(tmp_path):
    clean = np.array([True, False, True])
    x = np.zeros((3, 2), np.float32)
    books = Books.load(None, [0.1, 0.2], ["a", "b"], clean, x)
    assert [list(b) for b in books.broken_by] == [[UNBROKEN, CLEAN_WRONG, UNBROKEN]] * 2
    books.broken_by[0][2] = 1
    path = tmp_path / "state.json"
    assert books.record(0, 1, "b", path) == pytest.approx(1 / 3)
    again = Books.load(path, [0.1, 0.2], ["a", "b"], clean, x)
    assert again.done(0) == 1 and again.done(1) == -1
    assert list(again.broken_by[0]) == [UNBROKEN, CLEAN_WRONG, 1]
    # Its adversarial input was not kept: NaN, not a clean input posing as one.
    assert np.isnan(again.x_adv[0][2]).all() and not np.isnan(again.x_adv[1]).any()


def test_valid_rejects_outside_ball_box_and_nan():
    x = np.full((4, 2), 0.5, np.float32)
    xa = x.copy()
    xa[1, 0] = 0.7  # outside the ℓ∞ ball of 0.1
    xa[2, 0] = np.nan
    xa[3] = [0.55, 0.45]
    assert list(valid(xa, x, "linf", 0.1, 0.0, 1.0)) == [True, False, False, True]
    assert list(valid(np.full((1, 2), 1.5, np.float32), np.ones((1, 2)), "linf", 1, 0, 1)) == [
        False
    ]


def test_checks_as_functions_of_measured_numbers():
    ok = {
        "large_eps": 1.0,
        "large_eps_accuracy": 0.0,
        "pgd10_accuracy": 0.3,
        "pgd100x2_accuracy": 0.28,
        "fgsm_accuracy": 0.5,
        "check_eps": 0.1,
    }
    assert eval_checks.check_large_eps(ok) == [] and eval_checks.check_iterative(ok) == []
    names = lambda flags: [f.name for f in flags]  # noqa: E731
    assert names(eval_checks.check_large_eps({**ok, "large_eps_accuracy": 0.2})) == [
        "large_eps_not_broken"
    ]
    assert names(eval_checks.check_iterative({**ok, "fgsm_accuracy": 0.1})) == [
        "single_step_stronger"
    ]
    assert names(eval_checks.check_iterative({**ok, "pgd100x2_accuracy": 0.4})) == [
        "more_steps_weaker"
    ]
    assert eval_checks.check_monotone([0.1, 0.2], [0.5, 0.4]) == []
    assert names(eval_checks.check_monotone([0.2, 0.1], [0.5, 0.4])) == ["non_monotone"]
    checks = {}
    per_attack = {"apgd-ce": [0.5], "square": [0.3]}
    assert names(eval_checks.check_black_box(["apgd-ce", "square"], per_attack, checks)) == [
        "black_box_stronger"
    ]
    assert checks["square_extra_breaks"] == pytest.approx(0.2)
    assert names(eval_checks.check_gradients(np.array([0.0, 0.0, 1.0]), checks)) == [
        "zero_gradients"
    ]
    assert eval_checks.check_gradients(np.ones(3), checks) == []
    probs = lambda x: jax.nn.softmax(x)  # noqa: E731
    assert names(eval_checks.check_outputs(probs, np.ones((2, 3), np.float32))) == [
        "softmax_outputs"
    ]
