"""Attack an Equinox model. Equinox layers take one example at a time: `jr.as_logits_fn`
vmaps the model over the batch (pass `batched=True` for a model that takes batches).

    python examples/attack_equinox.py [--small]
"""

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import jaxrobust as jr
from jaxrobust.data import load_split


def main(small: bool) -> None:
    x, y = load_split("digits", "train")
    x_test, y_test = load_split("digits", "test", limit=64 if small else None)
    model = eqx.nn.Sequential(
        [
            eqx.nn.Lambda(jnp.ravel),
            eqx.nn.Linear(64, 128, key=jax.random.key(0)),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Linear(128, 10, key=jax.random.key(1)),
        ]
    )
    tx = optax.adam(3e-3)
    opt_state = tx.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, opt_state, xb, yb):
        def loss(model):
            logits = jax.vmap(model)(xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        grads = eqx.filter_grad(loss)(model)
        updates, opt_state = tx.update(grads, opt_state)
        return eqx.apply_updates(model, updates), opt_state

    for i in range(100 if small else 600):
        idx = jax.random.choice(jax.random.key(i), len(x), (128,), replace=False)
        model, opt_state = step(model, opt_state, x[idx], y[idx])

    logits_fn = jr.as_logits_fn(model)  # per-example model, vmapped over the batch
    attack = jax.jit(lambda f, x, y, k: jr.apgd(f, x, y, k, threat=jr.linf(0.1), steps=20))
    result = attack(logits_fn, x_test, y_test, jax.random.key(2))
    clean = float(jnp.mean(jnp.argmax(logits_fn(x_test), -1) == y_test))
    print(f"clean accuracy {clean:.3f}, APGD-CE-20 robust accuracy {1 - result.success.mean():.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="few steps, 64 test images")
    main(parser.parse_args().small)
