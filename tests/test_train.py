"""Training objectives, the jitted step, BatchNorm handling, schedules and configs."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrobust import l2, linf, pgd
from jaxrobust.config import apply_overrides, default_config, load_config, smoke_config
from jaxrobust.errors import ConfigError
from jaxrobust.models import MLP
from jaxrobust.threat import spatial
from jaxrobust.train import (
    TrainState,
    fast_at,
    gaussian_noise,
    make_schedule,
    make_train_step,
    pgd_at,
    smooth_adv,
    spatial_random,
    spatial_worst_of_k,
    standard,
    trades,
)

EPS = 0.1


@pytest.fixture(scope="module")
def batch():
    from jaxrobust.data import load_split

    x, y = load_split("digits", "train", limit=64)
    return {"image": jnp.asarray(x), "label": jnp.asarray(y)}


def _state(model=None, lr=1e-2):
    model = MLP(hidden=(32,)) if model is None else model
    return TrainState.create(model, optax.adam(lr), jax.random.key(0), (8, 8, 1))


def _pgd_at_adversary(state, x, y):
    """What `pgd_at(linf(EPS), steps=3)` trains on at the state's current step."""
    return pgd(
        state.logits_fn(),
        x,
        y,
        state.step_key(),
        threat=linf(EPS),
        steps=3,
        step_size=EPS / 4,
        keep_best=False,
    ).x_adv


OBJECTIVES = {
    "standard": standard(),
    "pgd_at": pgd_at(linf(EPS), steps=3),
    "fast_at": fast_at(linf(EPS)),
    "trades": trades(linf(EPS), steps=3),
    "spatial_worst_of_k": spatial_worst_of_k(spatial(30, 1), k=3),
    "spatial_random": spatial_random(spatial(30, 1)),
    "gaussian_noise": gaussian_noise(0.25),
    "smooth_adv": smooth_adv(l2(0.5), 0.25, samples=2, steps=2),
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_step_trains(name, batch):
    step = make_train_step(OBJECTIVES[name])
    state = _state()
    first = None
    for _ in range(15):
        state, metrics = step(state, batch)
        first = float(metrics["loss"]) if first is None else first
    assert int(state.step) == 15
    assert np.isfinite(float(metrics["loss"]))
    # 15 Adam steps on one batch must reduce the objective's own loss.
    assert float(metrics["loss"]) < first


def test_step_is_deterministic(batch):
    step = make_train_step(OBJECTIVES["pgd_at"])
    a, _ = step(_state(), batch)
    b, _ = step(_state(), batch)
    for la, lb in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(la, lb)


def test_pgd_at_trains_on_pgd_examples(batch):
    """The gradient step equals the CE gradient at PGD's last iterate from the step key."""
    state = _state()
    x, y = batch["image"], batch["label"]
    x_adv = _pgd_at_adversary(state, x, y)

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(
            state.apply_fn({"params": p}, x_adv), y
        ).mean()

    expected = state.apply_gradients(jax.grad(loss)(state.params), state.batch_stats)
    got, _ = make_train_step(pgd_at(linf(EPS), steps=3))(_state(), batch)
    for a, b in zip(jax.tree.leaves(expected.params), jax.tree.leaves(got.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class _BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(16)(x.reshape(x.shape[0], -1))
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
        return nn.Dense(10)(nn.relu(h))


def test_batchnorm_stats_come_from_the_training_pass_only(batch):
    """Attack passes run in inference mode: after a PGD-AT step the running statistics are
    exactly one momentum update from the training-mode pass on x_adv."""
    state = _state(_BNNet())
    x, y = batch["image"], batch["label"]
    x_adv = _pgd_at_adversary(state, x, y)
    _, expected = state.train_forward(state.params, x_adv)
    new, _ = make_train_step(pgd_at(linf(EPS), steps=3))(_state(_BNNet()), batch)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(new.batch_stats), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # And they did move away from the initial statistics.
    init = _state(_BNNet()).batch_stats
    assert any(
        not np.allclose(a, b)
        for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(new.batch_stats), strict=True)
    )


def test_schedules():
    total = 100
    piece = make_schedule("piecewise", 0.1, total)
    assert float(piece(0)) == pytest.approx(0.1)
    assert float(piece(60)) == pytest.approx(0.01)
    assert float(piece(90)) == pytest.approx(0.001)
    cyc = make_schedule("cyclic", 0.2, total)
    assert float(cyc(0)) == pytest.approx(0.0)
    assert float(cyc(40)) == pytest.approx(0.2)
    assert float(cyc(total)) == pytest.approx(0.0, abs=1e-6)
    cos = make_schedule("cosine", 0.1, total, warmup_steps=10)
    assert float(cos(0)) == pytest.approx(0.0)
    assert float(cos(10)) == pytest.approx(0.1)
    assert float(cos(total)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="unknown schedule"):
        make_schedule("bogus", 0.1, total)


def test_config_overrides():
    cfg = default_config()
    apply_overrides(cfg, ["eps=0.2", "model.kwargs.hidden=(64,)", "objective=trades", "epochs=3"])
    assert cfg.eps == 0.2 and cfg.model.kwargs.hidden == (64,) and cfg.objective == "trades"
    assert cfg.epochs == 3
    apply_overrides(cfg, ["eval.eps_list=[0, 0.1]"])
    assert cfg.eval.eps_list == (0, 0.1)
    assert smoke_config().epochs < default_config().epochs


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("bogus=1", "unknown config key 'bogus'"),
        ("eval.bogus=1", "unknown config key 'eval.bogus'"),
        ("epochs=abc", "expects a int"),
        ("eps=-0.1", "eps must be >= 0|eps values must be >= 0"),
        ("eps=nan", "expects a float|>= 0"),
        ("objective=magic", "unknown objective"),
        ("threat=l7", "unknown threat"),
        ("noequals", "key=value"),
    ],
)
def test_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_config_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"eps": 0.05, "model": {"name": "small_cnn", "kwargs": {"dense": 32}}}')
    cfg = load_config(str(path))
    assert cfg.eps == 0.05 and cfg.model.name == "small_cnn" and cfg.model.kwargs.dense == 32
    path.write_text('{"epsilon": 0.05}')
    with pytest.raises(ConfigError, match="epsilon"):
        load_config(str(path))
    py = tmp_path / "c.py"
    py.write_text(
        "from jaxrobust.config import smoke_config\n"
        "def get_config():\n    c = smoke_config()\n    c.seed = 7\n    return c\n"
    )
    assert load_config(str(py)).seed == 7


def test_pgd_at_attack_loss_reaches_saturated_models(batch):
    """With logits scaled by 1e4 the CE gradient is exactly zero: a CE adversary never moves
    off its random start, a margin adversary still finds the worst case."""
    from jaxrobust import margin

    x, y = batch["image"], batch["label"]
    state = _state()

    def saturated(z):
        return state.logits_fn()(z) * 1e4

    ce = pgd(saturated, x, y, jax.random.key(0), threat=linf(EPS), steps=5, keep_best=False)
    mg = pgd(
        saturated, x, y, jax.random.key(0), threat=linf(EPS), steps=5, keep_best=False, loss=margin
    )
    assert float(jnp.mean(mg.value)) > float(jnp.mean(margin(saturated(ce.x_adv), y)))
    step = make_train_step(pgd_at(linf(EPS), steps=3, attack_loss=margin))
    new, metrics = step(_state(), batch)
    assert np.isfinite(float(metrics["loss"])) and int(new.step) == 1


def test_eps_warmup_ramps_the_radius_linearly():
    """eps_warmup hands `make` eps·min(1, (t + 1)/W) at step t, traced (one program)."""
    from jaxrobust.train.objectives import eps_warmup

    def make(eps):
        return lambda params, state, batch, key: (eps, ({}, None))

    obj = jax.jit(eps_warmup(make, 0.5, warmup_steps=4))
    state = _state()
    got = [float(obj(None, state.replace(step=jnp.asarray(t)), None, None)[0]) for t in range(6)]
    np.testing.assert_allclose(got, [0.125, 0.25, 0.375, 0.5, 0.5, 0.5], rtol=1e-6)
    assert eps_warmup(make, 0.5, warmup_steps=0)(None, state, None, None)[0] == 0.5


@pytest.mark.slow  # compiles several programs: the default suite keeps under 15 minutes
def test_config_eps_warmup_trains_on_the_ramped_adversary(batch):
    """With adversary.eps_warmup_epochs = 2 and 5 steps per epoch, step 3 of the config's
    PGD-AT (explicit step size, ℓ2) is exactly PGD-AT at ε·4/10 with the step size scaled
    alike; without warm-up the same config trains at the full ε."""
    from jaxrobust.data import get_info
    from jaxrobust.train.loop import build_objective

    base = ["threat=l2", "eps=1.0", "adversary.steps=3", "adversary.step_size=0.5"]
    info = get_info("digits")
    ramped = build_objective(load_config(None, [*base, "adversary.eps_warmup_epochs=2"]), info, 5)
    at_04 = build_objective(
        load_config(None, [*base[:1], "eps=0.4", *base[2:3], "adversary.step_size=0.2"]), info
    )
    full = build_objective(load_config(None, base), info)
    state = _state().replace(step=jnp.asarray(3))
    key = jax.random.key(1)
    loss = {
        n: float(o(state.params, state, batch, key)[0])
        for n, o in (("ramped", ramped), ("at_04", at_04), ("full", full))
    }
    np.testing.assert_allclose(loss["ramped"], loss["at_04"], rtol=1e-6)
    assert loss["full"] > loss["ramped"] + 1e-3
    with pytest.raises(ConfigError, match="steps per epoch"):
        build_objective(load_config(None, [*base, "adversary.eps_warmup_epochs=2"]), info)


def test_resume_accepts_runs_saved_before_new_keys_existed():
    """A run saved before adversary.eps_warmup_epochs and the smoothing and bound sections
    existed ran without them: resuming it with their defaults is no config change; with
    others it is."""
    from jaxrobust.train.loop import _as_json_config, _config_diff

    now = _as_json_config(default_config())
    saved = _as_json_config(default_config())
    del saved["adversary"]["eps_warmup_epochs"]
    del saved["smoothing"], saved["bound"]
    assert _config_diff(now, saved) == []
    now["adversary"]["eps_warmup_epochs"] = 2.0
    now["smoothing"]["sigma"] = 0.5
    assert _config_diff(now, saved) == ["adversary.eps_warmup_epochs", "smoothing"]
