"""Training objectives: `objective(params, state, batch, key) -> (loss, (metrics, batch_stats))`.

Each factory closes over its static configuration and returns a pure function to
differentiate with respect to `params`. The inner maximisation always runs the model in
inference mode on stopped-gradient parameters (BatchNorm statistics are not touched by
attack passes); the outer loss runs in training mode on the inputs it trains on, which
updates the statistics once per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxrobust.attacks import fgsm, pgd, worst_of_k
from jaxrobust.errors import check_int, check_number, without_callbacks
from jaxrobust.losses import Loss, cross_entropy, kl_divergence
from jaxrobust.optimize import optimize
from jaxrobust.threat import ThreatModel, spatial
from jaxrobust.train.state import TrainState

Array = jax.Array
Batch = dict[str, Array]
Objective = Callable[[Any, TrainState, Batch, Array], tuple[Array, tuple[dict, Any]]]


def _attack_model(state: TrainState, params: Any) -> Callable[[Array], Array]:
    return state.logits_fn(jax.lax.stop_gradient(params))


def _supervised(state: TrainState, params: Any, x: Array, y: Array) -> tuple[Array, tuple]:
    logits, batch_stats = state.train_forward(params, x)
    loss = jnp.mean(cross_entropy(logits, y))
    acc = jnp.mean(jnp.argmax(logits, -1) == y)
    return loss, ({"loss": loss, "accuracy": acc}, batch_stats)


def standard() -> Objective:
    """Empirical risk minimisation on clean inputs."""

    def objective(params, state, batch, key):
        del key
        return _supervised(state, params, batch["image"], batch["label"])

    return objective


def _adversarial(make_adv: Callable[[Callable, Array, Array, Array], Array]) -> Objective:
    """Train on adversarial inputs x_adv = make_adv(logits_fn, x, y, key)."""

    def objective(params, state, batch, key):
        x, y = batch["image"], batch["label"]
        x_adv = jax.lax.stop_gradient(make_adv(_attack_model(state, params), x, y, key))
        return _supervised(state, params, x_adv, y)

    return objective


def pgd_at(
    threat: ThreatModel,
    *,
    steps: int = 10,
    step_size: Any = None,
    attack_loss: Loss = cross_entropy,
) -> Objective:
    """Madry et al. (2018): min_θ E max_δ CE, with PGD from a random start (last iterate).

    `attack_loss` is what the inner PGD maximises (the outer loss is always cross-entropy);
    `margin` keeps the adversary working on models whose softmax saturates in float32,
    where the cross-entropy gradient is exactly zero.
    """
    step_size = jnp.asarray(threat.eps) / 4 if step_size is None else step_size
    return _adversarial(
        lambda f, x, y, k: (
            pgd(
                f,
                x,
                y,
                k,
                threat=threat,
                steps=steps,
                step_size=step_size,
                loss=attack_loss,
                keep_best=False,
            ).x_adv
        )
    )


def fast_at(threat: ThreatModel, *, alpha: float = 1.25) -> Objective:
    """Wong, Rice & Kolter (2020): FGSM from a uniform random start, step alpha·ε."""
    step = alpha * jnp.asarray(threat.eps)
    return _adversarial(lambda f, x, y, k: fgsm(f, x, y, k, threat=threat, step_size=step).x_adv)


def spatial_worst_of_k(threat: ThreatModel | None = None, *, k: int = 10) -> Objective:
    """Engstrom et al. (2019): train on the worst of k random rotations/translations."""
    threat = spatial() if threat is None else threat
    return _adversarial(lambda f, x, y, key: worst_of_k(f, x, y, key, threat=threat, k=k).x_adv)


def spatial_random(threat: ThreatModel | None = None) -> Objective:
    """Data augmentation with one uniformly random rotation/translation per example."""
    threat = spatial() if threat is None else threat
    return _adversarial(lambda f, x, y, key: threat.apply(x, threat.init(key, x)))


def gaussian_noise(sigma: float) -> Objective:
    """Cohen, Rosenfeld & Kolter (2019): train the base classifier of randomized smoothing
    on x + N(0, σ²I), one fresh draw per example and step (unclipped, like the noise that
    `jaxrobust.certify.certify` adds). σ is in input units and should match the σ the
    model is certified with."""
    sigma = check_number(sigma, "sigma (the noise's standard deviation)", 0.0, lo_open=True)

    def objective(params, state, batch, key):
        x, y = batch["image"], batch["label"]
        noisy = x + sigma * jax.random.normal(key, x.shape, x.dtype)
        return _supervised(state, params, noisy, y)

    return objective


def smooth_adv(
    threat: ThreatModel,
    sigma: float,
    *,
    samples: int = 1,
    steps: int = 1,
    step_size: Any = None,
) -> Objective:
    """SmoothAdv (Salman et al. 2019): adversarial training of the smoothed classifier.

    PGD (`steps` steps from a random start, last iterate) maximises the cross-entropy of
    the smoothed soft classifier log E_δ softmax(f(x' + δ)), δ ~ N(0, σ²I), estimated over
    `samples` noise draws fixed for the attack; the model is then trained on those same
    noisy copies of x' (cross-entropy averaged over them). With `threat` an ℓ2 ball as in
    the paper; ε = 0 is Gaussian-noise training with `samples` draws per example.
    """
    sigma = check_number(sigma, "sigma (the noise's standard deviation)", 0.0, lo_open=True)
    samples = check_int(samples, "samples", 1)
    steps = check_int(steps, "steps", 1)
    step_size = 2 * jnp.asarray(threat.eps) / steps if step_size is None else step_size

    def objective(params, state, batch, key):
        x, y = batch["image"], batch["label"]
        k_noise, k_attack = jax.random.split(key)
        noise = sigma * jax.random.normal(k_noise, (samples, *x.shape), x.dtype)
        f = _attack_model(state, params)

        def smoothed_log_probs(z):
            logits = jax.vmap(lambda d: f(z + d))(noise)  # (samples, B, C)
            return jax.nn.logsumexp(jax.nn.log_softmax(logits), axis=0) - jnp.log(samples)

        x_adv = optimize(
            lambda z: cross_entropy(smoothed_log_probs(z), y),
            x,
            k_attack,
            threat=threat,
            steps=steps,
            step_size=step_size,
            keep_best=False,
        ).x_adv
        x_adv = jax.lax.stop_gradient(x_adv)
        noisy = (x_adv[None] + noise).reshape(samples * x.shape[0], *x.shape[1:])
        return _supervised(state, params, noisy, jnp.tile(y, samples))

    return objective


def trades(
    threat: ThreatModel, *, beta: float = 6.0, steps: int = 10, step_size: Any = None
) -> Objective:
    """Zhang et al. (2019): CE(f(x), y) + β·KL(f(x) ‖ f(x')), with x' maximising the KL term
    from x + 0.001·N(0, I) by PGD."""
    step_size = jnp.asarray(threat.eps) / 4 if step_size is None else step_size

    def objective(params, state, batch, key):
        x, y = batch["image"], batch["label"]
        f = _attack_model(state, params)
        p_clean = jax.lax.stop_gradient(f(x))
        start = threat.project(0.001 * jax.random.normal(key, x.shape, x.dtype), x)
        shifted = threat._replace(init=lambda k, x_: start)
        x_adv = optimize(
            lambda z: kl_divergence(p_clean, f(z)),
            x,
            key,
            threat=shifted,
            steps=steps,
            step_size=step_size,
            keep_best=False,
        ).x_adv
        x_adv = jax.lax.stop_gradient(x_adv)
        # One training-mode pass over clean and adversarial inputs together, so BatchNorm
        # sees both (as in the reference implementation's two passes) and updates once.
        logits, batch_stats = state.train_forward(params, jnp.concatenate([x, x_adv]))
        logits_clean, logits_adv = jnp.split(logits, 2)
        natural = jnp.mean(cross_entropy(logits_clean, y))
        robust = jnp.mean(kl_divergence(logits_clean, logits_adv))
        loss = natural + beta * robust
        metrics = {
            "loss": loss,
            "natural_loss": natural,
            "kl_loss": robust,
            "accuracy": jnp.mean(jnp.argmax(logits_adv, -1) == y),
            "clean_accuracy": jnp.mean(jnp.argmax(logits_clean, -1) == y),
        }
        return loss, (metrics, batch_stats)

    return objective


def eps_warmup(
    make: Callable[[float | Array], Objective], eps: float, warmup_steps: int
) -> Objective:
    """The objective `make(eps_t)` with the training ε ramped linearly from 0 to `eps` over
    the first `warmup_steps` optimizer steps (eps_t = eps·min(1, (t + 1) / warmup_steps)).

    A curriculum against the collapse of adversarial training to a constant prediction on
    hard data with small models (Gowal et al. 2018 ramp ε the same way for IBP): the model
    first learns features at small ε, which the full ε then makes robust. `make` builds the
    objective from a (traced) radius, e.g. `lambda e: pgd_at(l2(e), steps=7)`; its default
    step sizes follow the radius (ε/4 of the current ε). `warmup_steps <= 0` is `make(eps)`.
    """
    if warmup_steps <= 0:
        return make(eps)

    def objective(params, state, batch, key):
        scale = jnp.minimum(1.0, (state.step.astype(jnp.float32) + 1.0) / warmup_steps)
        return make(eps * scale)(params, state, batch, key)

    return objective


def make_train_step(objective: Objective) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """A jitted, state-donating training step: (state, batch) -> (state, metrics).

    Under a `jax.sharding.Mesh` with a batch-sharded input and replicated state, XLA inserts
    the gradient all-reduce; nothing here depends on the number of devices.
    """

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        grad_fn = jax.value_and_grad(objective, has_aux=True)
        (_, (metrics, batch_stats)), grads = grad_fn(state.params, state, batch, state.step_key())
        return state.apply_gradients(grads, batch_stats), metrics

    # Traced without host callbacks, so the step stays in the persistent compilation cache;
    # a poisoned inner attack makes the loss NaN, which the training loop reports.
    return jax.jit(without_callbacks(step), donate_argnums=0)
