"""The synthetic model of Tsipras et al. (2019), "Robustness may be at odds with accuracy":
sampling, the closed-form accuracy of a linear classifier, the theorem's bound, and the
library-driven training of linear models on it (not an experiment: the leading `_` keeps
it out of `jaxrobust experiment`'s list; `tradeoff.py` runs it).

y uniform in {±1}; x₁ = y with probability p, else −y (one robust, moderately predictive
feature); x₂..x_{d+1} ~ N(ηy, 1) (many weak, non-robust features). An ℓ∞ adversary with
ε = 2η shifts every weak feature to N(−ηy, 1); theorem: any classifier with standard
accuracy 1 − δ has robust accuracy at ε ≥ 2η at most p·δ/(1 − p).
"""

from __future__ import annotations

from functools import partial

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm

import jaxrobust as jr
from jaxrobust.models import MLP
from jaxrobust.train import make_train_step

Array = jax.Array


def sample(key: Array, m: int, d: int, p: float, eta: float) -> tuple[Array, Array]:
    """m samples of the model: x (m, d+1) float32, y (m,) in {±1}."""
    ky, k1, k2 = jax.random.split(key, 3)
    y = jax.random.rademacher(ky, (m,)).astype(jnp.float32)
    agree = jax.random.bernoulli(k1, p, (m,))
    x1 = jnp.where(agree, y, -y)
    weak = eta * y[:, None] + jax.random.normal(k2, (m, d))
    return jnp.concatenate([x1[:, None], weak], axis=1), y


def linear_view(params) -> tuple[Array, Array]:
    """(v (d+1,), b): the score z = ⟨v, x⟩ + b whose sign is the MLP(hidden=())'s decision."""
    k, b = params["head"]["kernel"], params["head"]["bias"]
    return k[:, 1] - k[:, 0], b[1] - b[0]


def accuracy(v: Array, b: Array, eps: Array, p: float, eta: float) -> Array:
    """Closed-form ℓ∞-robust accuracy at eps (scalar or (E,)) of sign(⟨v, x⟩ + b).

    With s = y·x₁ ∈ {±1} (P(+1) = p) and y·Σ vᵢxᵢ ~ N(η·Σvᵢ, ‖v_weak‖₂²), and the ℓ∞ worst
    case lowering y·z by ε‖v‖₁:
    acc(ε) = ½ Σ_y Σ_s P(s) · Φ((v₁·s + η·Σv_weak + y·b − ε·‖v‖₁) / ‖v_weak‖₂).
    """
    eps = jnp.asarray(eps)[..., None, None]  # (..., y, s)
    weak = v[1:]
    scale = jnp.maximum(jnp.linalg.norm(weak), 1e-30)  # v_weak = 0: a step function
    yb = jnp.array([1.0, -1.0])[:, None] * b
    s = jnp.array([1.0, -1.0])[None, :]
    ps = jnp.array([p, 1 - p])[None, :]
    mean = v[0] * s + eta * jnp.sum(weak) + yb - eps * jnp.sum(jnp.abs(v))
    return jnp.sum(0.5 * ps * norm.cdf(mean / scale), axis=(-2, -1))


def bound(std_acc, p: float):
    """Tsipras et al.'s upper bound on robust accuracy (ε >= 2η) given standard accuracy."""
    return np.minimum(1.0, p * (1.0 - np.asarray(std_acc, float)) / (1.0 - p))


def bayes_direction(d: int, p: float, eta: float) -> Array:
    """The Bayes-optimal standard classifier's weights (log-odds of x₁, then 2η per weak
    feature), (d+1,)."""
    return jnp.concatenate([jnp.array([np.log(p / (1 - p))]), jnp.full((d,), 2 * eta)])


def batches(key: Array, n: int, batch: int, epochs: int) -> Array:
    """Index array (epochs·n//batch, batch): a fresh permutation every epoch."""
    per = n // batch
    perms = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, epochs))
    return perms[:, : per * batch].reshape(epochs * per, batch)


def make_trainer(objective_for_eps, x, y, idx):
    """train(eps, state0) -> (params, losses): the library's train step driven by lax.scan.

    `objective_for_eps(eps)` builds the objective; eps may be traced, so vmapping `train`
    over eps gives one compiled program for every ε_train.
    """
    cls = C.to_class(y)

    def train(eps, state0):
        step = make_train_step(objective_for_eps(eps))

        def body(state, ib):
            state, metrics = step(state, {"image": x[ib], "label": cls[ib]})
            return state, metrics["loss"]

        state, losses = jax.lax.scan(body, state0, idx)
        return state.params, losses

    return train


@partial(jax.jit, static_argnames=("steps",))
def pgd_accuracy(params, x, y, key, eps, *, steps):
    """The library's PGD ℓ∞ robust accuracy of the MLP(hidden=()) at eps on (x, y)."""
    model = MLP(hidden=(), num_classes=2)
    f = jr.as_logits_fn(model, {"params": params})
    return 1.0 - C.pgd_error(f, x, y, key, C.wide_linf(eps), steps)
