"""Attack your own Flax linen model: train it with optax, then PGD and the AutoAttack-style
evaluation on the digits that ship with scikit-learn (offline).

    python examples/attack_flax_linen.py [--small]
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import jaxrobust as jr
from jaxrobust.data import load_split


class Net(nn.Module):  # inputs in [0, 1]; any normalisation belongs inside the model
    @nn.compact
    def __call__(self, x):
        x = x.reshape(len(x), -1)
        return nn.Dense(10)(nn.relu(nn.Dense(128)(x)))


def main(small: bool) -> None:
    x, y = load_split("digits", "train")
    x_test, y_test = load_split("digits", "test", limit=64 if small else None)
    model, tx = Net(), optax.adam(3e-3)
    params = model.init(jax.random.key(0), x[:1])
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, xb), yb).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    for i in range(100 if small else 600):
        idx = jax.random.choice(jax.random.key(i), len(x), (128,), replace=False)
        params, opt_state = step(params, opt_state, x[idx], y[idx])

    logits_fn = jr.as_logits_fn(model, params)  # a pytree: the weights are jit inputs
    result = jax.jit(lambda f, x, y, k: jr.pgd(f, x, y, k, threat=jr.linf(0.1), steps=20))(
        logits_fn, x_test, y_test, jax.random.key(1)
    )
    clean = float(jnp.mean(jnp.argmax(logits_fn(x_test), -1) == y_test))
    print(f"clean accuracy {clean:.3f}, PGD-20 robust accuracy {1 - result.success.mean():.3f}")
    report = jr.evaluate(
        logits_fn, x_test, y_test, jax.random.key(2), threat="linf", eps=0.1,
        attacks="fast" if small else "standard",
    )  # fmt: skip
    # The per-example worst case over a cascade of attacks, with sanity-check flags.
    print(f"evaluate: robust accuracy {report.robust_accuracy[0]:.3f}, flags {report.flags}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="few steps, 64 test images")
    main(parser.parse_args().small)
