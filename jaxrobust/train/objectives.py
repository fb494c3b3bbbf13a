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
        return make(eps * ramp(state.step + 1, 0, warmup_steps))(params, state, batch, key)

    return objective


def ramp(step: Array, warmup_steps: int, ramp_steps: int) -> Array:
    """Gowal et al.'s schedule: 0 for `warmup_steps` steps, then linear to 1 over
    `ramp_steps` steps, then 1 (a float32 scalar)."""
    t = (jnp.asarray(step, jnp.float32) - warmup_steps) / max(int(ramp_steps), 1)
    return jnp.clip(t, 0.0, 1.0)


def _check_bound_training(eps: float, warmup: int, ramp_steps: int, kappa: float, beta) -> None:
    from jaxrobust.errors import ConfigError, check_eps

    check_eps(eps)
    if int(warmup) < 0 or int(ramp_steps) < 0:
        raise ConfigError(f"warmup and ramp steps must be >= 0, got {warmup}, {ramp_steps}")
    for name, v in (("kappa", kappa), *(("beta", b) for b in beta)):
        if not 0.0 <= float(v) <= 1.0:
            raise ConfigError(f"{name} must lie in [0, 1], got {v!r}")


def bound_training(
    eps: float,
    *,
    warmup_steps: int = 0,
    ramp_steps: int = 0,
    kappa: float = 0.5,
    method: str = "ibp",
    beta_start: float = 1.0,
    beta_end: float = 0.0,
) -> Objective:
    """IBP training (Gowal et al. 2018) or CROWN-IBP training (Zhang et al. 2020).

    loss = κ_t·CE(f(x), y) + (1 − κ_t)·CE(−m(x, y; ε_t), y), with m the certified lower
    bounds of the margins z_y − z_j over the ℓ∞ ball of radius ε_t ∩ [0, 1]
    (`jaxrobust.certify.mixed_margins`). With r_t = `ramp(step, warmup_steps, ramp_steps)`:
    ε_t = r_t·ε, κ_t = 1 − r_t·(1 − κ) (from 1, natural training, down to κ) and, for
    method="crown_ibp", the CROWN weight β_t = β_start + r_t·(β_end − β_start); "ibp" uses
    IBP's bound alone. Needs a model `jaxrobust.certify.from_flax` supports (MLP,
    SmallCNN, MadryCNN). Metrics: loss, accuracy (clean), verified_accuracy (at ε_t, by the
    training bound), eps, kappa.
    """
    from jaxrobust.certify import from_flax, mixed_margins
    from jaxrobust.certify.ibp import bound_cross_entropy

    if method not in ("ibp", "crown_ibp"):
        from jaxrobust.errors import ConfigError

        raise ConfigError(f"bound training method must be 'ibp' or 'crown_ibp', got {method!r}")
    _check_bound_training(eps, warmup_steps, ramp_steps, kappa, (beta_start, beta_end))

    def objective(params, state, batch, key):
        del key
        x, y = batch["image"], batch["label"]
        module = getattr(state.apply_fn, "__self__", None)
        net = from_flax(module, {"params": params})
        r = ramp(state.step, warmup_steps, ramp_steps)
        eps_t, kappa_t = r * eps, 1.0 - r * (1.0 - kappa)
        beta = beta_start + r * (beta_end - beta_start) if method == "crown_ibp" else 0.0
        logits, batch_stats = state.train_forward(params, x)
        m = mixed_margins(net, x, y, eps_t, beta=beta)
        natural = jnp.mean(cross_entropy(logits, y))
        robust = jnp.mean(bound_cross_entropy(m, y))
        loss = kappa_t * natural + (1.0 - kappa_t) * robust
        others = jnp.arange(m.shape[-1]) != y[:, None]
        metrics = {
            "loss": loss,
            "natural_loss": natural,
            "bound_loss": robust,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == y),
            "verified_accuracy": jnp.mean(jnp.all(jnp.where(others, m > 0, True), -1)),
            "eps": eps_t,
            "kappa": kappa_t,
        }
        return loss, (metrics, batch_stats)

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
