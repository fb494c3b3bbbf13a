"""PGD adversarial training (Madry et al. 2018) inside your own optax loop: the inner
maximisation is one `jr.pgd` call in the loss; everything else is your code.

    python examples/adversarial_training_optax.py [--small]
"""

import argparse

import flax.linen as nn
import jax
import optax

import jaxrobust as jr
from jaxrobust.data import load_split


def main(small: bool) -> None:
    x, y = load_split("digits", "train")
    x_test, y_test = load_split("digits", "test", limit=64 if small else None)
    model, tx, threat = (
        nn.Sequential([nn.Dense(256), nn.relu, nn.Dense(10)]),
        optax.adam(2e-3),
        jr.linf(0.1),
    )
    params = model.init(jax.random.key(0), x[:1].reshape(1, -1))
    opt_state = tx.init(params)

    def logits_fn(params):
        return lambda x: model.apply(params, x.reshape(len(x), -1))

    @jax.jit
    def train_step(params, opt_state, xb, yb, key):
        # Inner maximisation: PGD-10 against the current weights (no gradient through it).
        adv = jr.pgd(logits_fn(jax.lax.stop_gradient(params)), xb, yb, key, threat=threat, steps=10)

        def loss(p):  # outer minimisation on the adversarial batch
            return optax.softmax_cross_entropy_with_integer_labels(
                logits_fn(p)(adv.x_adv), yb
            ).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, value

    for i in range(60 if small else 1500):
        k_batch, k_attack = jax.random.split(jax.random.key(i))
        idx = jax.random.choice(k_batch, len(x), (128,), replace=False)
        params, opt_state, loss = train_step(params, opt_state, x[idx], y[idx], k_attack)

    test = jax.jit(lambda p, x, y, k: jr.pgd(logits_fn(p), x, y, k, threat=threat, steps=50))
    robust = 1 - test(params, x_test, y_test, jax.random.key(10**6)).success.mean()
    print(f"last adversarial loss {float(loss):.3f}; PGD-50 robust accuracy {float(robust):.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="60 steps, 64 test images")
    main(parser.parse_args().small)
