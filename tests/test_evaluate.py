"""`evaluate`: the cascade, its bookkeeping, resumption and the sanity-check flags."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrobust.attacks.cascade import evaluate
from jaxrobust.data import load_split
from jaxrobust.errors import InputError

FAST = ("pgd-10", "fgsm")


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(h)


@pytest.fixture(scope="module")
def trained():
    """A digits MLP trained for 300 full-batch steps: (params, x_test[:96], y_test[:96])."""
    x, y = load_split("digits", "train")
    net = _MLP()
    params = net.init(jax.random.key(0), x[:1])
    tx = optax.adam(3e-3)

    @jax.jit
    def step(p, s):
        g = jax.grad(
            lambda p: optax.softmax_cross_entropy_with_integer_labels(net.apply(p, x), y).mean()
        )(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    for _ in range(300):
        params, state = step(params, state)
    xt, yt = load_split("digits", "test", limit=96)
    return params, xt, yt


@pytest.fixture(scope="module")
def model_and_data(trained):
    params, xt, yt = trained
    return (lambda z: _MLP().apply(params, z)), xt, yt


def test_cascade_bookkeeping(model_and_data):
    f, x, y = model_and_data
    r = evaluate(
        f, x, y, jax.random.key(0), eps=[0.05, 0.3], attacks=FAST, batch_size=32, checks=False
    )
    assert r.clean_accuracy > 0.9
    for i in range(2):
        # The cascade only ever removes points: accuracy after each attack is non-increasing
        # and the worst case is the accuracy after the last attack.
        after = [r.per_attack[a][i] for a in FAST]
        assert r.clean_accuracy >= after[0] >= after[1] == r.robust_accuracy[i]
    assert r.robust_accuracy[1] <= 0.05  # an undefended model at ε = 0.3
    assert r.robust_accuracy[0] >= r.robust_accuracy[1]
    assert set(r.timings) == set(FAST) and r.compile_seconds > 0
    delta = np.abs(r.x_adv - x).reshape(len(x), -1).max(1)
    assert delta.max() <= 0.3 + 1e-6 and r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    json.dumps(r.to_dict())


def test_state_file_resumes(model_and_data, tmp_path):
    f, x, y = model_and_data
    path = tmp_path / "state.json"
    a = evaluate(
        f,
        x,
        y,
        jax.random.key(0),
        eps=0.1,
        attacks=FAST,
        batch_size=32,
        checks=False,
        state_file=path,
    )
    state = json.loads(path.read_text())
    assert state["done"] == {"0": 1}

    def exploding(*args):
        raise AssertionError("a finished step ran again")

    b = evaluate(
        f,
        x,
        y,
        jax.random.key(0),
        eps=0.1,
        attacks=[("pgd-10", exploding), ("fgsm", exploding)],
        batch_size=32,
        checks=False,
        state_file=path,
    )
    assert b.robust_accuracy == a.robust_accuracy
    with pytest.raises(InputError, match="another evaluation"):
        evaluate(
            f,
            x,
            y,
            jax.random.key(0),
            eps=0.2,
            attacks=FAST,
            batch_size=32,
            checks=False,
            state_file=path,
        )


def test_trusted_model_raises_no_flags(model_and_data):
    f, x, y = model_and_data
    r = evaluate(
        f, x, y, jax.random.key(0), eps=0.1, attacks=FAST, batch_size=32, check_examples=64
    )
    assert r.flags == [], r.flags
    assert r.checks["large_eps_accuracy"] == 0.0


def _flag_names(report):
    return {f.name for f in report.flags}


@pytest.mark.parametrize("masking", ["stop_gradient", "saturate"])
def test_gradient_masking_is_flagged(model_and_data, masking):
    f, x, y = model_and_data
    if masking == "stop_gradient":
        masked = lambda z: jax.lax.stop_gradient(f(z))  # noqa: E731
    else:
        masked = lambda z: f(z) * 1e4  # noqa: E731
    r = evaluate(
        masked,
        x,
        y,
        jax.random.key(0),
        eps=0.1,
        attacks=FAST,
        batch_size=32,
        check_examples=64,
        escalate=False,  # (the escalation has its own test)
    )
    assert "zero_gradients" in _flag_names(r)
    assert "large_eps_not_broken" in _flag_names(r)


@pytest.mark.slow
def test_randomised_model_is_attacked_with_eot_and_flagged(model_and_data):
    f, x, y = model_and_data

    def noisy(z, key):
        return f(jnp.clip(z + 0.05 * jax.random.normal(key, z.shape), 0, 1))

    r = evaluate(
        noisy,
        x,
        y,
        jax.random.key(0),
        eps=0.1,
        attacks=FAST,
        batch_size=32,
        check_examples=64,
        eot_samples=2,
    )
    assert "randomised_model" in _flag_names(r)


@pytest.mark.slow  # compile-heavy: runs with the slow tests, keeping the default suite < 15 min
def test_spatial_vote_is_attacked_with_eot(model_and_data):
    """The voting defense is a randomised model: `evaluate` attacks it through EOT. The soft
    vote is differentiable, so the EOT gradient attack breaks it."""
    from jaxrobust.attacks.spatial import vote
    from jaxrobust.threat import spatial

    f, x, y = model_and_data
    x, y = x[:32], y[:32]
    soft = evaluate(
        vote(f, spatial(max_angle=10.0, max_dx=1.0), samples=3, soft=True),
        x,
        y,
        jax.random.key(0),
        eps=0.2,
        attacks=("pgd-10",),
        batch_size=32,
        checks=False,
        eot_samples=2,
    )
    assert "randomised_model" in _flag_names(soft)
    assert soft.robust_accuracy[0] < 0.5 * soft.clean_accuracy


@pytest.mark.slow
def test_hard_spatial_vote_is_flagged_as_gradient_masking(model_and_data):
    """The hard (majority) vote is piecewise constant: zero EOT gradients, flagged."""
    from jaxrobust.attacks.spatial import vote
    from jaxrobust.threat import spatial

    f, x, y = model_and_data
    hard = evaluate(
        vote(f, spatial(max_angle=10.0, max_dx=1.0), samples=3),
        x[:32],
        y[:32],
        jax.random.key(0),
        eps=0.2,
        attacks=("fgsm",),
        batch_size=32,
        check_examples=32,
        eot_samples=2,
    )
    assert {"randomised_model", "zero_gradients"} <= _flag_names(hard)


def test_softmax_outputs_are_flagged(model_and_data):
    f, x, y = model_and_data
    r = evaluate(
        lambda z: jax.nn.softmax(f(z)),
        x,
        y,
        jax.random.key(0),
        eps=0.1,
        attacks=FAST,
        batch_size=32,
        check_examples=64,
    )
    assert "softmax_outputs" in _flag_names(r)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"attacks": ["magic"]}, "unknown attack 'magic'"),
        ({"attacks": "nonsense"}, "unknown suite 'nonsense'"),
        ({"eps": 0.0}, "eps must be > 0"),
        ({"eps": -0.1}, "eps must be > 0"),
        ({"batch_size": 0}, "batch_size"),
        ({"threat": "l5"}, "unknown threat"),
    ],
)
def test_bad_arguments(model_and_data, kwargs, match):
    f, x, y = model_and_data
    args = {"eps": 0.1, "attacks": FAST, "checks": False, **kwargs}
    with pytest.raises(InputError, match=match):
        evaluate(f, x, y, jax.random.key(0), **args)


def test_bad_models_and_labels(model_and_data):
    f, x, y = model_and_data
    with pytest.raises(InputError, match="logits of shape"):
        evaluate(lambda z: f(z)[:, :, None], x, y, jax.random.key(0), eps=0.1, attacks=FAST)
    with pytest.raises(InputError, match="labels must lie in"):
        evaluate(f, x, y + 10, jax.random.key(0), eps=0.1, attacks=FAST)
    with pytest.raises(InputError, match="non-finite"):
        evaluate(lambda z: f(z) * jnp.nan, x, y, jax.random.key(0), eps=0.1, attacks=FAST)
    with pytest.raises(InputError, match="declared input range"):
        evaluate(f, x + 2.0, y, jax.random.key(0), eps=0.1, attacks=FAST)


def test_several_processes_need_a_batch_size_every_device_shares(model_and_data, monkeypatch):
    """With several processes every device must take part (one process alone would compute
    on arrays that span all of them): a batch size that the device count does not divide
    is an error there, not a run on fewer devices. (tests/test_distributed.py runs
    `evaluate` in two real processes.)"""
    f, x, y = model_and_data
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "device_count", lambda: 4)
    with pytest.raises(InputError, match="batch_size 30 is not a multiple of the 4 devices"):
        evaluate(f, x, y, jax.random.key(0), eps=0.1, attacks=FAST, batch_size=30)


@pytest.mark.slow
def test_standard_suite_breaks_a_gradient_masked_model(model_and_data):
    """stop_gradient blinds APGD and FAB; the flags say so and Square still breaks it."""
    f, x, y = model_and_data
    masked = lambda z: jax.lax.stop_gradient(f(z))  # noqa: E731
    r = evaluate(
        masked,
        x[:32],
        y[:32],
        jax.random.key(0),
        eps=0.3,
        attacks="standard",
        batch_size=32,
        check_examples=32,
    )
    names = {flag.name for flag in r.flags}
    assert "zero_gradients" in names and "black_box_stronger" in names
    assert r.per_attack["apgd-ce"][0] > 0.5  # the white-box attacks are blind...
    assert r.robust_accuracy[0] <= 0.05  # ...and the ensemble is not


def test_chunks_pad_to_a_compiled_size_within_the_slack():
    from jaxrobust.attacks.eval_plan import chunks as _chunks

    [(chunk, count)] = list(_chunks(np.arange(300), 512, 64))
    assert len(chunk) == 320 and count == 300  # the smallest multiple of 64
    # 384 is compiled and within 1.25 x 320: reuse it (padding repeats the first index).
    [(chunk, count)] = list(_chunks(np.arange(300), 512, 64, reuse=[384, 512]))
    assert len(chunk) == 384 and count == 300 and (chunk[300:] == 0).all()
    # 448 > 1.25 x 320: a new size is cheaper than that much padding.
    [(chunk, _)] = list(_chunks(np.arange(300), 512, 64, reuse=[448]))
    assert len(chunk) == 320
    chunks = list(_chunks(np.arange(1000), 512, 64, reuse=[512]))
    assert [len(c) for c, _ in chunks] == [512, 512] and sum(n for _, n in chunks) == 1000
    assert np.array_equal(np.concatenate([c[:n] for c, n in chunks]), np.arange(1000))


def _noisy_linear(w, x, key):
    """A randomised model carrying its weights: logits of x + noise under a linear map."""
    z = x.reshape(x.shape[0], -1) + 0.1 * jax.random.normal(key, (x.shape[0], w.shape[0]))
    return z @ w


def test_eot_of_a_carried_model_takes_its_weights_as_program_inputs():
    """EOT of a Partial model is a Partial carrying the weights and the draws' keys: a jitted
    attack compiles once for every checkpoint, and the value is the mean log-softmax."""
    from jaxrobust.attacks.suites import expectation_over_transformation

    x = jax.random.uniform(jax.random.key(1), (5, 4))
    key = jax.random.key(2)
    traces = []

    @jax.jit
    def run(model, x):
        traces.append(1)
        return model(x)

    for seed in (3, 4):
        w = jax.random.normal(jax.random.key(seed), (4, 3))
        eot = expectation_over_transformation(jax.tree_util.Partial(_noisy_linear, w), key, 6)
        assert isinstance(eot, jax.tree_util.Partial)
        keys = jax.random.split(key, 6)
        want = np.mean([jax.nn.log_softmax(_noisy_linear(w, x, k)) for k in keys], axis=0)
        np.testing.assert_allclose(run(eot, x), want, rtol=1e-5, atol=1e-6)
    assert len(traces) == 1  # the second checkpoint reused the first's program
    # A plain function works too (closed over, its keys still carried).
    eot = expectation_over_transformation(lambda z, k: _noisy_linear(w, z, k), key, 6)
    np.testing.assert_allclose(jax.jit(lambda m, z: m(z))(eot, x), want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- per example


def test_report_per_example_results_and_round_trip(model_and_data, tmp_path):
    """broken_by names the first attack that broke each point (-1 robust, -2 clean-wrong),
    agrees with every accuracy, and survives save/load with the adversarial inputs."""
    import jaxrobust as jr
    from jaxrobust.attacks.eval_report import CLEAN_WRONG, UNBROKEN

    f, x, y = model_and_data
    r = evaluate(
        f, x, y, jax.random.key(0), eps=[0.05, 0.3], attacks=FAST, batch_size=32, checks=False
    )
    assert r.broken_by.shape == (2, len(y)) and r.x_adv_by_eps.shape == (2, *x.shape)
    np.testing.assert_array_equal(r.broken_by[:, ~r.clean_correct], CLEAN_WRONG)
    assert r.clean_accuracy == r.clean_correct.mean()
    for i in range(2):
        assert r.robust_accuracy[i] == np.mean(r.broken_by[i] == UNBROKEN)
        for ai, name in enumerate(FAST):
            # accuracy after attack ai: clean-correct and not broken by attacks 0..ai
            left = r.clean_correct & ((r.broken_by[i] == UNBROKEN) | (r.broken_by[i] > ai))
            assert r.per_attack[name][i] == left.mean()
        broken = r.broken_by[i] >= 0
        assert broken.any()
        # The stored inputs break the model, within the ball; unbroken points keep x.
        xa = r.x_adv_by_eps[i]
        assert (np.argmax(f(xa[broken]), -1) != y[broken]).all()
        assert np.abs(xa - x).max() <= r.eps[i] + 1e-6
        np.testing.assert_array_equal(xa[~broken], x[~broken])
    np.testing.assert_array_equal(r.x_adv, r.x_adv_by_eps[-1])
    json_path, npz_path = r.save(tmp_path / "report.json")
    assert json_path.name == "report.json" and npz_path.name == "report.npz"
    back = jr.EvalReport.load(tmp_path / "report")
    assert back.to_dict() == r.to_dict()
    for k in ("broken_by", "x_adv_by_eps", "clean_correct"):
        np.testing.assert_array_equal(getattr(back, k), getattr(r, k))
    with pytest.raises(InputError, match="no saved evaluation report"):
        jr.EvalReport.load(tmp_path / "missing")


def test_public_names_and_no_shadowed_module():
    import importlib

    import jaxrobust as jr

    assert jr.SUITES["standard"] == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert set(jr.SUITES["standard"]) <= set(jr.ATTACKS)
    assert jr.EvalReport is jr.attacks.EvalReport
    assert {"EvalReport", "SUITES", "ATTACKS"} <= set(jr.__all__)
    assert callable(jr.attacks.evaluate) and jr.attacks.evaluate is jr.evaluate
    # No module named like the function: importing the cascade module gives the module.
    module = importlib.import_module("jaxrobust.attacks.cascade")
    assert module.evaluate is jr.evaluate
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("jaxrobust.attacks.evaluate")


def _apply(params, z):
    return _MLP().apply(params, z)


def test_evaluate_compiles_once_over_four_checkpoints(trained):
    """Programs are kept across calls, keyed on the static configuration: a model that
    carries its weights (a Partial) compiles nothing for the 2nd..4th checkpoint, checks
    included (JAX's lowering and compile events, counted). (One attack: the chunk shapes of
    later cascade stages depend on how many points the model leaves unbroken.)"""
    from jax import monitoring

    params, x, y = trained
    lowered = []

    def listen(event, duration, **kwargs):
        if event in (
            "/jax/core/compile/jaxpr_to_mlir_module_duration",
            "/jax/core/compile/backend_compile_duration",
        ):
            lowered.append(event)

    monitoring.register_event_duration_secs_listener(listen)
    try:
        counts = []
        for seed in range(4):
            # a different checkpoint of the architecture: every weight scaled
            checkpoint = jax.tree.map(lambda p, s=1 + 0.05 * seed: p * s, params)
            model = jax.tree_util.Partial(_apply, checkpoint)
            before = len(lowered)
            r = evaluate(
                model,
                x,
                y,
                jax.random.key(0),
                eps=0.1,
                attacks=("pgd-10",),
                batch_size=32,
                check_examples=32,
            )
            counts.append(len(lowered) - before)
    finally:
        monitoring.unregister_event_duration_listener(listen)
    assert counts[0] > 0 and counts[1:] == [0, 0, 0], counts
    assert r.clean_accuracy > 2 / 3  # (so the first stage ran on chunks of 32 every time)


def test_devices_do_not_change_results(model_and_data):
    f, x, y = model_and_data
    kw = dict(eps=0.1, attacks=FAST, batch_size=32, checks=False)
    a = evaluate(f, x, y, jax.random.key(0), devices=1, **kw)
    b = evaluate(f, x, y, jax.random.key(0), devices=jax.devices(), **kw)
    np.testing.assert_array_equal(a.broken_by, b.broken_by)
    with pytest.raises(InputError, match="multiple of the"):
        evaluate(f, x, y, jax.random.key(0), devices=jax.devices() * 3, **{**kw, "batch_size": 32})


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda x, y: (x[:0], y[:0]), "empty"),
        (lambda x, y: (np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), y), "NaN"),
        (lambda x, y: (x, y - 1), "labels must lie in"),
        (lambda x, y: (x, y.astype(np.float32)), "integer class labels"),
    ],
)
def test_bad_inputs_name_the_problem(model_and_data, change, match):
    f, x, y = model_and_data
    xb, yb = change(x, y)
    with pytest.raises(InputError, match=match):
        evaluate(f, xb, yb, jax.random.key(0), eps=0.1, attacks=FAST, checks=False)


def test_infinite_eps_is_rejected(model_and_data):
    f, x, y = model_and_data
    with pytest.raises(InputError, match=r"eps must be finite.*covers the whole input box"):
        evaluate(f, x, y, jax.random.key(0), eps=[0.1, float("inf")], attacks=FAST)
    with pytest.raises(InputError, match="eps must be > 0"):
        evaluate(f, x, y, jax.random.key(0), eps=float("nan"), attacks=FAST)


# ----------------------------------------------------------------------------- escalation


def _input_masked(f, z):
    return f(jax.lax.stop_gradient(z))


def test_escalation_attacks_follow_the_suite():
    """BPDA versions of the suite's white-box attacks, in order, then a stronger Square;
    each BPDA wrapper is built once (the program cache keys on it)."""
    from jaxrobust.attacks.escalation import STRONGER_SQUARE, escalation_attacks
    from jaxrobust.attacks.suites import resolve_suite

    suite = resolve_suite("standard")
    names = [name for name, _ in escalation_attacks(suite)]
    assert names == ["bpda-apgd-ce", "bpda-apgd-t", "bpda-fab-t", STRONGER_SQUARE]
    assert [fn for _, fn in escalation_attacks(suite)] == [
        fn for _, fn in escalation_attacks(suite)
    ]
    assert [n for n, _ in escalation_attacks(resolve_suite(["square"]))] == [
        "bpda-pgd",
        STRONGER_SQUARE,
    ]


@pytest.mark.slow
def test_masked_gradients_escalate_to_the_unmasked_number(trained):
    """stop_gradient on the input blinds the cascade; the flags fire and the escalation
    (BPDA through the stop_gradient, a stronger Square) reaches the unmasked model's
    robust accuracy; every point it breaks is misclassified by the model itself. A model
    without masking is not escalated."""
    from jaxrobust.attacks.eval_report import BY_CASCADE, CLEAN_WRONG, UNBROKEN

    params, x, y = trained
    model = jax.tree_util.Partial(_apply, params)
    kw = dict(eps=0.15, attacks=FAST, batch_size=32, check_examples=32)
    plain = evaluate(model, x, y, jax.random.key(0), **kw)
    assert plain.escalation is None and plain.flags == []
    masked = evaluate(jax.tree_util.Partial(_input_masked, model), x, y, jax.random.key(0), **kw)
    esc = masked.escalation
    assert {"zero_gradients", "large_eps_not_broken"} <= set(esc.reason)
    assert masked.robust_accuracy[0] > plain.robust_accuracy[0] + 0.2  # blinded cascade
    assert esc.robust_accuracy[0] <= plain.robust_accuracy[0] + 0.02
    assert esc.attacks == ["bpda-pgd-10", "bpda-fgsm", "square-20k-x2"]
    assert masked.final_robust_accuracy == esc.robust_accuracy
    b = esc.broken_by[0]
    assert set(np.unique(b)) <= {BY_CASCADE, CLEAN_WRONG, UNBROKEN, 0, 1, 2}
    np.testing.assert_array_equal(b == BY_CASCADE, masked.broken_by[0] >= 0)
    assert esc.robust_accuracy[0] == np.mean(b == UNBROKEN)
    assert esc.per_attack["bpda-pgd-10"][0] < masked.robust_accuracy[0] - 0.2  # BPDA works
    by_escalation = b >= 0
    xa = masked.x_adv_by_eps[0][by_escalation]
    assert (np.argmax(_apply(params, xa), -1) != y[by_escalation]).all()
    assert np.abs(xa - x[by_escalation]).max() <= 0.15 + 1e-6
