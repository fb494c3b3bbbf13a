"""Attack a Flax NNX model: `jr.as_logits_fn` splits it into graph and weights, so one
compiled attack serves every checkpoint of the architecture.

    python examples/attack_flax_nnx.py [--small]
"""

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jaxrobust as jr
from jaxrobust.data import load_split


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, 128, rngs=rngs)
        self.out = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x.reshape(len(x), -1))))


def main(small: bool) -> None:
    x, y = load_split("digits", "train")
    x_test, y_test = load_split("digits", "test", limit=64 if small else None)
    model = Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, xb, yb):
        def loss(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(xb), yb).mean()

        optimizer.update(model, nnx.grad(loss)(model))

    for i in range(100 if small else 600):
        idx = jax.random.choice(jax.random.key(i), len(x), (128,), replace=False)
        step(model, optimizer, x[idx], y[idx])

    attack = jax.jit(lambda f, x, y, k: jr.pgd(f, x, y, k, threat=jr.l2(1.0), steps=20))
    logits_fn = jr.as_logits_fn(model)
    result = attack(logits_fn, x_test, y_test, jax.random.key(1))
    clean = float(jnp.mean(jnp.argmax(logits_fn(x_test), -1) == y_test))
    print(f"clean accuracy {clean:.3f}, l2 PGD-20 (eps 1.0) robust {1 - result.success.mean():.3f}")
    # Perturbations stay in the ball: ||x_adv - x||_2 <= eps for every example.
    norms = jnp.linalg.norm(result.delta.reshape(len(x_test), -1), axis=1)
    print(f"largest l2 perturbation {float(norms.max()):.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="few steps, 64 test images")
    main(parser.parse_args().small)
