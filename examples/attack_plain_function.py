"""Attack a plain function: any `logits_fn(x) -> (B, C)` works. For a linear model the
worst case in an ℓ∞ ball has a closed form, so the attack can be checked exactly.

For logits W x + b, the margin between the true class y and class j falls by at most
eps * ||W_y - W_j||_1 inside the ℓ∞ ball of radius eps (less where the [0, 1] box clips),
so an example whose margin exceeds that for every j cannot be broken; PGD must never break it.

    python examples/attack_plain_function.py [--small]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.linear_model import LogisticRegression

import jaxrobust as jr
from jaxrobust.data import load_split


def main(small: bool) -> None:
    x, y = load_split("digits", "train")
    x_test, y_test = load_split("digits", "test", limit=64 if small else None)
    clf = LogisticRegression(max_iter=200 if small else 1000).fit(x.reshape(len(x), -1), y)
    w, b = jnp.asarray(clf.coef_, jnp.float32), jnp.asarray(clf.intercept_, jnp.float32)

    def logits_fn(x):  # a plain function of the batch
        return x.reshape(len(x), -1) @ w.T + b

    eps = 0.05
    result = jax.jit(lambda x, y, k: jr.pgd(logits_fn, x, y, k, threat=jr.linf(eps), steps=50))(
        x_test, y_test, jax.random.key(0)
    )
    logits = logits_fn(x_test)
    margins = logits[jnp.arange(len(y_test)), y_test][:, None] - logits  # (N, C)
    # Largest possible drop of each margin (ignoring the box): eps * ||W_y - W_j||_1.
    drop = eps * jnp.abs(w[y_test][:, None, :] - w[None, :, :]).sum(-1)
    other = jnp.arange(w.shape[0])[None, :] != y_test[:, None]
    certified = jnp.all(jnp.where(other, margins > drop, True), axis=1)
    broken = np.asarray(result.success)
    print(f"PGD-50 robust accuracy {1 - broken.mean():.3f}; certified (closed form) "
          f"{float(certified.mean()):.3f}")  # fmt: skip
    assert not np.any(broken & np.asarray(certified)), "PGD broke a certified example"
    print("no certified example was broken, as the closed form requires")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="fewer iterations, 64 test images")
    main(parser.parse_args().small)
