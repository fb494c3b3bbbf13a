"""Interval bound propagation and CROWN-IBP (`jaxrobust.certify`): soundness against 10⁴
random points and the library's PGD on random MLPs and CNNs (hypothesis), exactness as
ε → 0, CROWN-IBP never looser than IBP, the Flax adapters, jit/vmap, named errors, and the
ibp / crown_ibp training objectives."""

from __future__ import annotations

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxrobust as jr
from jaxrobust import certify as C
from jaxrobust.errors import ConfigError, InputError
from jaxrobust.models import create_model, init_model

TOL = 1e-4  # float32 slack of a bound against a forward pass (logits are O(1)-O(10))


def _dense(key, d_in, d_out, scale=1.0):
    k1, k2 = jax.random.split(key)
    w = scale * jax.random.normal(k1, (d_in, d_out)) / np.sqrt(d_in)
    return C.Dense(kernel=w, bias=0.1 * jax.random.normal(k2, (d_out,)))


def _conv(key, c_in, c_out, k=3, strides=(1, 1), padding="SAME"):
    k1, k2 = jax.random.split(key)
    w = jax.random.normal(k1, (k, k, c_in, c_out)) / np.sqrt(k * k * c_in)
    b = 0.1 * jax.random.normal(k2, (c_out,))
    return C.Conv(kernel=w, bias=b, strides=strides, padding=padding)


@functools.partial(jax.jit, static_argnames=("d", "hidden", "k"))
def random_mlp(key, d=12, hidden=(16, 16), k=5):
    keys = jax.random.split(key, len(hidden) + 2)
    a = C.Affine(scale=jnp.float32(2.5), shift=jnp.float32(-1.2))
    layers = [a, C.Flatten()]
    for i, h in enumerate(hidden):
        layers += [_dense(keys[i], d, h), C.ReLU()]
        d = h
    return (*layers, _dense(keys[-1], d, k))


@functools.partial(jax.jit, static_argnames=("pool", "k"))
def random_cnn(key, pool="max", k=5):
    """Affine (folded BatchNorm with a negative scale) -> conv -> ReLU -> pool -> strided
    VALID conv -> ReLU -> flatten -> dense -> ReLU -> dense on (6, 6, 2) inputs."""
    ks = jax.random.split(key, 5)
    bn = C.fold_batchnorm(
        scale=jnp.array([1.5, -0.7]),
        bias=jnp.array([0.1, -0.2]),
        mean=jnp.array([0.4, 0.5]),
        var=jnp.array([0.09, 0.2]),
    )
    pool_layer = C.MaxPool2x2() if pool == "max" else C.AvgPool(2)
    return (
        bn,
        _conv(ks[0], 2, 4),
        C.ReLU(),
        pool_layer,
        _conv(ks[1], 4, 6, k=2, strides=(1, 1), padding="VALID"),
        C.ReLU(),
        C.Flatten(),
        _dense(ks[2], 2 * 2 * 6, 12),
        C.ReLU(),
        _dense(ks[3], 12, k),
    )


@functools.partial(jax.jit, static_argnames=("shape", "b"))
def _inputs(key, shape, b=3):
    x = jax.random.uniform(key, (b, *shape))
    # some pixels exactly at the box edges, where the ball is clipped
    return x.at[:, 0].set(0.0).at[:, -1].set(1.0)


@functools.partial(jax.jit, static_argnames=("m",))
def _ball_points(key, x, eps, m):
    """m points per example, uniform in the ℓ∞ ball ∩ [0, 1], plus its corners' signs."""
    u = jax.random.uniform(key, (m, *x.shape), minval=-1.0, maxval=1.0)
    u = u.at[: m // 2].set(jnp.sign(u[: m // 2]))  # half at the ball's vertices
    return jnp.clip(x[None] + eps * u, 0.0, 1.0)


@jax.jit
def _all_bounds(net, x, y, eps, pts):
    """Every bound, and the logits of the sampled points, in one compiled program."""
    ibp = C.ibp_bounds(net, x, eps)
    crown = C.crown_ibp_bounds(net, x, eps)
    margins = {
        meth: C.margin_bounds(net, x, y, eps, method=meth)
        for meth in ("ibp", "crown_ibp", "crown_ibp_only")
    }
    z = C.forward(net, pts.reshape(-1, *x.shape[1:])).reshape(pts.shape[0], *ibp.lower.shape)
    return ibp, crown, margins, z


@jax.jit
def _pgd(net, x, y, key, eps):
    """The library's PGD-20 maximising the margin loss (one compiled program per shape)."""
    f = jax.tree_util.Partial(C.forward, net)
    return jr.pgd(f, x, y, key, threat=jr.linf(eps), steps=20, step_size=eps / 4, loss=jr.margin)


def _check_sound(net, x, y, eps, key, m=10_000):
    pts = _ball_points(key, x, eps, m)
    ibp, crown, margins, z = _all_bounds(net, x, y, eps, pts)  # one batched call, m x B points
    # the library's PGD maximising the margin loss
    adv = _pgd(net, x, y, key, eps).x_adv
    assert float(jnp.max(jnp.abs(adv - x))) <= eps + 1e-6
    z = jnp.concatenate([z, C.forward(net, adv)[None]])
    for b in (ibp, crown):
        assert bool(jnp.all(z >= b.lower - TOL)), float(jnp.min(z - b.lower))
        assert bool(jnp.all(z <= b.upper + TOL)), float(jnp.min(b.upper - z))
    zy = jnp.take_along_axis(z, jnp.broadcast_to(y[None, :, None], (*z.shape[:2], 1)), -1)
    for meth, m_lo in margins.items():
        assert bool(jnp.all(zy - z >= m_lo - TOL)), (meth, float(jnp.min(zy - z - m_lo)))
    # CROWN-IBP never looser than IBP (logits and margins)
    assert bool(jnp.all(crown.lower >= ibp.lower) and jnp.all(crown.upper <= ibp.upper))
    assert bool(jnp.all(margins["crown_ibp"] >= margins["ibp"]))
    return ibp, crown, margins


def _sound_case(seed, eps, arch):
    kn, kx, ky, ks = jax.random.split(jax.random.key(seed), 4)
    if arch == "mlp":
        net, shape = random_mlp(kn), (3, 4, 1)
    else:
        net, shape = random_cnn(kn, pool=arch[4:]), (6, 6, 2)
    x = _inputs(kx, shape)
    y = jax.random.randint(ky, (3,), 0, 5)
    _check_sound(net, x, y, eps, ks)


_EPS = st.sampled_from([0.0, 0.003, 0.02, 0.1, 0.3])


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), eps=_EPS)
def test_bounds_hold_for_random_points_and_pgd(seed, eps):
    """Default suite: random MLPs (the CNNs, with max- and average-pooling and a folded
    BatchNorm, compile for ~20 s of CPU: `..._many` below, under -m slow)."""
    _sound_case(seed, eps, "mlp")


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    eps=_EPS,
    arch=st.sampled_from(["mlp", "cnn_max", "cnn_avg"]),
)
def test_bounds_hold_for_random_points_and_pgd_many(seed, eps, arch):
    _sound_case(seed, eps, arch)


@pytest.mark.slow
def test_odd_maxpool_and_flax_models_are_sound(digits_test):
    """The registered SmallCNN on 7x7 inputs (odd max-pool padding) and an MLP on digits."""
    x, y = jnp.asarray(digits_test[0][:2]), jnp.asarray(digits_test[1][:2])
    model = create_model("small_cnn", 10, mean=0.3, std=0.3, channels=(3, 4), dense=8)
    v = init_model(model, jax.random.key(1), (7, 7, 1))
    net = C.from_flax(model, v)
    _check_sound(net, x[:, :7, :7], y, 0.02, jax.random.key(2), m=2000)


def test_bounds_tighten_to_the_exact_logits_as_eps_goes_to_zero():
    net = random_mlp(jax.random.key(3), hidden=(32, 32))
    x = _inputs(jax.random.key(4), (3, 4, 1))
    y = jnp.array([0, 1, 2])
    z = C.forward(net, x)
    exact_margin = jnp.take_along_axis(z, y[:, None], -1) - z

    @jax.jit
    def bounds(eps):
        b = C.ibp_bounds(net, x, eps)
        return b, C.crown_ibp_bounds(net, x, eps), C.margin_bounds(net, x, y, eps)

    widths, gaps = [], []
    for eps in (0.1, 1e-2, 1e-3, 1e-4, 1e-5, 0.0):
        b, crown, m = bounds(eps)
        for bb in (b, crown):
            assert bool(jnp.all(bb.lower <= z + TOL) and jnp.all(z <= bb.upper + TOL))
        widths.append(float(jnp.max(b.upper - b.lower)))
        gaps.append(float(jnp.max(exact_margin - m)))
    assert widths[0] > 0.1 and gaps[0] > 0.05  # not vacuous at 0.1
    assert all(a >= b for a, b in itertools.pairwise(widths))
    # linear in ε once no ReLU is unstable, and exact at ε = 0
    assert widths[-2] < 0.15 * widths[-3] and gaps[-2] < 0.15 * gaps[-3]
    assert widths[-1] < 1e-5 and gaps[-1] < 1e-5


def test_crown_ibp_is_strictly_tighter_than_ibp_somewhere():
    """The intersection alone could not fail the 'never looser' check: CROWN's own bound
    must beat IBP's on a generic random network at a small ε (Zhang et al.'s observation),
    so a broken backward pass (e.g. a vacuous −∞ bound) fails here."""
    net = random_mlp(jax.random.key(5), hidden=(32, 32))
    x = _inputs(jax.random.key(6), (3, 4, 1))
    y = jnp.array([0, 1, 2])
    ibp, crown = jax.jit(
        lambda e: (
            C.margin_bounds(net, x, y, e),
            C.margin_bounds(net, x, y, e, method="crown_ibp_only"),
        )
    )(0.01)
    assert bool(jnp.all(jnp.isfinite(crown)))
    assert float(jnp.mean(crown - ibp)) > 0.01


@pytest.mark.parametrize(
    "name,kw,shape",
    [
        ("mlp", {"hidden": (8, 6)}, (8, 8, 1)),
        ("small_cnn", {"channels": (2, 3), "dense": 5}, (7, 7, 1)),
        pytest.param("madry_cnn", {}, (4, 4, 3), marks=pytest.mark.slow),
    ],
)
def test_from_flax_computes_the_model(name, kw, shape):
    model = create_model(name, 10, mean=(0.2,) * shape[-1], std=(0.3,) * shape[-1], **kw)
    v = init_model(model, jax.random.key(0), shape)
    net = C.from_flax(model, v)
    x = jax.random.uniform(jax.random.key(1), (4, *shape))
    ours, theirs = jax.jit(lambda n, v, x: (C.forward(n, x), model.apply(v, x)))(net, v, x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_matches_flax_inference_batchnorm():
    bn = nn.BatchNorm(use_running_average=True)
    x = jax.random.normal(jax.random.key(0), (5, 3, 3, 4))
    v = bn.init(jax.random.key(1), x)
    stats = {"mean": jnp.arange(4.0) / 4, "var": jnp.arange(1.0, 5.0)}
    params = {"scale": jnp.array([1.0, -2.0, 0.5, 3.0]), "bias": jnp.arange(4.0)}
    v = {"params": params, "batch_stats": stats}
    layer = C.fold_batchnorm(params["scale"], params["bias"], stats["mean"], stats["var"])
    np.testing.assert_allclose(
        C.forward((layer, C.Flatten()), x), bn.apply(v, x).reshape(5, -1), rtol=1e-5, atol=1e-5
    )


def test_unsupported_models_and_layers_are_named_errors():
    model = create_model("preact_resnet18", 10)
    with pytest.raises(C.UnsupportedLayerError, match="PreActResNet18"):
        C.from_flax(model, {"params": {}})
    net = random_mlp(jax.random.key(0))
    x = jnp.full((2, 3, 4, 1), 0.5)
    with pytest.raises(C.UnsupportedLayerError, match="layer 2"):
        C.ibp_bounds((*net[:2], "tanh", *net[2:]), x, 0.1)
    mlp = create_model("mlp", 10, hidden=(4,))
    v = init_model(mlp, jax.random.key(0), (2, 2, 1))
    extra = {"params": {**v["params"], "dense7": v["params"]["head"]}}
    with pytest.raises(C.UnsupportedLayerError, match="dense7"):
        C.from_flax(mlp, extra)
    assert issubclass(C.UnsupportedLayerError, ConfigError)


def test_bad_inputs_are_named_errors():
    net = random_mlp(jax.random.key(0))
    x = jnp.full((2, 3, 4, 1), 0.5)
    y = jnp.array([0, 1])
    with pytest.raises(InputError, match="eps must be >= 0"):
        C.ibp_bounds(net, x, -0.1)
    with pytest.raises(InputError, match="NaN"):
        C.margin_bounds(net, x, y, float("nan"))
    with pytest.raises(InputError, match="declared input range"):
        C.ibp_bounds(net, x + 1.0, 0.1)
    with pytest.raises(InputError, match="one radius per example"):
        C.ibp_bounds(net, x, jnp.ones(3) * 0.1)
    with pytest.raises(InputError, match="layer 2 \\(Dense\\)"):
        C.ibp_bounds(net, jnp.full((2, 3, 3, 1), 0.5), 0.1)
    with pytest.raises(InputError, match="labels"):
        C.margin_bounds(net, x, jnp.array([0, 1, 2]), 0.1)
    with pytest.raises(InputError, match="labels must lie"):
        C.margin_bounds(net, x, jnp.array([0, 5]), 0.1)
    with pytest.raises(InputError, match="non-empty batch"):
        C.ibp_bounds(net, jnp.full((12,), 0.5), 0.1)
    with pytest.raises(InputError, match="non-empty batch"):
        C.ibp_bounds(net, jnp.zeros((0, 3, 4, 1)), 0.1)
    with pytest.raises(ConfigError, match="unknown bound method"):
        C.margin_bounds(net, x, y, 0.1, method="lp")


def test_jit_vmap_and_traced_bad_eps_poison():
    net = random_mlp(jax.random.key(1))
    x = _inputs(jax.random.key(2), (3, 4, 1), b=4)
    y = jnp.array([0, 1, 2, 3])
    jitted = jax.jit(lambda n, x, y, e: C.margin_bounds(n, x, y, e))
    eager = C.margin_bounds(net, x, y, 0.05)
    np.testing.assert_allclose(jitted(net, x, y, 0.05), eager, rtol=1e-5, atol=1e-5)
    # vmap over a sweep of ε and over per-example ε
    lower = jax.jit(lambda e: C.ibp_bounds(net, x, e).lower)
    epss = jnp.array([0.0, 0.01, 0.1])
    swept = jax.vmap(lower)(epss)
    for i, e in enumerate(epss):
        np.testing.assert_allclose(swept[i], lower(e), atol=1e-5)
    per = lower(jnp.array([0.0, 0.01, 0.1, 0.1]))
    np.testing.assert_allclose(per[1], swept[1][1], atol=1e-5)
    # a traced negative ε gives NaN bounds and nothing verified
    ok = jax.jit(lambda e: C.verified(net, x, y, e))(-0.1)
    assert not bool(jnp.any(ok))
    assert bool(jnp.all(jnp.isnan(lower(-0.1))))
    # a traced label outside [0, K) poisons its row
    bad = jax.jit(lambda y: C.margin_bounds(net, x, y, 0.01))(jnp.array([0, 1, 7, -1]))
    assert bool(jnp.all(jnp.isnan(bad[2:])) and not jnp.any(jnp.isnan(bad[:2])))
    # gradients flow through the bounds (training)
    g = jax.jit(jax.grad(lambda n: jnp.sum(C.mixed_margins(n, x, y, 0.05, beta=0.5))))(net)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(g))
    assert float(jnp.abs(g[-1].kernel).sum()) > 0


@pytest.mark.slow  # compiles several programs: the default suite keeps under 15 minutes
def test_verified_accuracy_counts_and_orders():
    net = random_mlp(jax.random.key(0), d=12)
    x = _inputs(jax.random.key(1), (3, 4, 1), b=20)
    z = C.forward(net, x)
    y = jnp.argmax(z, -1).at[:5].set((jnp.argmax(z[:5], -1) + 1) % 5)  # 5 wrong labels
    r0 = C.verified_accuracy(net, x, y, 0.0, batch_size=7, method="crown_ibp")
    assert r0["clean_accuracy"] == pytest.approx(0.75) and r0["n"] == 20
    ok0 = C.verified(net, x, y, 0.0, method="crown_ibp")
    assert r0["verified_accuracy"] == pytest.approx(float(jnp.mean(ok0)))
    rs = [
        C.verified_accuracy(net, x, y, e, batch_size=7, method="crown_ibp")
        for e in (0.001, 0.01, 0.1)
    ]
    vs = [r["verified_accuracy"] for r in rs]
    assert vs[0] <= 0.75 and vs == sorted(vs, reverse=True)
    assert rs[1]["se"] == pytest.approx(np.sqrt(vs[1] * (1 - vs[1]) / 20))


def test_ramp_schedule_and_bound_objective_at_eps_zero():
    from jaxrobust.train import TrainState, bound_training, ramp

    r = [float(ramp(s, 2, 4)) for s in (0, 2, 3, 6, 9)]
    assert r == [0.0, 0.0, 0.25, 1.0, 1.0]
    import optax

    model = create_model("mlp", 10, hidden=(8,))
    state = TrainState.create(model, optax.sgd(0.1), jax.random.key(0), (8, 8, 1))
    x = jax.random.uniform(jax.random.key(1), (6, 8, 8, 1))
    batch = {"image": x, "label": jnp.arange(6)}
    # in warm-up (ε_t = 0) the bound loss equals the natural loss: the elided last layer is
    # exact at ε = 0
    obj = bound_training(0.1, warmup_steps=5, ramp_steps=5, kappa=0.5, method="crown_ibp")
    obj = jax.jit(obj)
    _, (m, _) = obj(state.params, state, batch, jax.random.key(2))
    assert float(m["eps"]) == 0.0 and float(m["kappa"]) == 1.0
    assert float(m["bound_loss"]) == pytest.approx(float(m["natural_loss"]), rel=1e-5)
    late = state.replace(step=jnp.asarray(20, jnp.int32))
    _, (m, _) = obj(late.params, late, batch, jax.random.key(2))
    assert float(m["eps"]) == pytest.approx(0.1) and float(m["kappa"]) == 0.5
    assert float(m["bound_loss"]) > float(m["natural_loss"])
    with pytest.raises(ConfigError):
        bound_training(0.1, kappa=1.5)
    with pytest.raises(ConfigError):
        bound_training(0.1, method="lp")


def test_config_accepts_bound_objectives_only_for_supported_models():
    from jaxrobust.config import load_config

    cfg = load_config("smoke", ["objective=ibp", "bound.ramp_epochs=1"])
    assert cfg.objective == "ibp"
    with pytest.raises(ConfigError, match="bound propagation supports"):
        load_config("smoke", ["objective=crown_ibp", "model.name=wide_resnet"])
    with pytest.raises(ConfigError, match="linf"):
        load_config("smoke", ["objective=ibp", "threat=l2"])
    with pytest.raises(ConfigError, match=r"bound\.kappa"):
        load_config("smoke", ["objective=ibp", "bound.kappa=2.0"])


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["ibp", "crown_ibp"])
def test_training_loop_runs_bound_objectives(tmp_path, objective):
    from jaxrobust.config import load_config
    from jaxrobust.train.loop import train

    cfg = load_config(
        "smoke",
        [f"objective={objective}", "epochs=3", "bound.warmup_epochs=1", "bound.ramp_epochs=1"],
    )
    metrics = train(cfg, tmp_path / "run", progress=False)
    assert metrics["objective"] == objective
    assert metrics["clean_accuracy"] > 0.3  # 3x chance after 33 small steps
